"""One overview of a user's or a host's identities and what to do next (`idm status`).

`host_status()` reads the inventory, the mapping rules and (when there is one) the login
snapshot, and answers per identity: its card and whether the card is present now, days
to expiry (with a warning `expiry_warning_days` ahead), how fresh its revocation status
is, which users it logs in as, and the next action when something needs one; and for the
host: the explicit grants (`idm allow`), the snapshot's freshness, and host-wide actions.

Which identities are shown: approved, pending and rejected ones, and revoked or expired
ones that no approved identity of the same subject has replaced (their action: enroll a
new certificate). Superseded ones and replaced revoked/expired ones are counted only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from idm.identity.config import Config
from idm.identity.inventory.store import CertificateRecord, Inventory, TokenRecord
from idm.identity.server.mapping import (
    Mapper,
    MappingError,
    explicit_from_records,
    read_principals_dir,
)
from idm.identity.server.snapshot import SnapshotError, inspect_snapshot

DAY = 86400


def _utc(t: datetime | None) -> str | None:
    return None if t is None else t.strftime("%Y-%m-%d %H:%M UTC")


@dataclass
class IdentityStatus:
    """One identity (certificate) as `idm status` shows it."""

    record: CertificateRecord
    token: TokenRecord | None
    present_now: str | None  # "yes", "no", "unknown"; None when not scanned
    days_left: int
    expiry_warning: bool
    revocation: str  # "fresh", "stale", "never checked"
    users: list[str] = field(default_factory=list)
    rule: str | None = None
    actions: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        r = self.record
        return {
            "sha256": r.sha256,
            "subject": r.subject,
            "status": r.status,
            "status_reason": r.status_reason,
            "token": None if self.token is None else {
                "id": self.token.id, "label": self.token.label, "serial": self.token.serial,
                "state": self.token.state, "last_seen": self.token.last_seen.isoformat(),
                "present_now": self.present_now},
            "not_after": r.not_after.isoformat(),
            "days_left": self.days_left,
            "expiry_warning": self.expiry_warning,
            "last_check": r.verdict_status,
            "verified_at": r.verified_at.isoformat() if r.verified_at else None,
            "fresh_until": r.fresh_until.isoformat() if r.fresh_until else None,
            "revocation": self.revocation,
            "logs_in_as": self.users,
            "mapping_rule": self.rule,
            "actions": self.actions,
        }


@dataclass
class HostStatus:
    """Everything `idm status` shows for this inventory and host."""

    inventory: str
    now: datetime
    warn_days: int
    identities: list[IdentityStatus] = field(default_factory=list)
    not_shown: int = 0
    grants: list[tuple[str, str, str]] = field(default_factory=list)  # user, kind, value
    snapshot: dict[str, Any] | None = None
    actions: list[str] = field(default_factory=list)

    @property
    def all_actions(self) -> list[str]:
        return [*self.actions, *(a for i in self.identities for a in i.actions)]

    def as_dict(self) -> dict[str, Any]:
        return {
            "inventory": self.inventory,
            "now": self.now.isoformat(),
            "expiry_warning_days": self.warn_days,
            "identities": [i.as_dict() for i in self.identities],
            "not_shown": self.not_shown,
            "grants": [{"user": u, "kind": k, "value": v} for u, k, v in self.grants],
            "snapshot": self.snapshot,
            "actions": self.all_actions,
        }


def _shown(certs: list[CertificateRecord]) -> list[CertificateRecord]:
    approved_subjects = {c.subject for c in certs if c.status == "approved"}
    return [c for c in certs
            if c.status in ("approved", "pending", "rejected")
            or (c.status in ("revoked", "expired") and c.subject not in approved_subjects)]


def _snapshot(path: Path, now: datetime) -> dict[str, Any] | None:
    """What the snapshot in place says about itself; None when there is none."""
    if not path.exists():
        return None
    try:
        info, not_fresh = inspect_snapshot(path, now=now.timestamp())
    except SnapshotError as exc:
        return {"path": str(path), "error": str(exc)}
    return {"path": str(path), "entries": info.entries, "fresh": not_fresh is None,
            "written_at": datetime.fromtimestamp(info.written_at, now.tzinfo).isoformat(),
            "deadline": datetime.fromtimestamp(info.deadline, now.tzinfo).isoformat()}


def host_status(
    inventory: Inventory,
    config: Config,
    *,
    now: datetime,
    presence: dict[int, str] | None = None,
    warn_days: int | None = None,
) -> HostStatus:
    """The overview (see the module docstring). `presence`: token id -> yes/no/unknown
    from a scan (identity.tokens.presence), or None when the cards were not scanned."""
    warn = config.validation.expiry_warning_days if warn_days is None else warn_days
    result = HostStatus(inventory.display_url, now, warn)
    grants = inventory.principals()
    result.grants = [(g.username, g.kind, g.value) for g in grants]
    mapper: Mapper | None = None
    try:
        files = read_principals_dir(config.server.principals_dir)
        result.grants += [(e.username, e.kind, e.value) for e in files]
        mapper = Mapper(config.server.mapping, [*explicit_from_records(grants), *files])
    except MappingError as exc:
        result.actions.append(f"fix the mapping set-up: {exc}")
    result.snapshot = _snapshot(config.server.snapshot, now)
    server = result.snapshot is not None
    if result.snapshot is not None:
        if "error" in result.snapshot:
            result.actions.append(f"{result.snapshot['error']}: run `idm refresh`")
        elif not result.snapshot["fresh"]:
            result.actions.append(
                f"the login snapshot {result.snapshot['path']} is stale: run `idm refresh` "
                "(is its timer running? `systemctl status idm-refresh.timer`)")

    tokens = {t.id: t for t in inventory.tokens()}
    certs = inventory.certificates()
    shown = _shown(certs)
    result.not_shown = len(certs) - len(shown)
    for rec in shown:
        token = tokens.get(rec.token_id) if rec.token_id is not None else None
        present = None if presence is None or token is None else presence.get(token.id)
        days = int((rec.not_after - now).total_seconds() // DAY)
        if rec.verified_at is None:
            revocation = "never checked"
        elif rec.fresh_until is not None and rec.fresh_until <= now:
            revocation = "stale"
        else:
            revocation = "fresh"
        item = IdentityStatus(rec, token, present, days, days < warn, revocation)
        if mapper is not None:
            try:
                item.rule, users = mapper.map(x509.load_der_x509_certificate(rec.der))
                item.users = sorted(users)
            except (MappingError, ValueError) as exc:
                item.rule = f"error: {exc}"
        item.actions = _actions(item, now, server)
        result.identities.append(item)
    if not any(c.status == "approved" for c in certs):
        result.actions.append("no approved identity: enroll a card (`idm enroll --token URI`) "
                              "or import one (`idm import FILE`)")
    return result


def _actions(item: IdentityStatus, now: datetime, server: bool) -> list[str]:
    """What to do about one identity, most urgent first (empty: nothing)."""
    rec, short = item.record, item.record.sha256[:16]
    name = f"{rec.subject} ({short})"
    if rec.status in ("revoked", "expired"):
        return [f"{name} is {rec.status}: enroll a new certificate for it"]
    if rec.status == "rejected":
        return [f"{name} was rejected ({rec.status_reason}): see `idm show {short}`; enroll "
                "a certificate that passes"]
    if rec.status == "pending":
        return [f"{name} is not validated yet: run `idm enroll` for its card again"]
    actions: list[str] = []
    if item.days_left < 0:
        actions.append(f"{name} expired on {_utc(rec.not_after)}: enroll a new certificate")
    elif item.expiry_warning:
        actions.append(f"{name} expires in {item.days_left} day(s), on {_utc(rec.not_after)}: "
                       "renew it (`idm enroll --token URI --new-key KIND --subject DN` on "
                       "its card or a new one, then `--import-cert`)")
    if item.present_now == "no" and item.token is not None:
        actions.append(f"insert card {item.token.label!r} to use {name} (last seen "
                       f"{_utc(item.token.last_seen)})")
    if item.revocation == "never checked":
        actions.append(f"{name} was never checked: run `idm verify {short}`")
    elif item.revocation == "stale":
        actions.append(f"the revocation status of {name} ran out at {_utc(rec.fresh_until)}: "
                       f"run `idm verify {short}` (on a server `idm refresh`); if that fails, "
                       "the CA's OCSP responder or CRL is unreachable")
    if server and not item.users:
        actions.append(f"no mapping rule names a user for {name}: `idm allow USER --subject "
                       f"'{rec.subject}'`, or add a rule to [server] mapping")
    return actions
