"""The inventory: a small API over the SQLAlchemy models, so sessions stay in here.

Every change runs in one transaction and writes its event rows in the same transaction, so
a crash leaves either the whole change or none of it. On SQLite, write transactions start
with ``BEGIN IMMEDIATE`` (WAL mode, a busy timeout): two processes writing at once wait
for each other instead of failing with "database is locked", which a deferred transaction
that upgrades from read to write cannot avoid. The same code runs on PostgreSQL, where
writers do not wait for each other: a row a transaction reads to change it is read
``FOR UPDATE`` (a second writer waits, then sees the first one's change, so an event is
written once), and a method that inserts a row unless it exists (`record_token`,
`add_certificate`, `allow`) runs again when another writer inserted the same row first
(`_race_safe`): the second run finds the row. Eight processes enrolling, allowing and
refreshing at once give no failure and exact counts (tests/test_inventory_concurrency.py).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Engine, create_engine, event, func, inspect, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DatabaseError,
    IntegrityError,
    NoSuchModuleError,
    SQLAlchemyError,
)
from sqlalchemy.orm import Session

if TYPE_CHECKING:
    from idm.identity.inventory.revocation import SqlRevocationStore

from idm.identity.config import default_data_dir
from idm.identity.inventory.models import (
    CERT_STATUSES,
    TOKEN_STATES,
    Certificate,
    Event,
    Principal,
    Token,
)

# SCHEMA_REVISION, the newest migration in migrations/versions (tests check it against
# Alembic's head), is defined next to the SQLAlchemy-free revocation store, which checks
# it without importing this module.
from idm.identity.inventory.revocation import SCHEMA_REVISION  # noqa: E402

SQLITE_BUSY_TIMEOUT_MS = 30_000


class InventoryError(Exception):
    """The inventory cannot be opened or cannot do what was asked (a one-line message)."""


class WriteConflict(InventoryError):
    """Another writer inserted the same row first (a unique constraint): run again."""


# How often a method that lost an insert race is run again; the second run finds the row,
# so more than one retry means something else is wrong.
RACE_RETRIES = 3
_T = TypeVar("_T")
_P = ParamSpec("_P")


def _race_safe(
    method: Callable[Concatenate[Inventory, _P], _T],
) -> Callable[Concatenate[Inventory, _P], _T]:
    """Run an insert-unless-present method again when it lost the race to another writer."""

    @functools.wraps(method)
    def run(self: Inventory, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        for attempt in range(1, RACE_RETRIES + 1):
            try:
                return method(self, *args, **kwargs)
            except WriteConflict:
                if attempt == RACE_RETRIES:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    return run


def now() -> datetime:
    return datetime.now(UTC)


def known_revisions() -> list[str]:
    """The schema revisions this idm's migrations define, oldest first."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(Path(__file__).parent / "migrations"))
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def default_db_url() -> str:
    return f"sqlite:///{default_data_dir() / 'inventory.sqlite'}"


def _parse_url(url: str) -> URL:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise InventoryError(
            f"invalid database URL {url!r}: expected e.g. sqlite:///PATH or "
            "postgresql+psycopg://USER@HOST/DB"
        ) from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise InventoryError(
            f"unsupported database {parsed.get_backend_name()!r} in --db: use sqlite or postgresql"
        )
    return parsed


