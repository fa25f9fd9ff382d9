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

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from idm.validator.errors import PARSE_ERRORS, MalformedInputError, ValidatorError
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


def _entries(
    crl: x509.CertificateRevocationList,
) -> Iterator[tuple[int, object, str | None]]:
    for rc in crl:
        reason = None
        # Most entries have no extensions: iterating an empty Extensions is much cheaper
        # than get_extension_for_class raising ExtensionNotFound 200,000 times.
        for ext in rc.extensions:
            if ext.oid == _REASON_OID:
                reason = ext.value.reason.name
        yield rc.serial_number, rc.revocation_date_utc, reason


@dataclass(frozen=True)
class IndexedCrl:
    """A CRL known to the store, and the CA certificate that signed it."""

    info: CrlInfo
    issuer: x509.Certificate | None
    newly_indexed: bool


def find_crl_issuer(
    crl: x509.CertificateRevocationList, candidates: Sequence[x509.Certificate]
) -> x509.Certificate | None:
    """The candidate CA whose name matches the CRL issuer and whose key verifies it."""
    for ca in candidates:
        if ca.subject != crl.issuer:
            continue
        try:
            if crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
                return ca
        except (TypeError, ValueError):
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
        return _index_loaded(crl, digest, source, candidates, store)
    except PARSE_ERRORS as e:
        # cryptography parses lazily: a broken field surfaces on first access.
        raise MalformedInputError(f"{source}: malformed CRL ({e})") from None


def _index_loaded(
    crl: x509.CertificateRevocationList,
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
    issuer = find_crl_issuer(crl, candidates)
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
        store.store_crl(info, _entries(crl))  # type: ignore[arg-type]
    except PARSE_ERRORS as e:
        raise MalformedInputError(f"{source}: malformed CRL entry ({e})") from None
    return IndexedCrl(info, issuer, True)
