"""CRLs: parse once, decide whether they are usable, check the signature once, index them.

A CRL is recognised before it is parsed: first by the SHA-256 of its bytes, then (after
a parse of the outer structure, which `cryptography` does lazily and fast) by (signer,
scope, cRLNumber). Only a CRL the store has never seen has its entries iterated into
the store. `cryptography` is used throughout: asn1crypto takes seconds on a
200,000-entry CRL.

A CRL is unusable (`CrlError`, RFC 5280 §5.2, §5.3, §6.3.3), and then counts as "at
hand but unusable" for its issuer, when:
- it carries a critical CRL extension or a critical entry extension idm does not
  process, or an entry's certificateIssuer in a CRL that is not indirect;
- it has no cRLNumber, or a critical one;
- no candidate CA certificate with the CRL issuer's name has a key that verifies it, or
  the key policy refuses that key or the signature's hash.
Which certificates a usable CRL speaks for (scope, delta CRLs, indirect CRLs, the signer's
authority) is decided at check time, by idm.validator.revocation.check.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from idm.validator.errors import PARSE_ERRORS, MalformedInputError, ValidatorError
from idm.validator.names import name_key
from idm.validator.policy import Policy
from idm.validator.revocation.crlder import entries_from_der, revoked_list_bounds, serial_bytes
from idm.validator.revocation.scope import crl_scope
from idm.validator.revocation.store import CrlInfo, Entry, RevocationStore, issuer_key_from_parts
from idm.validator.signatures import crl_signature_ok, usable_public_key

_OID = x509.oid.ExtensionOID
_ENTRY_OID = x509.oid.CRLEntryExtensionOID
# CRL extensions idm processes (a critical one of any other kind makes the CRL unusable).
KNOWN_CRL_EXTENSIONS = frozenset({
    _OID.AUTHORITY_KEY_IDENTIFIER, _OID.ISSUER_ALTERNATIVE_NAME, _OID.CRL_NUMBER,
    _OID.DELTA_CRL_INDICATOR, _OID.ISSUING_DISTRIBUTION_POINT, _OID.FRESHEST_CRL,
    _OID.AUTHORITY_INFORMATION_ACCESS,
})
KNOWN_ENTRY_EXTENSIONS = frozenset({
    _ENTRY_OID.CRL_REASON, _ENTRY_OID.INVALIDITY_DATE, _ENTRY_OID.CERTIFICATE_ISSUER,
    x509.ObjectIdentifier("2.5.29.23"),  # holdInstructionCode
})
_CRITICAL_TRUE = b"\x01\x01\xff\x04"  # critical = TRUE, then the extnValue OCTET STRING


class CrlError(ValidatorError):
    """A CRL that parses but cannot be used. `issuer_name` is the `name_key` of its issuer
    field when it could be read (the CA for which the CRL is then "at hand")."""

    def __init__(self, message: str, issuer_name: str | None = None) -> None:
        super().__init__(message)
        self.issuer_name = issuer_name


def ca_key(ca: x509.Certificate) -> str:
    """The store's issuer key for the CA certificate `ca` (see store.py)."""
    spki = ca.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return issuer_key_from_parts(name_key(ca.subject), spki)


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


def _entry_reason_name(rc: x509.RevokedCertificate) -> str | None:
    # Most entries have no extensions: iterating an empty Extensions is much cheaper
    # than get_extension_for_class raising ExtensionNotFound.
    for ext in rc.extensions:
        if ext.oid == _ENTRY_OID.CRL_REASON:
            return str(ext.value.reason.name)
    return None


def _crl_problem(crl: x509.CertificateRevocationList) -> str | None:
    """Why the CRL's own extensions make it unusable, or None."""
    number = None
    for ext in crl.extensions:
        if ext.oid == _OID.CRL_NUMBER:
            if ext.critical:
                return "its cRLNumber is marked critical"
            number = ext.value.crl_number
        elif ext.critical and ext.oid not in KNOWN_CRL_EXTENSIONS:
            return f"it has an unknown critical extension {ext.oid.dotted_string}"
    if number is None:
        return "it has no cRLNumber"
    return None


