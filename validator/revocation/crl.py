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
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

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


# CRLReason codes (RFC 5280 5.3.1) and the names `cryptography` gives them (ReasonFlags).
REASON_NAMES = {
    0: "unspecified",
    1: "key_compromise",
    2: "ca_compromise",
    3: "affiliation_changed",
    4: "superseded",
    5: "cessation_of_operation",
    6: "certificate_hold",
    8: "remove_from_crl",
    9: "privilege_withdrawn",
    10: "aa_compromise",
}
REASON_CODES = {name: code for code, name in REASON_NAMES.items()}
_REASON_EXT = bytes.fromhex("0603551d15")  # OID 2.5.29.21, id-ce-cRLReasons, DER


def serial_bytes(serial: int) -> bytes:
    """The DER INTEGER content of `serial`: minimal two's complement (how CRLs list it)."""
    size = (serial.bit_length() if serial >= 0 else (-serial - 1).bit_length()) // 8 + 1
    return serial.to_bytes(size, "big", signed=True)


def time_text(when: datetime) -> str:
    """A UTC time as ``YYYYMMDDHHMMSS``, the form revoked serials are stored in."""
    return when.astimezone(UTC).strftime("%Y%m%d%H%M%S")


def parse_time_text(text: str) -> datetime:
    return datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=UTC)


def _header(buf: bytes, i: int, end: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER element at `i`; ValueError if broken."""
    if i + 2 > end:
        raise ValueError("truncated DER element")
    tag, n = buf[i], buf[i + 1]
    i += 2
    if n & 0x80:
        k = n & 0x7F
        if k == 0 or k > 4 or i + k > end:
            raise ValueError("unsupported DER length")
        n = int.from_bytes(buf[i : i + k], "big")
        i += k
    if i + n > end:
        raise ValueError("DER element runs past its container")
    return tag, i, i + n


def _der_time(tag: int, raw: bytes, cache: dict[bytes, str]) -> str:
    text = cache.get(raw)
    if text is None:
        s = raw.decode("ascii")
        if tag == 0x17 and len(s) == 13 and s.endswith("Z") and s[:12].isdigit():
            text = ("19" if s[:2] >= "50" else "20") + s[:12]
        elif tag == 0x18 and len(s) == 15 and s.endswith("Z") and s[:14].isdigit():
            text = s[:14]
        else:
            raise ValueError(f"unsupported revocation date {s!r}")
        parse_time_text(text)  # a real date, or ValueError
        cache[raw] = text
    return text


def raw_entries(der: bytes) -> list[tuple[bytes, str, int | None]]:
    """The revoked entries of a DER CRL as (serial content bytes, YYYYMMDDHHMMSS, reason).

    A small DER walker over revokedCertificates: `cryptography` builds a Python object
    per entry (about 1 s for 200,000 entries with their extensions); this reads the bytes
    in place. Only for a CRL whose signature was already checked. Raises ValueError on
    anything it does not expect (the caller then uses `cryptography`'s iteration).
    """
    end = len(der)
    _, i, end = _header(der, 0, end)  # CertificateList
    _, i, tbs_end = _header(der, i, end)  # TBSCertList
    tag, j, k = _header(der, i, tbs_end)
    if tag == 0x02:  # version
        i = k
    for _ in range(3):  # signature algorithm, issuer, thisUpdate
        _, _, i = _header(der, i, tbs_end)
    if i < tbs_end and der[i] in (0x17, 0x18):  # nextUpdate
        _, _, i = _header(der, i, tbs_end)
    if i >= tbs_end or der[i] != 0x30:
        return []  # no revokedCertificates (only crlExtensions [0] may follow)
    _, i, list_end = _header(der, i, tbs_end)
    rows: list[tuple[bytes, str, int | None]] = []
    times: dict[bytes, str] = {}
    append = rows.append
    while i < list_end:
        tag, j, e_end = _header(der, i, list_end)
        if tag != 0x30:
            raise ValueError("revoked entry is not a SEQUENCE")
        tag, s, s_end = _header(der, j, e_end)
        if tag != 0x02 or s_end == s:
            raise ValueError("revoked entry without a serial number")
        serial = der[s:s_end]
        if len(serial) > 1 and (
            (serial[0] == 0 and serial[1] < 0x80) or (serial[0] == 0xFF and serial[1] >= 0x80)
        ):
            serial = serial_bytes(int.from_bytes(serial, "big", signed=True))  # not minimal
        tag, t, t_end = _header(der, s_end, e_end)
        when = _der_time(tag, der[t:t_end], times)
        reason = None
        if t_end < e_end:
            reason = _entry_reason(der, t_end, e_end)
        append((serial, when, reason))
        i = e_end
    return rows


def _entry_reason(der: bytes, i: int, end: int) -> int | None:
    tag, i, ext_end = _header(der, i, end)
    if tag != 0x30 or ext_end != end:
        raise ValueError("unexpected data in a revoked entry")
    reason = None
    while i < ext_end:
        _, j, x_end = _header(der, i, ext_end)
        if der[j : j + len(_REASON_EXT)] == _REASON_EXT:
            k = j + len(_REASON_EXT)
            if der[k] == 0x01:  # critical BOOLEAN
                _, _, k = _header(der, k, x_end)
            tag, v, v_end = _header(der, k, x_end)
            tag2, c, c_end = _header(der, v, v_end)
            if tag != 0x04 or tag2 != 0x0A or c_end - c != 1:
                raise ValueError("malformed CRLReason")
            reason = der[c]
        i = x_end
    return reason


def entries_from_der(der: bytes) -> Iterator[tuple[int, datetime, str | None]]:
    """The entries in the `RevocationStore.store_crl` form, read with `raw_entries`."""
    times: dict[str, datetime] = {}
    for serial, when, reason in raw_entries(der):
        name = REASON_NAMES.get(reason, "unspecified") if reason is not None else None
        at = times.get(when)
        if at is None:
            at = times[when] = parse_time_text(when)
        yield int.from_bytes(serial, "big", signed=True), at, name


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


def lookup_der(der: bytes, serial: int) -> tuple[datetime, str | None] | None:
    """(revocation date, reason) of `serial` in an already checked DER CRL, or None.

    For a CRL held but not yet indexed: `cryptography` scans the entries in native code
    (about 15 ms for 200,000 entries), no Python object per entry.
    """
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
