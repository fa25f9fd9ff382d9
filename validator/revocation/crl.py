"""CRLs: parse once, check the signature once, index the revoked serials in the store.

A CRL is recognised before it is parsed: first by the SHA-256 of its bytes, then (after
a parse of the outer structure, which `cryptography` does lazily and fast) by
(issuer, cRLNumber). Only a CRL the store has never seen is signature-checked and has its
entries iterated into the store. `cryptography` is used throughout: asn1crypto takes
seconds on a 200,000-entry CRL.

Delta CRLs and indirect CRLs are not supported: they are refused with a clear error
rather than misread as complete CRLs of the signer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from idm.validator.errors import PARSE_ERRORS, MalformedInputError, ValidatorError
from idm.validator.revocation.crlder import (  # noqa: F401 - re-exported
    REASON_CODES,
    REASON_NAMES,
    entries_from_der,
    parse_time_text,
    raw_entries,
    serial_bytes,
    time_text,
)
from idm.validator.revocation.store import CrlInfo, RevocationStore, issuer_key_from_parts


class CrlError(ValidatorError):
    """A CRL that parses but cannot be used (unknown issuer, bad signature, delta CRL)."""


def ca_key(ca: x509.Certificate) -> str:
    """The store's issuer key for the CA certificate `ca` (see store.py)."""
    spki = ca.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return issuer_key_from_parts(ca.subject.public_bytes(), spki)


def load_crl(data: bytes, what: str = "CRL") -> x509.CertificateRevocationList:
    """Parse a PEM or DER CRL; a `MalformedInputError` names `what` on failure."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except PARSE_ERRORS as e:
        raise MalformedInputError(f"{what}: malformed CRL ({e})") from None


def crl_number(crl: x509.CertificateRevocationList) -> int | None:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return None


_REASON_OID = x509.oid.CRLEntryExtensionOID.CRL_REASON


def _entry_reason_name(rc: x509.RevokedCertificate) -> str | None:
    # Most entries have no extensions: iterating an empty Extensions is much cheaper
    # than get_extension_for_class raising ExtensionNotFound.
    for ext in rc.extensions:
        if ext.oid == _REASON_OID:
            return str(ext.value.reason.name)
    return None


def _entries(
    crl: x509.CertificateRevocationList,
) -> Iterator[tuple[int, datetime, str | None]]:
    for rc in crl:
        yield rc.serial_number, rc.revocation_date_utc, _entry_reason_name(rc)


def store_entries(crl: x509.CertificateRevocationList, der: bytes) -> Iterator[
    tuple[int, datetime, str | None]
]:
    """The CRL's entries for `store_crl`: the fast DER walker, else `cryptography`."""
    try:
        rows = list(entries_from_der(der))
    except (ValueError, IndexError):
        rows = None
    if rows is None:
        yield from _entries(crl)
    else:
        yield from rows


_PARSED: dict[str, x509.CertificateRevocationList] = {}  # by sha256 of the DER


