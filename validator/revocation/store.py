"""The revocation cache interface, and an in-memory implementation.

The validator reads and writes revocation data only through the `RevocationStore`
Protocol below, so that it never imports the inventory: idm.identity implements the same
Protocol on top of its SQL tables (CRLs by issuer and CRL number, revoked serials in an
indexed table, OCSP responses), and `MemoryRevocationStore` serves tests and
`--no-cache` runs.

Conventions shared by every method:

- An issuer is named by an *issuer key*: `issuer_key(cert)`, the hex SHA-256 of the
  issuing CA certificate's subject DER followed by its SubjectPublicKeyInfo DER. Name and
  key together, so a re-keyed CA with the same name gets a separate key, and a CRL is only
  ever filed under the CA whose key verified its signature.
- Serial numbers are Python ints in this API (the SQL side may store them as hex text).
- Every datetime is timezone-aware UTC.
- The store keeps only data whose signature the validator has already checked; it never
  parses or verifies anything itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable


def issuer_key_from_parts(subject_der: bytes, spki_der: bytes) -> str:
    """The issuer key for a CA given its subject Name DER and SubjectPublicKeyInfo DER."""
    return hashlib.sha256(subject_der + spki_der).hexdigest()


@dataclass(frozen=True)
class CrlInfo:
    """One complete CRL that the validator parsed and whose signature it checked.

    `crl_number` is None for a CRL without the cRLNumber extension; such a CRL is then
    identified by `sha256` only. `next_update` is None when the CRL has no nextUpdate
    (it is then never considered current). `sha256` is the hex digest of the CRL's DER
    encoding, used to recognise a CRL file or download that is already indexed without
    parsing it again. `source` is the URL or file path it came from (informational).
    """

    issuer_key: str
    crl_number: int | None
    this_update: datetime
    next_update: datetime | None
    sha256: str
    source: str
    entries: int


@dataclass(frozen=True)
class RevokedEntry:
    """A serial number listed as revoked in a held CRL.

    `reason` is the CRLReason name as written by `cryptography` (e.g. "key_compromise",
    "certificate_hold") or None when the entry carries no reason code.
    """

    issuer_key: str
    serial: int
    revoked_at: datetime
    reason: str | None
    crl_number: int | None
    crl_sha256: str


@dataclass(frozen=True)
class OcspRecord:
    """One OCSP single response whose signature and responder the validator checked.

    `status` is "good", "revoked" or "unknown". `next_update` is None when the responder
    gave none. `response_der` is the whole OCSPResponse, kept as evidence.
    """

    issuer_key: str
    serial: int
    status: str
    this_update: datetime
    next_update: datetime | None
    produced_at: datetime
    revoked_at: datetime | None
    reason: str | None
    url: str
    response_der: bytes


@runtime_checkable
class RevocationStore(Protocol):
    """What the validator needs from a revocation cache."""

    def crl_known(self, issuer_key: str, crl_number: int) -> CrlInfo | None:
        """The CRL held for this issuer with this cRLNumber, or None.

        Lets the validator skip parsing and signature checking of a CRL it already
        indexed (it can read the number from the first bytes of the CRL's DER).
        """
        ...

    def crl_by_sha256(self, sha256: str) -> CrlInfo | None:
        """The held CRL whose DER encoding has this hex SHA-256, or None.

        The cheapest way to recognise a CRL file or download that is already indexed.
        """
        ...

    def store_crl(self, info: CrlInfo, revoked: Iterable[tuple[int, datetime, str | None]]) -> None:
        """Keep a checked CRL and its revoked entries `(serial, revoked_at, reason)`.

        `revoked` may be a generator over 200,000 entries: insert in bulk, in one
        transaction. Storing a CRL that is already held (same issuer and cRLNumber, or
        same sha256 when it has no number) is a no-op. The store may drop CRLs (and their
        entries) whose next_update lies in the past once a newer CRL of the same issuer
        is stored, but never the newest one.
        """
        ...

    def current_crls(self, issuer_key: str, at: datetime) -> list[CrlInfo]:
        """CRLs held for this issuer that are current at `at`.

        Current means `this_update <= at <= next_update` (a CRL without next_update is
        never current). Newest (highest this_update) first.
        """
        ...

    def revoked(self, issuer_key: str, serial: int, at: datetime) -> RevokedEntry | None:
        """The revocation of `serial` by this issuer in effect at `at`, or None.

        Looks through EVERY CRL held for the issuer, current or not: revocation is
        permanent, so a serial listed in an old CRL stays revoked. An entry counts when
        its `revoked_at <= at`. When several CRLs list the serial, return the earliest
        `revoked_at`. This is a point lookup: it must use an index on (issuer, serial).
        """
        ...

    def store_ocsp(self, record: OcspRecord) -> None:
        """Keep a checked OCSP response for (issuer_key, serial), replacing older ones.

        A record whose this_update is older than the one held is ignored.
        """
        ...

    def ocsp(self, issuer_key: str, serial: int, at: datetime) -> OcspRecord | None:
        """The newest held OCSP record for (issuer_key, serial) with `this_update <= at`.

        The store does not judge freshness: the validator applies next_update and the
        configured maximum age.
        """
        ...


class MemoryRevocationStore:
    """A `RevocationStore` in a process's memory: for tests and `--no-cache` runs."""

    def __init__(self) -> None:
        self._crls: dict[str, CrlInfo] = {}  # by sha256
        self._revoked: dict[tuple[str, int], list[RevokedEntry]] = {}
        self._ocsp: dict[tuple[str, int], OcspRecord] = {}

    def crl_known(self, issuer_key: str, crl_number: int) -> CrlInfo | None:
        for info in self._crls.values():
            if info.issuer_key == issuer_key and info.crl_number == crl_number:
                return info
        return None

    def crl_by_sha256(self, sha256: str) -> CrlInfo | None:
        return self._crls.get(sha256)

    def store_crl(self, info: CrlInfo, revoked: Iterable[tuple[int, datetime, str | None]]) -> None:
        if info.sha256 in self._crls or (
            info.crl_number is not None and self.crl_known(info.issuer_key, info.crl_number)
        ):
            return
        entries = list(revoked)  # may raise mid-way: change nothing until it is complete
        self._crls[info.sha256] = info
        for serial, revoked_at, reason in entries:
            entry = RevokedEntry(
                info.issuer_key, serial, revoked_at, reason, info.crl_number, info.sha256
            )
            self._revoked.setdefault((info.issuer_key, serial), []).append(entry)

    def current_crls(self, issuer_key: str, at: datetime) -> list[CrlInfo]:
        found = [
            i
            for i in self._crls.values()
            if i.issuer_key == issuer_key
            and i.next_update is not None
            and i.this_update <= at <= i.next_update
        ]
        return sorted(found, key=lambda i: i.this_update, reverse=True)

    def revoked(self, issuer_key: str, serial: int, at: datetime) -> RevokedEntry | None:
        entries = [e for e in self._revoked.get((issuer_key, serial), []) if e.revoked_at <= at]
        return min(entries, key=lambda e: e.revoked_at) if entries else None

    def store_ocsp(self, record: OcspRecord) -> None:
        key = (record.issuer_key, record.serial)
        held = self._ocsp.get(key)
        if held is None or held.this_update <= record.this_update:
            self._ocsp[key] = record

    def ocsp(self, issuer_key: str, serial: int, at: datetime) -> OcspRecord | None:
        record = self._ocsp.get((issuer_key, serial))
        if record is None or record.this_update > at:
            return None
        return record