def _sqlite_engine(url: URL) -> Engine:
    database = url.database
    if database and database != ":memory:" and not database.startswith("file:"):
        folder = Path(database).expanduser().parent
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise InventoryError(
                f"cannot create the inventory's folder {folder}: {exc.strerror}"
            ) from None
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let us issue BEGIN ourselves (pysqlite's implicit BEGIN is always deferred).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get("idm_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def make_engine(url: str) -> Engine:
    """An engine for a SQLAlchemy URL; a bad URL is an InventoryError with one clear line."""
    parsed = _parse_url(url)
    try:
        if parsed.get_backend_name() == "sqlite":
            return _sqlite_engine(parsed)
        return create_engine(parsed, pool_pre_ping=True)
    except (NoSuchModuleError, ArgumentError, ImportError) as exc:
        raise InventoryError(f"cannot use database URL {_safe(parsed)}: {exc}") from None


def _safe(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def _detail(exc: DatabaseError) -> str:
    """The database's own one-line message ("database or disk is full", …)."""
    text = str(exc.orig).strip() if exc.orig else str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass(frozen=True)
class TokenRecord:
    id: int
    manufacturer: str
    model: str
    serial: str
    label: str
    module_path: str | None
    first_seen: datetime
    last_seen: datetime
    state: str

    def as_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


@dataclass(frozen=True)
class CertificateRecord:
    """What the inventory knows of one certificate (and the SSH identity of its key)."""

    sha256: str
    der: bytes
    subject: str
    issuer: str
    serial: str
    not_before: datetime
    not_after: datetime
    key_type: str
    key_fingerprint: str
    key_blob: bytes
    self_signed: bool
    cka_id: str | None = None
    label: str | None = None
    token_id: int | None = None
    status: str = "pending"
    status_reason: str | None = None
    status_time: datetime | None = None
    verdict_status: str | None = None
    verified_at: datetime | None = None
    fresh_until: datetime | None = None

    def as_dict(self, *, with_der: bool = False) -> dict[str, Any]:
        data = asdict(self)
        data.pop("key_blob")
        der = data.pop("der")
        if with_der:
            import base64

            data["der_base64"] = base64.b64encode(der).decode()
        return _jsonable(data)


@dataclass(frozen=True)
class EventRecord:
    id: int
    time: datetime
    kind: str
    certificate: str | None
    token_id: int | None
    reason: str | None
    command: str | None

    def as_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


@dataclass(frozen=True)
class PrincipalRecord:
    username: str
    kind: str
    value: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in data.items()}


def _token_record(row: Token) -> TokenRecord:
    return TokenRecord(
        id=row.id,
        manufacturer=row.manufacturer,
        model=row.model,
        serial=row.serial,
        label=row.label,
        module_path=row.module_path,
        first_seen=row.first_seen,
        last_seen=row.last_seen,
        state=row.state,
    )


def _certificate_for_update(s: Session, sha256: str) -> Certificate:
    """The certificate's row, locked for this transaction; InventoryError when unknown."""
    row = s.scalars(select(Certificate).filter_by(sha256=sha256).with_for_update()).one_or_none()
    if row is None:
        raise InventoryError(f"no certificate {sha256} in the inventory")
    return row


def _cert_record(row: Certificate) -> CertificateRecord:
    return CertificateRecord(
        sha256=row.sha256,
        der=row.der,
        subject=row.subject,
        issuer=row.issuer,
        serial=row.serial,
        not_before=row.not_before,
        not_after=row.not_after,
        key_type=row.key_type,
        key_fingerprint=row.key_fingerprint,
        key_blob=row.key_blob,
        self_signed=row.self_signed,
        cka_id=row.cka_id,
        label=row.label,
        token_id=row.token_id,
        status=row.status,
        status_reason=row.status_reason,
        status_time=row.status_time,
        verdict_status=row.verdict_status,
        verified_at=row.verified_at,
        fresh_until=row.fresh_until,
    )


_CERT_COLUMNS = (
    "sha256",
    "der",
    "subject",
    "issuer",
    "serial",
    "not_before",
    "not_after",
    "key_type",
    "key_fingerprint",
    "key_blob",
    "self_signed",
    "cka_id",
    "label",
    "token_id",
)


class Inventory:
    """The inventory database. Opening it creates or upgrades the schema on first use."""

    def __init__(self, url: str | None = None, *, upgrade: bool = True) -> None:
        self.url = url or os.environ.get("IDM_DB") or default_db_url()
        self.engine = make_engine(self.url)
        self._writer = self.engine.execution_options(idm_write=True)
        if upgrade:
            self.upgrade()

    @property
    def display_url(self) -> str:
        return _safe(self.engine.url)

    def close(self) -> None:
        self.engine.dispose()

    # -- schema -----------------------------------------------------------------------------

    def schema_revision(self) -> str | None:
        """The schema's Alembic revision, or None for an empty database.

        An InventoryError, before anything is written, when the schema marker is one this
        idm cannot work with: a revision it does not know (a newer idm wrote it), or a
        marker that is empty, holds several revisions or is missing beside idm's tables.
        """
        with self._connect_errors():
            with self.engine.connect() as conn:
                schema = inspect(conn)
                if not schema.has_table("alembic_version"):
                    if schema.has_table("certificates"):
                        raise self._bad_marker("has idm's tables but no schema marker")
                    return None
                rows = [r for (r,) in conn.execute(text("SELECT version_num FROM alembic_version"))]
        if rows == [SCHEMA_REVISION]:  # the usual case: no need to read the migrations
            return SCHEMA_REVISION
        if len(rows) != 1:
            raise self._bad_marker(
                f"has an inconsistent schema marker ({len(rows)} revisions: "
                f"{', '.join(map(repr, rows)) or 'none'})"
            )
        known = known_revisions()
        (revision,) = rows
        if revision in known:
            return revision
        if revision.isdigit() and known[-1].isdigit() and int(revision) > int(known[-1]):
            raise InventoryError(
                f"the inventory at {self.display_url} has schema revision {revision!r}: a "
                f"newer idm wrote it, and this idm knows revisions {known[0]} to {known[-1]} "
                "only; use the newer idm (nothing was changed)"
            )
        raise self._bad_marker(
            f"has an unknown schema revision {revision!r} (this idm knows {known[0]} to "
            f"{known[-1]})"
        )

    def _bad_marker(self, what: str) -> InventoryError:
        return InventoryError(
            f"the inventory at {self.display_url} {what}: it was not written by idm or was "
            "changed by hand (nothing was changed)"
        )

    def upgrade(self) -> tuple[str | None, str]:
        """Bring the schema to the newest revision; returns (before, after)."""
        before = self.schema_revision()
        if before == SCHEMA_REVISION:
            return before, SCHEMA_REVISION
        from alembic import command
        from alembic.config import Config as AlembicConfig

        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        with self._connect_errors(), self._writer.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Two processes creating the schema at once: the second waits, then no-ops.
                conn.execute(text("SELECT pg_advisory_xact_lock(7512)"))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        return before, SCHEMA_REVISION

    @contextmanager
    def _connect_errors(self, doing: str = "cannot open the inventory") -> Iterator[None]:
        try:
            yield
        except IntegrityError as exc:
            raise WriteConflict(f"{doing} at {self.display_url}: {_detail(exc)}") from None
        except DatabaseError as exc:  # connection refused, not a database, disk full, …
            raise InventoryError(f"{doing} at {self.display_url}: {_detail(exc)}") from None

    @contextmanager
    def reading(self) -> Iterator[Session]:
        with self._connect_errors(), Session(self.engine, expire_on_commit=False) as session:
            with session.begin():
                yield session

    @contextmanager
    def writing(self) -> Iterator[Session]:
        """One write transaction: everything in it commits together or not at all."""
        with (
            self._connect_errors("cannot write to the inventory"),
            Session(self._writer, expire_on_commit=False) as session,
        ):
            with session.begin():
                yield session

    # -- events -----------------------------------------------------------------------------

    @staticmethod
    def _event(
        session: Session,
        kind: str,
        *,
        certificate_id: int | None = None,
        token_id: int | None = None,
        reason: str | None = None,
        command: str | None = None,
    ) -> None:
        session.add(
            Event(
                time=now(),
                kind=kind,
                certificate_id=certificate_id,
                token_id=token_id,
                reason=reason,
                command=command,
            )
        )

    def events(self, certificate: str | None = None, limit: int | None = None) -> list[EventRecord]:
        """Events, oldest first; optionally only those of one certificate (SHA-256)."""
        with self.reading() as s:
            query = (
                select(Event, Certificate.sha256)
                .outerjoin(Certificate, Event.certificate_id == Certificate.id)
                .order_by(Event.id)
            )
            if certificate:
                query = query.where(Certificate.sha256 == certificate)
            if limit:
                query = query.order_by(None).order_by(Event.id.desc()).limit(limit)
            rows = s.execute(query).all()
        records = [
            EventRecord(
                id=e.id,
                time=e.time,
                kind=e.kind,
                certificate=sha,
                token_id=e.token_id,
                reason=e.reason,
                command=e.command,
            )
            for e, sha in rows
        ]
        return sorted(records, key=lambda r: r.id)

    # -- tokens -----------------------------------------------------------------------------

    @_race_safe
    def record_token(
        self,
        manufacturer: str,
        model: str,
        serial: str,
        label: str,
        *,
        module_path: str | None = None,
        command: str | None = None,
        present: bool = True,
    ) -> TokenRecord:
        """Insert the token or mark it present and seen now; events only for changes.

        With ``present=False`` (a card registered from a certificate file, not inserted)
        a new token is recorded as absent, and a known one is left as it is."""
        t = now()
        with self.writing() as s:
            row = s.scalars(
                select(Token).filter_by(
                    manufacturer=manufacturer, model=model, serial=serial, label=label
                ).with_for_update()
            ).one_or_none()
            if row is None:
                row = Token(
                    manufacturer=manufacturer,
                    model=model,
                    serial=serial,
                    label=label,
                    module_path=module_path,
                    first_seen=t,
                    last_seen=t,
                    state="present" if present else "absent",
                )
                s.add(row)
                s.flush()
                self._event(s, "token-added", token_id=row.id, command=command)
                if not present:
                    self._event(s, "token-absent", token_id=row.id, command=command)
            elif present:
                row.last_seen = t
                if module_path:
                    row.module_path = module_path
                if row.state != "present":
                    self._event(
                        s, "token-present", token_id=row.id, reason=f"was {row.state}",
                        command=command,
                    )
                    row.state = "present"
            return _token_record(row)

    def set_token_state(self, token_id: int, state: str, *, command: str | None = None) -> None:
        if state not in TOKEN_STATES:
            raise ValueError(f"unknown token state {state!r}")
        with self.writing() as s:
            row = s.get(Token, token_id, with_for_update=True)
            if row is None:
                raise InventoryError(f"no token with id {token_id}")
            if row.state != state:
                self._event(s, f"token-{state}", token_id=token_id, command=command)
                row.state = state

    def mark_token_seen(self, token_id: int, *, command: str | None = None) -> None:
        """A scan found the token in its reader now: last_seen is now, and an absent
        token is present again (with an event). A retired token stays retired."""
        with self.writing() as s:
            row = s.get(Token, token_id, with_for_update=True)
            if row is None:
                raise InventoryError(f"no token with id {token_id}")
            row.last_seen = now()
            if row.state == "absent":
                self._event(s, "token-present", token_id=token_id, reason="was absent",
                            command=command)
                row.state = "present"

    def retire_token(
        self, token_id: int, *, reason: str | None = None, command: str | None = None
    ) -> tuple[TokenRecord, list[str]]:
        """Retire a token for good; its approved and pending certificates become superseded.

        One transaction: the token's state, the certificates' statuses and their events.
        Returns the token and the SHA-256 of the certificates withdrawn (none when the
        token was retired already).
        """
        with self.writing() as s:
            row = s.get(Token, token_id, with_for_update=True)
            if row is None:
                raise InventoryError(f"no token with id {token_id} in the inventory")
            if row.state == "retired":
                return _token_record(row), []
            why = f"token {row.label!r} (serial {row.serial}) retired" + (
                f": {reason}" if reason else "")
            self._event(s, "token-retired", token_id=token_id, reason=reason, command=command)
            row.state = "retired"
            withdrawn = []
            query = select(Certificate).where(
                Certificate.token_id == token_id, Certificate.status.in_(("approved", "pending"))
            )
            for cert in s.scalars(query.order_by(Certificate.id)):
                cert.status, cert.status_reason, cert.status_time = "superseded", why, now()
                self._event(s, "superseded", certificate_id=cert.id, token_id=token_id,
                            reason=why, command=command)
                withdrawn.append(cert.sha256)
            return _token_record(row), withdrawn

    def token(self, token_id: int) -> TokenRecord | None:
        with self.reading() as s:
            row = s.get(Token, token_id)
            return _token_record(row) if row else None

    def tokens(self) -> list[TokenRecord]:
        with self.reading() as s:
            return [_token_record(r) for r in s.scalars(select(Token).order_by(Token.id))]

    def find_token(
        self, manufacturer: str, model: str, serial: str, label: str
    ) -> TokenRecord | None:
        with self.reading() as s:
            row = s.scalars(
                select(Token).filter_by(
                    manufacturer=manufacturer, model=model, serial=serial, label=label
                )
            ).one_or_none()
            return _token_record(row) if row else None

    # -- certificates -----------------------------------------------------------------------

    @_race_safe
    def add_certificate(
        self, record: CertificateRecord, *, command: str | None = None
    ) -> tuple[CertificateRecord, bool]:
        """Insert a certificate as pending unless it is known; returns (record, added).

        A known certificate is left as it is, except that a token is attached to a
        certificate that had none (it was registered before its card was seen).
        """
        with self.writing() as s:
            row = s.scalars(
                select(Certificate).filter_by(sha256=record.sha256).with_for_update()
            ).one_or_none()
            if row is not None:
                if row.token_id is None and record.token_id is not None:
                    row.token_id = record.token_id
                    row.cka_id = row.cka_id or record.cka_id
                    row.label = row.label or record.label
                    self._event(
                        s, "token-attached", certificate_id=row.id, token_id=record.token_id,
                        command=command,
                    )
                return _cert_record(row), False
            t = now()
            row = Certificate(
                **{c: getattr(record, c) for c in _CERT_COLUMNS},
                status="pending",
                status_reason=None,
                status_time=t,
                created=t,
            )
            s.add(row)
            s.flush()
            self._event(
                s, "enrolled", certificate_id=row.id, token_id=row.token_id, command=command
            )
            return _cert_record(row), True

    def add_certificates(
        self, records: Iterable[CertificateRecord], *, command: str | None = None
    ) -> int:
        """Bulk insert of new certificates in one transaction (imports, benchmarks)."""
        t = now()
        count = 0
        with self.writing() as s:
            batch: list[dict[str, Any]] = []
            for r in records:
                values = {c: getattr(r, c) for c in _CERT_COLUMNS}
                values.update(status=r.status, status_reason=r.status_reason, status_time=t,
                              created=t)
                batch.append(values)
                if len(batch) >= 5000:
                    s.execute(Certificate.__table__.insert(), batch)
                    count += len(batch)
                    batch = []
            if batch:
                s.execute(Certificate.__table__.insert(), batch)
                count += len(batch)
            self._event(s, "imported", reason=f"{count} certificates", command=command)
        return count

    def certificate(self, fingerprint: str) -> CertificateRecord | None:
        """A certificate by SHA-256 (hex, any case, colons allowed; a unique prefix of ≥ 8)
        or by SSH key fingerprint (SHA256:…, when exactly one certificate has that key)."""
        with self.reading() as s:
            if fingerprint.startswith("SHA256:"):
                rows = s.scalars(
                    select(Certificate).filter_by(key_fingerprint=fingerprint).limit(2)
                ).all()
            else:
                key = fingerprint.replace(":", "").lower()
                if len(key) < 8 or any(c not in "0123456789abcdef" for c in key):
                    raise InventoryError(
                        f"{fingerprint!r} is not a certificate fingerprint: give the SHA-256 "
                        "in hex (at least 8 digits) or an SSH key fingerprint SHA256:…"
                    )
                rows = s.scalars(
                    select(Certificate).where(Certificate.sha256.startswith(key)).limit(2)
                ).all()
            if len(rows) > 1:
                raise InventoryError(f"{fingerprint!r} matches several certificates; give more")
            return _cert_record(rows[0]) if rows else None

    def certificates(
        self, *, status: str | Iterable[str] | None = None, token_id: int | None = None
    ) -> list[CertificateRecord]:
        with self.reading() as s:
            query = select(Certificate).order_by(Certificate.id)
            if isinstance(status, str):
                query = query.where(Certificate.status == status)
            elif status is not None:
                query = query.where(Certificate.status.in_(list(status)))
            if token_id is not None:
                query = query.where(Certificate.token_id == token_id)
            return [_cert_record(r) for r in s.scalars(query)]

    def by_key_fingerprint(self, key_fingerprint: str) -> list[CertificateRecord]:
        with self.reading() as s:
            query = select(Certificate).filter_by(key_fingerprint=key_fingerprint)
            return [_cert_record(r) for r in s.scalars(query.order_by(Certificate.id))]

    def set_status(
        self,
        sha256: str,
        status: str,
        reason: str | None,
        *,
        command: str | None = None,
    ) -> bool:
        """Change a certificate's status, with an event; False when it already had it."""
        if status not in CERT_STATUSES:
            raise ValueError(f"unknown certificate status {status!r}")
        with self.writing() as s:
            row = _certificate_for_update(s, sha256)
            if row.status == status:
                return False
            row.status = status
            row.status_reason = reason
            row.status_time = now()
            self._event(
                s, status, certificate_id=row.id, token_id=row.token_id, reason=reason,
                command=command,
            )
            return True

    def forget_certificate(self, sha256: str, *, command: str | None = None) -> CertificateRecord:
        """Remove a certificate from the inventory; returns what it was.

        Its earlier events stay in the log (no longer linked to it); a ``forgotten`` event
        names its SHA-256, subject and last status.
        """
        with self.writing() as s:
            row = _certificate_for_update(s, sha256)
            record = _cert_record(row)
            self._event(s, "forgotten", token_id=row.token_id, command=command,
                        reason=f"certificate {row.sha256} {row.subject} (was {row.status})")
            s.delete(row)
            return record

    def record_verdict(
        self,
        sha256: str,
        verdict_status: str,
        *,
        verified_at: datetime,
        fresh_until: datetime | None,
    ) -> None:
        """Remember the last validation result (no event: statuses carry the story)."""
        with self.writing() as s:
            row = _certificate_for_update(s, sha256)
            row.verdict_status = verdict_status
            row.verified_at = verified_at
            row.fresh_until = fresh_until

    def latest_event_id(self) -> int:
        """The newest event's id (0 for none): every change of the inventory writes an
        event, so a reader polls this one indexed value to learn that something changed."""
        with self.reading() as s:
            return int(s.scalar(select(func.max(Event.id))) or 0)

    def count_certificates(self) -> int:
        with self.reading() as s:
            return int(s.scalar(select(func.count()).select_from(Certificate)) or 0)

    def revocation_store(self) -> SqlRevocationStore:
        """The validator's revocation cache, kept in this inventory."""
        from idm.identity.inventory.revocation import SqlRevocationStore

        return SqlRevocationStore(self)

    # -- explicit principals (idm allow) ----------------------------------------------------

    @_race_safe
    def allow(self, username: str, kind: str, value: str, *, command: str | None = None) -> bool:
        """Let USER log in with certificates of this subject DN or principal name."""
        if kind not in ("subject", "principal"):
            raise ValueError("kind must be 'subject' or 'principal'")
        with self.writing() as s:
            exists = s.scalars(
                select(Principal).filter_by(username=username, kind=kind, value=value)
                .with_for_update()
            ).one_or_none()
            if exists:
                return False
            s.add(Principal(username=username, kind=kind, value=value, created=now()))
            self._event(s, "allowed", reason=f"{username}: {kind} {value}", command=command)
            return True

    def disallow(self, username: str, kind: str, value: str, *, command: str | None = None) -> bool:
        with self.writing() as s:
            row = s.scalars(
                select(Principal).filter_by(username=username, kind=kind, value=value)
                .with_for_update()
            ).one_or_none()
            if row is None:
                return False
            s.delete(row)
            self._event(s, "disallowed", reason=f"{username}: {kind} {value}", command=command)
            return True

    def principals(self, username: str | None = None) -> list[PrincipalRecord]:
        with self.reading() as s:
            query = select(Principal).order_by(Principal.username, Principal.id)
            if username is not None:
                query = query.where(Principal.username == username)
            return [PrincipalRecord(r.username, r.kind, r.value) for r in s.scalars(query)]


CREATING_COMMANDS = "`idm db upgrade`, `idm enroll`, `idm import`, `idm allow` and `idm agent`"


def _missing(where: str) -> InventoryError:
    return InventoryError(
        f"no inventory at {where}: check --db, IDM_DB or `db` in the configuration "
        f"(only {CREATING_COMMANDS} create one)"
    )


def open_inventory(url: str | None = None, *, create: bool = True) -> Inventory:
    """Open the inventory, upgrading its schema; errors are InventoryError.

    With ``create=False`` a database that holds no inventory is an error instead of a new
    empty inventory: a mistyped ``--db sqlite:///PATH`` must not quietly start an empty
    one (a missing SQLite file is not even created).
    """
    url = url or os.environ.get("IDM_DB") or default_db_url()
    if not create:
        parsed = _parse_url(url)
        database = parsed.database
        if (parsed.get_backend_name() == "sqlite" and database and database != ":memory:"
                and not database.startswith("file:")
                and not Path(database).expanduser().exists()):
            raise _missing(str(Path(database).expanduser()))
    try:
        inventory = Inventory(url, upgrade=False)
        if not create and inventory.schema_revision() is None:
            inventory.close()
            raise _missing(inventory.display_url)
        inventory.upgrade()
        return inventory
    except SQLAlchemyError as exc:
        raise InventoryError(f"inventory error: {str(exc).splitlines()[0]}") from None