def _der_integer(serial: int) -> bytes:
    content = serial_bytes(serial)
    n = len(content)
    length = bytes([n]) if n < 0x80 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + (
        n.to_bytes((n.bit_length() + 7) // 8, "big")
    )
    return b"\x02" + length + content


def lookup_der(der: bytes, serial: int) -> tuple[datetime, str | None] | None:
    """(revocation date, reason) of `serial` in an already checked DER CRL, or None.

    For a CRL held but not yet indexed. A serial that a CRL lists appears in its DER as
    the INTEGER ``02 len content`` (DER is strict and `cryptography` rejects other
    encodings of a CRL it parses), so when those bytes occur nowhere in the CRL (a search
    in native code, about 2 ms for 4.6 MB) the serial is not listed. Otherwise
    `cryptography` answers (it scans the entries in native code, about 15 ms for 200,000).
    """
    if _der_integer(serial) not in der:
        return None
    key = hashlib.sha256(der).hexdigest()
    crl = _PARSED.get(key)
    if crl is None:
        crl = x509.load_der_x509_crl(der)
        _PARSED.clear()
        _PARSED[key] = crl
    rc = crl.get_revoked_certificate_by_serial_number(serial)
    if rc is None:
        return None
    return rc.revocation_date_utc, _entry_reason_name(rc)


@runtime_checkable
class CrlBlobStore(Protocol):
    """A store that takes a checked CRL as DER and indexes its entries itself.

    It may index at once or later (answering `revoked()` from the DER meanwhile, e.g.
    with `lookup_der`); either way `revoked()` sees every entry from the moment
    `store_crl_der` returns.
    """

    def store_crl_der(self, info: CrlInfo, der: bytes) -> None: ...


@dataclass(frozen=True)
class IndexedCrl:
    """A CRL known to the store, and the CA certificate that signed it."""

    info: CrlInfo
    issuer: x509.Certificate | None
    newly_indexed: bool


def _tbs_bytes(der: bytes) -> bytes | None:
    """The TBSCertList exactly as encoded in the CRL's DER (what the signature covers)."""
    from idm.validator.revocation.crlder import der_header

    try:
        _, i, end = der_header(der, 0, len(der))
        _, j, k = der_header(der, i, end)
    except ValueError:
        return None
    return der[i:k]


def signature_valid(
    crl: x509.CertificateRevocationList, public_key: object, der: bytes | None = None
) -> bool:
    """True when `public_key` verifies the CRL's signature.

    `cryptography`'s `is_signature_valid` re-encodes the whole TBSCertList first (about
    0.1 s for 200,000 entries); with the CRL's `der` at hand the signature is checked over
    the bytes as received, for the common algorithms (RSA PKCS#1 v1.5, ECDSA, EdDSA).
    Anything else (RSA-PSS, DSA) goes to `is_signature_valid`.
    """
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa

    tbs = _tbs_bytes(der) if der is not None else None
    oid = crl.signature_algorithm_oid
    try:
        if tbs is not None and oid in _PKCS1_OIDS and isinstance(public_key, rsa.RSAPublicKey):
            algorithm = crl.signature_hash_algorithm
            assert algorithm is not None
            public_key.verify(crl.signature, tbs, padding.PKCS1v15(), algorithm)
            return True
        if tbs is not None and oid in _ECDSA_OIDS and isinstance(
            public_key, ec.EllipticCurvePublicKey
        ):
            algorithm = crl.signature_hash_algorithm
            assert algorithm is not None
            public_key.verify(crl.signature, tbs, ec.ECDSA(algorithm))
            return True
        if tbs is not None and oid in _EDDSA_OIDS and isinstance(
            public_key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
        ):
            public_key.verify(crl.signature, tbs)
            return True
        return bool(crl.is_signature_valid(public_key))  # type: ignore[arg-type]
    except (InvalidSignature, UnsupportedAlgorithm):
        return False


_SIG = x509.oid.SignatureAlgorithmOID
_PKCS1_OIDS = {
    _SIG.RSA_WITH_SHA1,
    _SIG.RSA_WITH_SHA224,
    _SIG.RSA_WITH_SHA256,
    _SIG.RSA_WITH_SHA384,
    _SIG.RSA_WITH_SHA512,
}
_ECDSA_OIDS = {
    _SIG.ECDSA_WITH_SHA1,
    _SIG.ECDSA_WITH_SHA224,
    _SIG.ECDSA_WITH_SHA256,
    _SIG.ECDSA_WITH_SHA384,
    _SIG.ECDSA_WITH_SHA512,
}
_EDDSA_OIDS = {_SIG.ED25519, _SIG.ED448}


def find_crl_issuer(
    crl: x509.CertificateRevocationList,
    candidates: Sequence[x509.Certificate],
    der: bytes | None = None,
) -> x509.Certificate | None:
    """The candidate CA whose name matches the CRL issuer and whose key verifies it
    (`der`: the CRL's DER encoding, when at hand, for a faster signature check)."""
    for ca in candidates:
        if ca.subject != crl.issuer:
            continue
        try:
            if signature_valid(crl, ca.public_key(), der):
                return ca
        except (TypeError, ValueError, AssertionError):
            continue
    return None


def index_crl(
    data: bytes,
    source: str,
    candidates: Sequence[x509.Certificate],
    store: RevocationStore,
) -> IndexedCrl:
    """Make sure the CRL in `data` is held by `store`, parsing and checking it at most once.

    `candidates` are the CA certificates that may have issued it (anchors, intermediates,
    the path being validated). Raises `MalformedInputError` for bytes that are not a CRL
    and `CrlError` for a CRL that no candidate signed, or a delta or indirect CRL.
    """
    digest = hashlib.sha256(data).hexdigest()
    held = store.crl_by_sha256(digest)
    if held is not None:
        return IndexedCrl(held, None, False)
    crl = load_crl(data, source)
    try:
        return _index_loaded(crl, data, digest, source, candidates, store)
    except PARSE_ERRORS as e:
        # cryptography parses lazily: a broken field surfaces on first access.
        raise MalformedInputError(f"{source}: malformed CRL ({e})") from None


def _index_loaded(
    crl: x509.CertificateRevocationList,
    data: bytes,
    digest: str,
    source: str,
    candidates: Sequence[x509.Certificate],
    store: RevocationStore,
) -> IndexedCrl:
    try:
        exts = crl.extensions
    except PARSE_ERRORS as e:
        raise MalformedInputError(f"{source}: malformed CRL extensions ({e})") from None
    for ext in exts:
        if isinstance(ext.value, x509.DeltaCRLIndicator):
            raise CrlError(f"{source}: delta CRLs are not supported")
        if isinstance(ext.value, x509.IssuingDistributionPoint) and ext.value.indirect_crl:
            raise CrlError(f"{source}: indirect CRLs are not supported")
    number = crl_number(crl)
    issuer = find_crl_issuer(crl, candidates, data if data[:1] == b"\x30" else None)
    if issuer is None:
        raise CrlError(
            f"{source}: CRL issued by {crl.issuer.rfc4514_string()} is not signed by any "
            "known CA certificate"
        )
    key = ca_key(issuer)
    if number is not None:
        known = store.crl_known(key, number)
        if known is not None:
            return IndexedCrl(known, issuer, False)
    this_update = crl.last_update_utc
    next_update = crl.next_update_utc
    try:
        info = CrlInfo(
            issuer_key=key,
            crl_number=number,
            this_update=this_update,
            next_update=next_update,
            sha256=digest,
            source=source,
            entries=len(crl),
        )
        der = data if data[:1] == b"\x30" else crl.public_bytes(Encoding.DER)  # PEM given
        _PARSED.clear()
        _PARSED[digest if der is data else hashlib.sha256(der).hexdigest()] = crl
        if isinstance(store, CrlBlobStore):
            store.store_crl_der(info, der)
        else:
            store.store_crl(info, store_entries(crl, der))
    except PARSE_ERRORS as e:
        raise MalformedInputError(f"{source}: malformed CRL entry ({e})") from None
    return IndexedCrl(info, issuer, True)