def _checked_entries(
    crl: x509.CertificateRevocationList, issuer_name: str, indirect: bool
) -> Iterator[Entry]:
    """Every entry through `cryptography`, with its certificate issuer; raises CrlError on
    an entry extension that makes the CRL unusable."""
    current = issuer_name
    for rc in crl:
        reason = None
        for ext in rc.extensions:
            if ext.oid == _ENTRY_OID.CRL_REASON:
                reason = str(ext.value.reason.name)
            elif ext.oid == _ENTRY_OID.CERTIFICATE_ISSUER:
                if not indirect:
                    raise CrlError("an entry names a certificateIssuer in a CRL that is not "
                                   "indirect", issuer_name)
                dns = [g for g in ext.value if isinstance(g, x509.DirectoryName)]
                if not dns:
                    raise CrlError("a certificateIssuer entry extension has no directory name",
                                   issuer_name)
                current = name_key(dns[0].value)
            elif ext.critical and ext.oid not in KNOWN_ENTRY_EXTENSIONS:
                raise CrlError(
                    f"an entry has an unknown critical extension {ext.oid.dotted_string}",
                    issuer_name,
                )
        yield (rc.serial_number, rc.revocation_date_utc, reason,
               None if current == issuer_name else current)


def crl_entries(
    crl: x509.CertificateRevocationList, der: bytes, issuer_name: str, indirect: bool
) -> list[Entry] | None:
    """The entries to store, checked; None when they may be read later with the fast DER
    walker (a direct CRL whose entries carry no critical extension at all)."""
    if not indirect:
        try:
            start, end = revoked_list_bounds(der)
        except (ValueError, IndexError):
            start, end = 0, len(der)
        if not _may_hold_critical_extension(der, start, end):
            return None
    return list(_checked_entries(crl, issuer_name, indirect))


def _may_hold_critical_extension(der: bytes, start: int, end: int) -> bool:
    """False when no entry between `start` and `end` can carry a critical extension.

    A critical extension is ``30 len 06 n <OID> 01 01 FF 04 …``: the BOOLEAN TRUE right
    after an OID. Its bytes are looked for in native code (a few ms for 4.6 MB), and each
    hit is kept only when an OID element ends right before it; the rare hit inside serial
    numbers or dates that survives this costs a full check, never a wrong answer.
    """
    i = der.find(_CRITICAL_TRUE, start, end)
    while i >= 0:
        for n in range(1, 40):
            j = i - n - 2
            if j >= start and der[j] == 0x06 and der[j + 1] == n:
                return True
        i = der.find(_CRITICAL_TRUE, i + 1, end)
    return False


def store_entries(der: bytes) -> Iterator[Entry]:
    """A direct CRL's entries (already checked) for `store_crl`: the fast DER walker, else
    `cryptography`."""
    try:
        rows = list(entries_from_der(der))
    except (ValueError, IndexError):
        rows = None
    if rows is None:
        for rc in x509.load_der_x509_crl(der):
            yield rc.serial_number, rc.revocation_date_utc, _entry_reason_name(rc), None
    else:
        for serial, when, reason in rows:
            yield serial, when, reason, None


_PARSED: dict[str, x509.CertificateRevocationList] = {}  # by sha256 of the DER


