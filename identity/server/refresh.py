"""``idm refresh``: re-validate approved certificates and write the login snapshot.

One run:

1. takes an exclusive lock next to the snapshot (two timers never interleave);
2. reads the approved certificates, the explicit authorizations and the denied
   certificates from the inventory (SQLite or PostgreSQL); if the database cannot be
   reached it stops with one line and leaves the old snapshot in place, so logins go on
   from it until its deadline;
3. validates every approved certificate with the configured CA bundle and revocation
   policy. Revocation status is asked afresh (OCSP, the CRL distribution points) rather
   than taken from the cache, because the refresh is how a revocation reaches this
   server; only when the fresh query fails does the cached status (still within its
   nextUpdate) decide. A revoked certificate becomes ``revoked``, an expired one
   ``expired`` (each with an event); a certificate whose status cannot be had now stays
   approved but gets no key in the snapshot. Superseded certificates (a replaced card)
   are checked for revocation too, so a lost card's revocation reaches the event log
   and the KRL;
4. maps each valid certificate to its users (mapping.py) and writes the snapshot
   atomically (snapshot.py);
5. compares the new snapshot with the one it replaces and reports who and what entered
   or left it, and why (the verdict's reason, the status the inventory gives, or the
   mapping). Approved certificates whose revocation status could be had neither fresh
   nor from the cache are *unchecked*: they get no key line, and the run's
   ``exit_status`` is ``EXIT_UNCHECKED`` (3) so that a timer or a monitor notices
   instead of a silent lock-out.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509

from idm.identity import sshwire as w
from idm.identity.checker import CertificateChecker, plain_key_blob
from idm.identity.config import Config, ServerSettings
from idm.identity.inventory.store import CertificateRecord, Inventory, InventoryError
from idm.identity.outputpath import OutputPathError, check_output_path
from idm.identity.server.mapping import Explicit, Mapper, MappingError, explicit_from_records
from idm.identity.server.mapping import read_principals_dir as read_principals_files
from idm.identity.server.snapshot import (
    DeniedEntry,
    KeyEntry,
    Snapshot,
    SnapshotError,
    SnapshotInfo,
    comment_for,
    expiry_epoch,
    key_digest,
    remove_stale_temp_files,
    write_snapshot,
)
from idm.identity.server.strictmodes import check_strict_modes
from idm.validator import verdict as v
from idm.validator.revocation.store import (
    CrlInfo,
    Entry,
    OcspRecord,
    RevocationStore,
    RevokedEntry,
)

DENIED_STATUSES = ("revoked", "superseded", "rejected", "expired")

# `idm refresh` exit status when the snapshot was written but approved certificates could
# not be checked (their revocation status could not be had): they authorize nothing now.
EXIT_UNCHECKED = 3

# progress(done, total, subject): called before each certificate is validated.
Progress = Callable[[int, int, str], None]


class RefreshError(Exception):
    """The refresh could not run; the previous snapshot is untouched (one-line message)."""


class FreshFirstStore:
    """A RevocationStore view that hides status cached before this run began.

    The validator answers from its cache first; wrapping the cache like this makes it ask
    the OCSP responder / CRL distribution point again, while everything learned during
    this run still counts. A CRL held from before the run still counts for what it lists
    (revocation is final) but not as current status: it is shown without its nextUpdate,
    which the validator reads as "never current". Writes go through.
    """

    def __init__(self, inner: RevocationStore) -> None:
        self.inner = inner
        self.seen_crls: set[str] = set()
        self.fresh_ocsp: set[tuple[str, int]] = set()

    def _seen(self, info: CrlInfo | None) -> CrlInfo | None:
        if info is not None:
            self.seen_crls.add(info.sha256)
        return info

    def crl_known(self, issuer_key: str, scope: str, crl_number: int) -> CrlInfo | None:
        return self._seen(self.inner.crl_known(issuer_key, scope, crl_number))

    def crl_by_sha256(self, sha256: str) -> CrlInfo | None:
        return self._seen(self.inner.crl_by_sha256(sha256))

    def store_crl(self, info: CrlInfo, entries: Iterable[Entry]) -> None:
        self.inner.store_crl(info, entries)
        self.seen_crls.add(info.sha256)

    def crls_named(self, issuer_name: str) -> list[CrlInfo]:
        return [
            c if c.sha256 in self.seen_crls else replace(c, next_update=None)
            for c in self.inner.crls_named(issuer_name)
        ]

    def crl_entries(self, crl_sha256s: Sequence[str], serial: int) -> list[RevokedEntry]:
        return self.inner.crl_entries(crl_sha256s, serial)

    def store_ocsp(self, record: OcspRecord) -> None:
        self.inner.store_ocsp(record)
        self.fresh_ocsp.add((record.issuer_key, record.serial))

    def ocsp(self, issuer_key: str, serial: int, at: datetime) -> OcspRecord | None:
        record = self.inner.ocsp(issuer_key, serial, at)
        if record is None:
            return None
        # A cached "revoked" stays true; a cached "good" must be asked again.
        if record.status == "revoked" or (issuer_key, serial) in self.fresh_ocsp:
            return record
        return None


@dataclass
class Change:
    """A status change (or a certificate left out of the snapshot) made by the refresh."""

    certificate: str
    subject: str
    status: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"certificate": self.certificate, "subject": self.subject,
                "status": self.status, "reason": self.reason}


@dataclass
class Movement:
    """A certificate that entered or left the snapshot for some users, and why."""

    certificate: str
    subject: str
    users: list[str]
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"certificate": self.certificate, "subject": self.subject,
                "users": self.users, "reason": self.reason}


@dataclass
class SnapshotDiff:
    """What changed between the snapshot replaced and the one written.

    ``previous`` is False when there was no readable snapshot before (every entry is new).
    """

    previous: bool
    entered: list[Movement] = field(default_factory=list)
    left: list[Movement] = field(default_factory=list)
    users_entered: list[str] = field(default_factory=list)
    users_left: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "previous": self.previous,
            "entered": [m.as_dict() for m in self.entered],
            "left": [m.as_dict() for m in self.left],
            "users_entered": self.users_entered,
            "users_left": self.users_left,
        }


@dataclass
class RefreshResult:
    """What one refresh did."""

    snapshot: SnapshotInfo
    checked: int
    authorized: int
    users: int
    changes: list[Change] = field(default_factory=list)
    left_out: list[Change] = field(default_factory=list)
    denied: int = 0
    warnings: list[str] = field(default_factory=list)
    diff: SnapshotDiff = field(default_factory=lambda: SnapshotDiff(previous=False))
    # Approved certificates whose status could not be had (a subset of left_out).
    unchecked: list[Change] = field(default_factory=list)
    # Approved certificates kept on cached status because the fresh query failed.
    from_cache: list[Change] = field(default_factory=list)

    @property
    def exit_status(self) -> int:
        """0, or EXIT_UNCHECKED when approved certificates could not be checked."""
        return EXIT_UNCHECKED if self.unchecked else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "snapshot": str(self.snapshot.path),
            "written_at": _iso(self.snapshot.written_at),
            "deadline": _iso(self.snapshot.deadline),
            "checked": self.checked,
            "authorized": self.authorized,
            "entries": self.snapshot.entries,
            "users": self.users,
            "denied": self.denied,
            "changes": [c.as_dict() for c in self.changes],
            "left_out": [c.as_dict() for c in self.left_out],
            "unchecked": [c.as_dict() for c in self.unchecked],
            "from_cache": [c.as_dict() for c in self.from_cache],
            **self.diff.as_dict(),
            "warnings": self.warnings,
            "exit_status": self.exit_status,
        }


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def _lock(snapshot_path: Path) -> int:
    """Take the refresh lock next to the snapshot; returns the fd that holds it."""
    lock_path = snapshot_path.with_name(snapshot_path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        os.close(fd)
        raise
    return fd


def previous_deadline(path: Path) -> str:
    """The deadline of the snapshot in place, for the failure message."""
    try:
        with Snapshot(path) as snap:
            return f"the previous snapshot stays in place, valid until {_iso(snap.info.deadline)}"
    except SnapshotError as exc:
        return f"no usable previous snapshot ({exc})"


def _load(inventory: Inventory) -> tuple[list[CertificateRecord], list[CertificateRecord], list]:
    approved = inventory.certificates(status="approved")
    denied = inventory.certificates(status=DENIED_STATUSES)
    return approved, denied, inventory.principals()


def refresh(
    inventory: Inventory,
    config: Config,
    *,
    snapshot_path: Path | None = None,
    now: datetime | None = None,
    command: str | None = None,
    progress: Progress | None = None,
) -> RefreshResult:
    """Run one refresh (see the module docstring); RefreshError if it cannot."""
    path = Path(snapshot_path or config.server.snapshot)
    now = now or datetime.now(UTC)
    try:
        if path == ServerSettings().snapshot:
            # idm's own default folder ($XDG_STATE_HOME/idm) is made; a named one must exist.
            path.parent.mkdir(parents=True, exist_ok=True)
        check_output_path(path)
    except OSError as exc:
        raise RefreshError(f"cannot create {path.parent}: {exc.strerror}") from None
    except OutputPathError as exc:
        raise RefreshError(f"{exc}; {previous_deadline(path)}") from None
    try:
        file_principals = read_principals_files(config.server.principals_dir, check_strict_modes)
    except MappingError as exc:
        raise RefreshError(f"{exc}; {previous_deadline(path)}") from None
    try:
        lock_fd = _lock(path)
    except OSError as exc:
        raise RefreshError(f"cannot lock {path}: {exc.strerror}; "
                           f"{previous_deadline(path)}") from None
    try:
        # Under the lock no other refresh of this snapshot runs: leftovers of one that was
        # killed before its rename go (a writer that is alive is never touched).
        remove_stale_temp_files(path)
        return _refresh_locked(inventory, config, path, now, command, file_principals,
                               progress)
    finally:
        os.close(lock_fd)  # releases the lock


def _refresh_locked(
    inventory: Inventory,
    config: Config,
    path: Path,
    now: datetime,
    command: str | None,
    file_principals: list[Explicit],
    progress: Progress | None,
) -> RefreshResult:
    try:
        approved, denied_records, db_principals = _load(inventory)
    except InventoryError as exc:
        raise RefreshError(f"{exc}; {previous_deadline(path)}") from None
    try:
        checker = CertificateChecker.from_config(config, inventory)
    except ValueError as exc:  # CheckerError, a malformed bundle or policy value
        raise RefreshError(f"{exc}; {previous_deadline(path)}") from None
    try:
        mapper = Mapper(
            config.server.mapping,
            [*explicit_from_records(db_principals), *file_principals],
        )
    except MappingError as exc:
        raise RefreshError(f"{exc}; {previous_deadline(path)}") from None
    try:
        return _refresh(inventory, checker, mapper, approved, denied_records, db_principals,
                        path, now, config.server.snapshot_lifetime, command, progress)
    except InventoryError as exc:
        raise RefreshError(f"{exc}; {previous_deadline(path)}") from None


def _refresh(
    inventory: Inventory,
    checker: CertificateChecker,
    mapper: Mapper,
    approved: list[CertificateRecord],
    denied_records: list[CertificateRecord],
    db_principals: list,
    path: Path,
    now: datetime,
    lifetime: int,
    command: str | None,
    progress: Progress | None,
) -> RefreshResult:
    deadline = now + timedelta(seconds=lifetime)
    previous = _previous_entries(path)
    recheck = {r.sha256 for r in denied_records if r.status == "superseded" and r.not_after > now}
    total = len(recheck) + len(approved)
    done = 0

    def step(rec: CertificateRecord) -> None:
        nonlocal done
        if progress is not None:
            progress(done, total, rec.subject)
        done += 1

    fresh = replace(checker, store=FreshFirstStore(checker.store))
    # When the fresh query fails, only the cache may answer: asking the same unreachable
    # responder a second time would double the wait.
    cached = replace(checker, policy=replace(checker.policy, offline=True))
    entries: list[KeyEntry] = []
    changes: list[Change] = []
    left_out: list[Change] = []
    warnings: list[str] = []
    denied: list[DeniedEntry] = []
    revoked_keys: set[bytes] = set()

    unchecked: list[Change] = []
    from_cache: list[Change] = []
    for rec in denied_records:
        status, reason = rec.status, rec.status_reason
        if rec.sha256 in recheck:
            # A replaced card's certificate is still denied, but its revocation (a lost
            # card) is news: it puts the key into the KRL and the event log.
            step(rec)
            verdict = fresh.check(rec.der, at=now)
            # Recorded like any check, so `idm show` never puts a revoked status beside
            # an older "valid" last check.
            inventory.record_verdict(rec.sha256, verdict.status, verified_at=now,
                                     fresh_until=verdict.fresh_until)
            if verdict.status == v.REVOKED:
                status, reason = "revoked", verdict.reason
                inventory.set_status(rec.sha256, status, reason, command=command)
                changes.append(Change(rec.sha256, rec.subject, status, reason))
        digest = key_digest(plain_key_blob(rec))
        denied.append(DeniedEntry(rec.sha256, digest, status, reason))
        if status == "revoked":
            revoked_keys.add(digest)

    users: set[str] = set()
    authorized = 0
    for rec in approved:
        step(rec)
        verdict = fresh.check(rec.der, at=now)
        if verdict.status == v.REVOCATION_UNKNOWN:
            # The responder or distribution point is unreachable now: cached status that
            # is still within its nextUpdate is as good as it was when it was fetched.
            failed = verdict
            verdict = cached.check(rec.der, at=now)
            if verdict.status == v.REVOCATION_UNKNOWN:
                # Why the fresh query failed says more than "nothing in the cache".
                verdict = failed
                unchecked.append(Change(rec.sha256, rec.subject, verdict.status, verdict.reason))
            elif verdict.valid:
                until = _iso(int((verdict.fresh_until or rec.not_after).timestamp()))
                from_cache.append(Change(rec.sha256, rec.subject, "cached",
                                         f"{failed.reason}; the cached status holds until {until}"))
        inventory.record_verdict(rec.sha256, verdict.status, verified_at=now,
                                 fresh_until=verdict.fresh_until)
        if verdict.status in (v.REVOKED, v.EXPIRED):
            status = "revoked" if verdict.status == v.REVOKED else "expired"
            inventory.set_status(rec.sha256, status, verdict.reason, command=command)
            changes.append(Change(rec.sha256, rec.subject, status, verdict.reason))
            digest = key_digest(plain_key_blob(rec))
            denied.append(DeniedEntry(rec.sha256, digest, status, verdict.reason))
            if status == "revoked":
                revoked_keys.add(digest)
            continue
        if not verdict.valid:
            left_out.append(Change(rec.sha256, rec.subject, verdict.status, verdict.reason))
            continue
        cert = verdict.leaf or x509.load_der_x509_certificate(rec.der)
        try:
            rule, mapped = mapper.map(cert)
        except MappingError as exc:
            left_out.append(Change(rec.sha256, rec.subject, "unmapped", str(exc)))
            continue
        if not mapped:
            left_out.append(Change(rec.sha256, rec.subject, "unmapped",
                                   "no mapping rule names a user for this certificate"))
            continue
        key = w.KeyBlob.plain(cert.public_key())  # type: ignore[arg-type]
        digest = key_digest(key.blob)
        until = expiry_epoch(cert.not_valid_after_utc, verdict.fresh_until, deadline)
        comment = comment_for(rec.sha256, rec.subject)
        options = [w.expiry_time_option(datetime.fromtimestamp(until, UTC))]
        line = w.authorized_keys_line(key, comment, options)
        try:
            # PKIX-SSH's sshd matches this line by subject and key type, then checks the
            # certificate against its own CA store (docs/server.md, PKIX-SSH).
            x509_line = w.authorized_keys_line(w.KeyBlob.raw_der(cert), comment, options)
        except w.WireFormatError:  # no PKIX-SSH X.509 line for this key type (Ed25519)
            x509_line = ""
        authorized += 1
        for user in sorted(mapped):
            users.add(user)
            entries.append(KeyEntry(digest, user, key.algorithm, until, rec.sha256,
                                    rec.subject, rule or "", line, x509_line))

    # A key that any revoked certificate holds may be compromised: no other certificate
    # of the same key authorizes it either.
    kept = [e for e in entries if e.digest not in revoked_keys]
    if len(kept) != len(entries):
        warnings.append(f"{len(entries) - len(kept)} entries left out: their key is also in a "
                        "revoked certificate")
    try:
        info = write_snapshot(
            path,
            kept,
            denied,
            [(p.username, p.kind, p.value) for p in db_principals],
            written_at=int(now.timestamp()),
            deadline=int(deadline.timestamp()),
            source=inventory.display_url,
        )
    except (OSError, sqlite3.Error) as exc:
        raise RefreshError(f"cannot write the snapshot {path}: {exc}; "
                           f"{previous_deadline(path)}") from None
    why = _reasons(changes, left_out, denied_records, revoked_keys, entries)
    diff = _diff(previous, kept, why)
    return RefreshResult(info, len(approved), authorized, len(users), changes, left_out,
                         len(denied), warnings, diff, unchecked, from_cache)


def _previous_entries(path: Path) -> dict[str, tuple[str, set[str]]] | None:
    """certificate -> (subject, users) of the snapshot in place, or None if unreadable."""
    try:
        with Snapshot(path) as snap:
            found: dict[str, tuple[str, set[str]]] = {}
            for e in snap.all_keys():
                found.setdefault(e.certificate, (e.subject, set()))[1].add(e.username)
            return found
    except SnapshotError:
        return None


def _reasons(
    changes: list[Change],
    left_out: list[Change],
    denied_records: list[CertificateRecord],
    revoked_keys: set[bytes],
    entries: list[KeyEntry],
) -> dict[str, str]:
    """Why each certificate that authorizes nothing now does not (for the diff)."""
    why: dict[str, str] = {}
    for e in entries:
        if e.digest in revoked_keys:
            why[e.certificate] = "its key is also in a revoked certificate"
    for c in (*left_out, *changes):
        why[c.certificate] = f"{c.status}: {c.reason}"
    for rec in denied_records:
        why.setdefault(rec.sha256, f"{rec.status}: {rec.status_reason or 'no reason recorded'}")
    return why


def _diff(
    previous: dict[str, tuple[str, set[str]]] | None,
    kept: list[KeyEntry],
    why: dict[str, str],
) -> SnapshotDiff:
    now_in: dict[str, tuple[str, set[str], set[str]]] = {}
    for e in kept:
        subject, users, rules = now_in.setdefault(e.certificate, (e.subject, set(), set()))
        users.add(e.username)
        rules.add(e.rule)
    before = previous or {}
    diff = SnapshotDiff(previous=previous is not None)
    for sha, (subject, users, rules) in now_in.items():
        added = users - before.get(sha, ("", set()))[1]
        if added:
            reason = ("valid; mapped by rule " + ", ".join(sorted(rules)) if sha not in before
                      else "valid; the mapping now names these users")
            diff.entered.append(Movement(sha, subject, sorted(added), reason))
    for sha, (subject, users) in before.items():
        removed = users - now_in.get(sha, ("", set(), set()))[1]
        if removed:
            reason = (why.get(sha, "no longer approved in the inventory") if sha not in now_in
                      else "still valid, but the mapping no longer names these users")
            diff.left.append(Movement(sha, subject, sorted(removed), reason))
    users_before = {u for _, users in before.values() for u in users}
    users_now = {u for _, users, _ in now_in.values() for u in users}
    diff.users_entered = sorted(users_now - users_before)
    diff.users_left = sorted(users_before - users_now)
    return diff


def certificate_sha256(der: bytes) -> str:
    """The inventory's certificate id: SHA-256 hex of the DER."""
    return hashlib.sha256(der).hexdigest()
