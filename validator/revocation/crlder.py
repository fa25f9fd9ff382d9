"""Revoked entries read straight from a CRL's DER, and the forms the store keeps them in.

No `cryptography` here: the inventory's revocation store uses these helpers on every
lookup, and a lookup answered from the index must not pay for importing `cryptography`.
The walker reads only CRLs whose signature idm.validator.revocation.crl already checked.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

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


def der_header(buf: bytes, i: int, end: int) -> tuple[int, int, int]:
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


def revoked_list_bounds(der: bytes) -> tuple[int, int]:
    """(start, end) of the revokedCertificates contents in a DER CRL ((i, i) when it has
    none); ValueError when the structure is not what a CRL looks like."""
    end = len(der)
    _, i, end = der_header(der, 0, end)  # CertificateList
    _, i, tbs_end = der_header(der, i, end)  # TBSCertList
    tag, j, k = der_header(der, i, tbs_end)
    if tag == 0x02:  # version
        i = k
    for _ in range(3):  # signature algorithm, issuer, thisUpdate
        _, _, i = der_header(der, i, tbs_end)
    if i < tbs_end and der[i] in (0x17, 0x18):  # nextUpdate
        _, _, i = der_header(der, i, tbs_end)
    if i >= tbs_end or der[i] != 0x30:
        return i, i  # no revokedCertificates (only crlExtensions [0] may follow)
    _, i, list_end = der_header(der, i, tbs_end)
    return i, list_end


def raw_entries(der: bytes) -> list[tuple[bytes, str, int | None]]:
    """The revoked entries of a DER CRL as (serial content bytes, YYYYMMDDHHMMSS, reason).

    A small DER walker over revokedCertificates: `cryptography` builds a Python object
    per entry (about 1 s for 200,000 entries with their extensions); this reads the bytes
    in place. Only for a CRL whose signature was already checked. Raises ValueError on
    anything it does not expect (the caller then uses `cryptography`'s iteration).
    """
    i, list_end = revoked_list_bounds(der)
    rows: list[tuple[bytes, str, int | None]] = []
    times: dict[bytes, str] = {}
    append = rows.append
    while i < list_end:
        tag, j, e_end = der_header(der, i, list_end)
        if tag != 0x30:
            raise ValueError("revoked entry is not a SEQUENCE")
        tag, s, s_end = der_header(der, j, e_end)
        if tag != 0x02 or s_end == s:
            raise ValueError("revoked entry without a serial number")
        serial = der[s:s_end]
        if len(serial) > 1 and (
            (serial[0] == 0 and serial[1] < 0x80) or (serial[0] == 0xFF and serial[1] >= 0x80)
        ):
            serial = serial_bytes(int.from_bytes(serial, "big", signed=True))  # not minimal
        tag, t, t_end = der_header(der, s_end, e_end)
        when = _der_time(tag, der[t:t_end], times)
        reason = None
        if t_end < e_end:
            reason = _entry_reason(der, t_end, e_end)
        append((serial, when, reason))
        i = e_end
    return rows


def _entry_reason(der: bytes, i: int, end: int) -> int | None:
    tag, i, ext_end = der_header(der, i, end)
    if tag != 0x30 or ext_end != end:
        raise ValueError("unexpected data in a revoked entry")
    reason = None
    while i < ext_end:
        _, j, x_end = der_header(der, i, ext_end)
        if der[j : j + len(_REASON_EXT)] == _REASON_EXT:
            k = j + len(_REASON_EXT)
            if der[k] == 0x01:  # critical BOOLEAN
                _, _, k = der_header(der, k, x_end)
            tag, v, v_end = der_header(der, k, x_end)
            tag2, c, c_end = der_header(der, v, v_end)
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