def _der_integer(serial: int) -> bytes:
    content = serial_bytes(serial)
    n = len(content)
    length = bytes([n]) if n < 0x80 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + (
        n.to_bytes((n.bit_length() + 7) // 8, "big")
    )
    return b"\x02" + length + content


def lookup_der(der: bytes, serial: int) -> tuple[object, str | None] | None:
    """(revocation date, reason) of `serial` in an already checked direct DER CRL, or None.

    For a CRL held but not yet indexed. A serial that a CRL lists appears in its DER as
    the INTEGER ``02 len content`` (DER is strict and `cryptography` rejects other
    encodings of a CRL it parses), so when those bytes occur nowhere in the CRL (a search
    in native code, about 2 ms for 4.6 MB) the serial is not listed. Otherwise
    `cryptography` answers (it scans the entries in native code, about 15 ms for 200,000);
    a negative serial, which its lookup does not take, is found by the DER walker, so that
    every path gives the same answer as the index.
    """
    if _der_integer(serial) not in der:
        return None
    if serial < 0:
        for s, when, reason in entries_from_der(der):
            if s == serial:
                return when, reason
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
    """A store that takes a checked direct CRL as DER and indexes its entries itself.

    It may index at once or later (answering `crl_entries()` from the DER meanwhile, e.g.
    with `lookup_der`); either way `crl_entries()` sees every entry from the moment
    `store_crl_der` returns.
    """

    def store_crl_der(self, info: CrlInfo, der: bytes) -> None: ...


@dataclass(frozen=True)
class IndexedCrl:
    """A CRL known to the store, and the CA certificate whose key verified it (None when
    it was recognised by its bytes and not checked again)."""

    info: CrlInfo
    signer: x509.Certificate | None
    newly_indexed: bool


def find_crl_signer(
    crl: x509.CertificateRevocationList,
    candidates: Sequence[x509.Certificate],
    der: bytes | None = None,
    policy: Policy | None = None,
) -> x509.Certificate:
    """The candidate CA certificate named like the CRL's issuer (RFC 5280 §7.1) whose key
    verifies the CRL, within the key policy; raises CrlError saying why there is none.
    (`der`: the CRL's DER encoding, when at hand, for a faster signature check.)"""
    policy = policy or Policy()
    issuer = name_key(crl.issuer)
    refused = None
    for ca in candidates:
        if name_key(ca.subject) != issuer:
            continue
        key = usable_public_key(ca)
        if key is None or not crl_signature_ok(crl, key, der):
            continue
        problem = policy.key_problem(key)
        if problem is None:
            algorithm = crl.signature_hash_algorithm
            problem = policy.hash_problem(algorithm.name if algorithm else None, "the CRL")
        if problem is None:
            return ca
        refused = problem
    if refused:
        raise CrlError(refused, issuer)
    raise CrlError(
        f"CRL issued by {crl.issuer.rfc4514_string()} is not signed by any known CA "
        "certificate of that name",
        issuer,
    )


def index_crl(
    data: bytes,
    source: str,
    candidates: Sequence[x509.Certificate],
    store: RevocationStore,
    policy: Policy | None = None,
) -> IndexedCrl:
    """Make sure the CRL in `data` is held by `store`, parsing and checking it at most once.

    `candidates` are the CA certificates that may have signed it (anchors, intermediates,
    the path being validated). Raises `MalformedInputError` for bytes that are not a CRL
    and `CrlError` for a CRL that cannot be used (see the module docstring).
    """
    digest = hashlib.sha256(data).hexdigest()
    held = store.crl_by_sha256(digest)
    if held is not None:
        return IndexedCrl(held, None, False)
    crl = load_crl(data, source)
    try:
        return _index_loaded(crl, data, digest, source, candidates, store, policy)
    except PARSE_ERRORS as e:
        # cryptography parses lazily: a broken field surfaces on first access.
        raise MalformedInputError(f"{source}: malformed CRL ({e})") from None
    except CrlError as e:
        raise CrlError(f"{source}: {e}", e.issuer_name) from None


def _index_loaded(
    crl: x509.CertificateRevocationList,
    data: bytes,
    digest: str,
    source: str,
    candidates: Sequence[x509.Certificate],
    store: RevocationStore,
    policy: Policy | None,
) -> IndexedCrl:
    issuer_name = name_key(crl.issuer)
    problem = _crl_problem(crl)
    if problem:
        raise CrlError(f"unusable CRL: {problem}", issuer_name)
    scope = crl_scope(crl)
    der = data if data[:1] == b"\x30" else crl.public_bytes(Encoding.DER)  # PEM given
    signer = find_crl_signer(crl, candidates, der, policy)
    key = ca_key(signer)
    number = crl_number(crl)
    scope_text = scope.to_text()
    if number is not None:
        known = store.crl_known(key, scope_text, number)
        if known is not None:
            return IndexedCrl(known, signer, False)
    entries = crl_entries(crl, der, issuer_name, scope.indirect)
    info = CrlInfo(
        issuer_key=key,
        crl_number=number,
        this_update=crl.last_update_utc,
        next_update=crl.next_update_utc,
        sha256=digest,
        source=source,
        entries=len(crl),
        issuer_name=issuer_name,
        scope=scope_text,
    )
    _PARSED.clear()
    _PARSED[digest if der is data else hashlib.sha256(der).hexdigest()] = crl
    if entries is not None:
        store.store_crl(info, entries)
    elif isinstance(store, CrlBlobStore):
        store.store_crl_der(info, der)
    else:
        store.store_crl(info, store_entries(der))
    return IndexedCrl(info, signer, True)
