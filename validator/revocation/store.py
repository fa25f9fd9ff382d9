"""The revocation cache interface, and an in-memory implementation.

The validator reads and writes revocation data only through the `RevocationStore`
Protocol below, so that it never imports the inventory: idm.identity implements the same
Protocol on top of its SQL tables (CRLs by issuer and CRL number, revoked serials in an
indexed table, OCSP responses), and `MemoryRevocationStore` serves tests and
`--no-cache` runs.

Conventions shared by every method:

- A CA certificate is named by an *issuer key*: `ca_key(cert)`, the hex SHA-256 of its
  subject's `name_key` followed by its SubjectPublicKeyInfo DER. Name and key together,
  so a re-keyed CA with the same name gets a separate key; a CRL is filed under the key
  that verified its signature and, separately, under the name in its issuer field
  (`issuer_name`): the validator decides per certificate whether that signer may speak
  for the certificate's issuer (RFC 5280 §6.3.3).
- Serial numbers are Python ints in this API (the SQL side may store them as hex text).
- Every datetime is timezone-aware UTC.
- The store keeps only data whose signature the validator has already checked; it never
  parses or verifies anything itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable


def issuer_key_from_parts(subject_key: str, spki_der: bytes) -> str:
    """The issuer key for a CA given its subject's `name_key` and its SubjectPublicKeyInfo."""
    return hashlib.sha256(subject_key.encode() + spki_der).hexdigest()


@dataclass(frozen=True)
class CrlInfo:
    """One CRL that the validator parsed, found usable and whose signature it checked.

    `issuer_key` names the certificate (subject and key) whose key verified the CRL;
    `issuer_name` is the `name_key` of the CRL's issuer field (which names the CA the
    CRL speaks for, or the indirect CRL issuer); `scope` is its `CrlScope.to_text()`
    ("" for a complete CRL without issuingDistributionPoint). `next_update` is None when
    the CRL has no nextUpdate (it is then never current). `sha256` is the hex digest of
    the CRL's DER encoding, used to recognise a CRL file or download that is already
    held without parsing it again. `source` is the URL or file it came from.
    """

    issuer_key: str
    crl_number: int | None
    this_update: datetime
    next_update: datetime | None
    sha256: str
    source: str
    entries: int
    issuer_name: str = ""
    scope: str = ""


@dataclass(frozen=True)
class RevokedEntry:
    """A serial number listed in a held CRL.

    `reason` is the CRLReason name as written by `cryptography` (e.g. "key_compromise",
    "certificate_hold", "remove_from_crl") or None when the entry carries no reason code.
    `cert_issuer` is the `name_key` of the certificate issuer the entry is about when the
    CRL is indirect and the entry names another issuer, else None (the CRL's issuer).
    """

    crl_sha256: str
    serial: int
    revoked_at: datetime
    reason: str | None
    cert_issuer: str | None = None


Entry = tuple[int, datetime, str | None, str | None]
"""A CRL entry as given to `store_crl`: (serial, revocation date, reason, cert_issuer)."""


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

    def crl_known(self, issuer_key: str, scope: str, crl_number: int) -> CrlInfo | None:
        """The CRL held from this signer, for this scope, with this cRLNumber, or None.

        Lets the validator skip indexing a CRL it already holds in another encoding
        (RFC 5280: a CRL number is unique for an issuer and scope).
        """
        ...

    def crl_by_sha256(self, sha256: str) -> CrlInfo | None:
        """The held CRL whose DER encoding has this hex SHA-256, or None.

        The cheapest way to recognise a CRL file or download that is already held.
        """
        ...

    def store_crl(self, info: CrlInfo, entries: Iterable[Entry]) -> None:
        """Keep a checked CRL and its entries `(serial, revoked_at, reason, cert_issuer)`.

        `entries` may be a generator over 200,000 entries: insert in bulk, in one
        transaction. Storing a CRL that is already held (same sha256, or same signer,
        scope and cRLNumber) is a no-op, also when another process stores it at the same
        moment. The store may drop CRLs (and their entries) of the same signer and scope
        whose next_update lies in the past once a newer one is stored.
        """
        ...

    def crls_named(self, issuer_name: str) -> list[CrlInfo]:
        """Every held CRL whose issuer field has this `name_key`, current or not."""
        ...

    def crl_entries(self, crl_sha256s: Sequence[str], serial: int) -> list[RevokedEntry]:
        """The entries for `serial` in the held CRLs named by sha256 (a point lookup: it
        must use an index on (crl, serial))."""
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
        self._entries: dict[tuple[str, int], list[RevokedEntry]] = {}  # by (sha256, serial)
        self._ocsp: dict[tuple[str, int], OcspRecord] = {}

    def crl_known(self, issuer_key: str, scope: str, crl_number: int) -> CrlInfo | None:
        for info in self._crls.values():
            if (info.issuer_key, info.scope, info.crl_number) == (issuer_key, scope, crl_number):
                return info
        return None

    def crl_by_sha256(self, sha256: str) -> CrlInfo | None:
        return self._crls.get(sha256)

    def store_crl(self, info: CrlInfo, entries: Iterable[Entry]) -> None:
        if info.sha256 in self._crls or (
            info.crl_number is not None
            and self.crl_known(info.issuer_key, info.scope, info.crl_number)
        ):
            return
        rows = list(entries)  # may raise mid-way: change nothing until it is complete
        self._crls[info.sha256] = info
        for serial, revoked_at, reason, cert_issuer in rows:
            entry = RevokedEntry(info.sha256, serial, revoked_at, reason, cert_issuer)
            self._entries.setdefault((info.sha256, serial), []).append(entry)

    def crls_named(self, issuer_name: str) -> list[CrlInfo]:
        return [i for i in self._crls.values() if i.issuer_name == issuer_name]

    def crl_entries(self, crl_sha256s: Sequence[str], serial: int) -> list[RevokedEntry]:
        return [e for sha in crl_sha256s for e in self._entries.get((sha, serial), [])]

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
