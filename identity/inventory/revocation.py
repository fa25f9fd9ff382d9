"""The revocation cache in the inventory: idm.validator's `RevocationStore` on SQL tables.

One implementation on a plain DB-API connection for both backends, so that `idm verify`
answered from the cache imports neither SQLAlchemy nor Alembic (about 0.5 s on its own):

- SQLite: the standard library's `sqlite3`, opened by `open_revocation_store` when the
  file's schema is at `SCHEMA_REVISION`; otherwise (no file, an older schema, another
  database) the full `Inventory` opens it, which creates or migrates the schema, and the
  store uses raw connections from its SQLAlchemy engine (psycopg for PostgreSQL).
- Paramstyle: statements are written with ``?`` and turned into ``%s`` for psycopg in
  one place (`_sql`). Times are written the way SQLAlchemy's `UtcDateTime` stores them
  (naive UTC text on SQLite, timestamptz on PostgreSQL), so the ORM reads the same rows.

A CRL's entries go into ``revoked_serials`` keyed by (crl, serial): one row per entry with
the serial's DER content bytes, the date as ``YYYYMMDDHHMMSS`` and the reason code, written
with one ``executemany`` in the transaction that marks the CRL ``indexed``. A store opened
with ``defer_indexing_above=N`` keeps a CRL of more than N entries as DER with
``indexed = false`` instead, answers lookups for it from the DER (`lookup_der`, native
code) and leaves the indexing to `index_pending()`, which `idm verify` runs in a detached
background process after printing its verdict (`spawn_indexer`).

The same tables hold validated certification paths (`load_path` / `save_path`, see
idm.validator.memo) so that an unchanged path is not validated again.

Run as ``python -m idm.identity.inventory.revocation`` (database URL in ``IDM_DB``) it
indexes every pending CRL and exits.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from idm.validator.revocation.store import CrlInfo, OcspRecord, RevokedEntry

if TYPE_CHECKING:
    from idm.identity.inventory.store import Inventory

# The newest migration in migrations/versions (store.py re-exports it; tests check it
# against Alembic's head). Here so that the light SQLite path can check it.
SCHEMA_REVISION = "0002"
SQLITE_BUSY_TIMEOUT_MS = 30_000
_BATCH = 50_000
_CRL_COLUMNS = "issuer_key, crl_number, this_update, next_update, sha256, source, entries"


def _hex(n: int) -> str:
    return format(n, "x")


def _int(text: str | None) -> int | None:
    return None if text is None else int(text, 16)


class _Db:
    """Where connections come from, and the dialect's conventions."""

    dialect = "sqlite"

    @contextmanager
    def connection(self) -> Iterator[Any]:  # pragma: no cover - interface
        raise NotImplementedError
        yield

    def close(self) -> None:
        pass


class _SqliteDb(_Db):
    """One `sqlite3` connection (autocommit mode: we issue BEGIN), shared under a lock."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._lock = threading.RLock()

    @contextmanager
    def connection(self) -> Iterator[Any]:
        with self._lock:
            yield self._conn

    def close(self) -> None:
        self._conn.close()


class _EngineDb(_Db):
    """Raw DB-API connections from the inventory's SQLAlchemy engine (its pool)."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.dialect = engine.dialect.name

    @contextmanager
    def connection(self) -> Iterator[Any]:
        conn = self._engine.raw_connection()
        try:
            yield conn
        finally:
            conn.close()  # back to the pool


def connect_sqlite(path: str | Path) -> sqlite3.Connection:
    """A `sqlite3` connection set up like the inventory's engine (WAL, busy timeout)."""
    conn = sqlite3.connect(
        str(path),
        timeout=SQLITE_BUSY_TIMEOUT_MS / 1000,
        isolation_level=None,
        check_same_thread=False,
    )
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


class SqlRevocationStore:
    """`idm.validator.revocation.store.RevocationStore` backed by the inventory.

    Also implements `idm.validator.revocation.crl.CrlBlobStore` and
    `idm.validator.memo.PathMemo`. Build it with `Inventory.revocation_store()`, or
    with `open_revocation_store(url)` to avoid SQLAlchemy when the database allows.
    """

    def __init__(
        self,
        inventory: Inventory | None = None,
        *,
        db: _Db | None = None,
        url: str | None = None,
        defer_indexing_above: int | None = None,
    ) -> None:
        if db is None:
            if inventory is None:
                raise ValueError("SqlRevocationStore needs an inventory or a connection")
            db = _EngineDb(inventory.engine)
            url = url or inventory.url
        self.inventory = inventory
        self._db = db
        self.url = url
        self.defer_indexing_above = defer_indexing_above
        self.pending = False  # a CRL awaits indexing after this process's verdicts
        self._ders: dict[str, bytes] = {}  # DER of CRLs this process stored unindexed
        # Checked CRLs held in memory only, until `finish_deferred()` stores them.
        self._deferred: dict[str, tuple[CrlInfo, bytes]] = {}

    def close(self) -> None:
        self._db.close()

    # -- plumbing ---------------------------------------------------------------------------

    def _sql(self, statement: str) -> str:
        return statement if self._db.dialect == "sqlite" else statement.replace("?", "%s")

    def _time(self, when: datetime | None) -> Any:
        if when is None:
            return None
        if when.tzinfo is None:
            raise ValueError("naive datetime given to the inventory; use UTC-aware times")
        when = when.astimezone(UTC)
        if self._db.dialect == "sqlite":
            return when.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
        return when

    @staticmethod
    def _read_time(value: Any) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    @contextmanager
    def _tx(self, write: bool = False) -> Iterator[Any]:
        """A cursor in one transaction (BEGIN IMMEDIATE for SQLite writes, as store.py)."""
        with self._db.connection() as conn:
            cur = conn.cursor()
            try:
                if self._db.dialect == "sqlite":
                    cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                yield cur
            except BaseException:
                conn.rollback()
                raise
            else:
                conn.commit()
            finally:
                cur.close()

    def _crl_info(self, row: tuple[Any, ...]) -> CrlInfo:
        issuer_key, number, this_update, next_update, sha256, source, entries = row
        return CrlInfo(
            issuer_key=issuer_key,
            crl_number=_int(number),
            this_update=self._read_time(this_update),  # type: ignore[arg-type]
            next_update=self._read_time(next_update),
            sha256=sha256,
            source=source or "",
            entries=entries,
        )

    def _one_crl(self, where: str, *args: Any) -> CrlInfo | None:
        with self._tx() as cur:
            cur.execute(self._sql(f"SELECT {_CRL_COLUMNS} FROM crls WHERE {where}"), args)
            row = cur.fetchone()
        return self._crl_info(row) if row else None

    # -- CRLs -------------------------------------------------------------------------------

    def crl_known(self, issuer_key: str, crl_number: int) -> CrlInfo | None:
        for info, _ in self._deferred.values():
            if info.issuer_key == issuer_key and info.crl_number == crl_number:
                return info
        return self._one_crl("issuer_key = ? AND crl_number = ?", issuer_key, _hex(crl_number))

    def crl_by_sha256(self, sha256: str) -> CrlInfo | None:
        if sha256 in self._deferred:
            return self._deferred[sha256][0]
        return self._one_crl("sha256 = ?", sha256)

    def store_crl(
        self, info: CrlInfo, revoked: Iterable[tuple[int, datetime, str | None]]
    ) -> None:
        from idm.validator.revocation.crlder import REASON_CODES, serial_bytes, time_text

        def rows(crl_id: int) -> Iterator[tuple[Any, ...]]:
            for serial, revoked_at, reason in revoked:
                code = None if reason is None else REASON_CODES.get(reason, 0)
                yield crl_id, serial_bytes(serial), time_text(revoked_at), code

        self._store(info, None, rows)

    def store_crl_der(self, info: CrlInfo, der: bytes) -> None:
        """Keep a checked CRL given as DER; index it now, or later for a large one.

        Later means: held in this store's memory (every query of this store sees it) and
        written with its index by `finish_deferred()`, in the background.
        """
        defer = self.defer_indexing_above is not None and info.entries > self.defer_indexing_above
        if defer:
            if info.sha256 in self._deferred or self.crl_by_sha256(info.sha256) is not None:
                return
            if info.crl_number is not None and self.crl_known(info.issuer_key, info.crl_number):
                return
            self._deferred[info.sha256] = (info, der)
            self._ders[info.sha256] = der
            self.pending = True
            return
        from idm.validator.revocation.crlder import raw_entries

        try:
            raw = raw_entries(der)
        except (ValueError, IndexError):
            # Something the fast walker does not read: let `cryptography` iterate.
            from idm.validator.revocation.crl import _entries, load_crl

            self.store_crl(info, _entries(load_crl(der)))
            return
        self._store(info, None, lambda crl_id: ((crl_id, s, t, r) for s, t, r in raw))

    def _store(self, info: CrlInfo, der: bytes | None, rows: Any) -> bool:
        """Insert the CRL row (and its entries when `rows` is given); False if held."""
        fetched = datetime.now(UTC)
        with self._tx(write=True) as cur:
            cur.execute(self._sql("SELECT id FROM crls WHERE sha256 = ?"), (info.sha256,))
            held = cur.fetchone()
            if held is None and info.crl_number is not None:
                cur.execute(
                    self._sql("SELECT id FROM crls WHERE issuer_key = ? AND crl_number = ?"),
                    (info.issuer_key, _hex(info.crl_number)),
                )
                held = cur.fetchone()
            if held is not None:
                return False
            values = (
                info.issuer_key,
                None if info.crl_number is None else _hex(info.crl_number),
                self._time(info.this_update),
                self._time(info.next_update),
                info.source,
                info.sha256,
                info.entries,
                self._time(fetched),
                der,
                rows is not None,
            )
            insert = (
                "INSERT INTO crls (issuer_key, crl_number, this_update, next_update, source, "
                "sha256, entries, fetched_at, der, indexed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            )
            if self._db.dialect == "sqlite":
                cur.execute(insert, values)
                crl_id = cur.lastrowid
            else:
                cur.execute(self._sql(insert) + " RETURNING id", values)
                crl_id = cur.fetchone()[0]
            # Older CRLs of this issuer that have expired are superseded by this one (CRLs
            # are cumulative): drop them and their entries so the tables do not grow daily.
            cur.execute(
                self._sql(
                    "SELECT id FROM crls WHERE issuer_key = ? AND id != ? AND next_update < ? "
                    "AND this_update < ?"
                ),
                (info.issuer_key, crl_id, self._time(fetched), self._time(info.this_update)),
            )
            for (stale,) in cur.fetchall():
                cur.execute(self._sql("DELETE FROM revoked_serials WHERE crl_id = ?"), (stale,))
                cur.execute(self._sql("DELETE FROM crls WHERE id = ?"), (stale,))
            if rows is not None:
                self._insert_rows(cur, rows(crl_id))
        return True

    def _insert_rows(self, cur: Any, rows: Iterable[tuple[Any, ...]]) -> None:
        sql = self._sql(
            "INSERT INTO revoked_serials (crl_id, serial, revoked_at, reason) VALUES (?, ?, ?, ?)"
        )
        batch: list[tuple[Any, ...]] = []
        for row in rows:
            batch.append(row)
            if len(batch) >= _BATCH:
                cur.executemany(sql, batch)
                batch = []
        if batch:
            cur.executemany(sql, batch)

    def index_pending(self) -> int:
        """Index every CRL held as DER only; returns how many. Safe to run concurrently."""
        from idm.validator.revocation.crlder import raw_entries

        done = 0
        while True:
            with self._tx() as cur:
                cur.execute(self._sql("SELECT id FROM crls WHERE indexed = ? LIMIT 1"), (False,))
                row = cur.fetchone()
            if row is None:
                return done
            crl_id = row[0]
            with self._tx(write=True) as cur:
                lock = " FOR UPDATE" if self._db.dialect == "postgresql" else ""
                cur.execute(
                    self._sql(f"SELECT der, indexed FROM crls WHERE id = ?{lock}"), (crl_id,)
                )
                row = cur.fetchone()
                if row is None or row[1]:
                    continue  # dropped, or another indexer finished it
                der = bytes(row[0])
                try:
                    raw = raw_entries(der)
                except (ValueError, IndexError):
                    from idm.validator.revocation.crl import _entries, load_crl
                    from idm.validator.revocation.crlder import (
                        REASON_CODES,
                        serial_bytes,
                        time_text,
                    )

                    raw = [
                        (
                            serial_bytes(s),
                            time_text(t),
                            None if r is None else REASON_CODES.get(r, 0),
                        )
                        for s, t, r in _entries(load_crl(der))
                    ]
                self._insert_rows(cur, ((crl_id, s, t, r) for s, t, r in raw))
                cur.execute(
                    self._sql("UPDATE crls SET indexed = ?, der = NULL WHERE id = ?"),
                    (True, crl_id),
                )
            done += 1

    def finish_deferred(self) -> None:
        """Store the CRLs kept in memory, with their index, in the background.

        Each CRL's DER goes to a private temporary file and a new, detached process
        (`python -m idm.identity.inventory.revocation`, niced, stdio to /dev/null, the
        database URL in its environment) writes the CRL row and all its serials in one
        transaction, then removes the file. A new process rather than a fork: a forked
        child shares this process's memory, and this process's exit would then pay a
        copy-on-write fault for every page it touches (measured: +0.1-0.2 s). Without a
        URL, or if the file cannot be written, the CRL is stored now as DER marked not
        indexed (lookups read the DER) and the indexer is started all the same.
        """
        deferred = list(self._deferred.values())
        self._deferred.clear()
        url = self.url
        for info, der in deferred:
            path = None
            if url is not None:
                path = _write_private(der, info.sha256)
            if path is None:
                self.store_unindexed(info, der)
            if url is not None:
                _spawn_detached(url, path, info, der)

    def store_unindexed(self, info: CrlInfo, der: bytes) -> None:
        """Store a checked CRL as DER marked not indexed (lookups read the DER until
        `index_pending()` has run)."""
        self._store(info, der, None)

    def pending_count(self) -> int:
        """How many held CRLs still wait for their serials to be indexed."""
        with self._tx() as cur:
            cur.execute(self._sql("SELECT COUNT(*) FROM crls WHERE indexed = ?"), (False,))
            return int(cur.fetchone()[0])

    def current_crls(self, issuer_key: str, at: datetime) -> list[CrlInfo]:
        held = [
            i
            for i, _ in self._deferred.values()
            if i.issuer_key == issuer_key
            and i.next_update is not None
            and i.this_update <= at <= i.next_update
        ]
        if held:
            return sorted(held, key=lambda i: i.this_update, reverse=True) + [
                i for i in self._current_crls(issuer_key, at) if i.sha256 not in self._deferred
            ]
        return self._current_crls(issuer_key, at)

    def _current_crls(self, issuer_key: str, at: datetime) -> list[CrlInfo]:
        with self._tx() as cur:
            cur.execute(
                self._sql(
                    f"SELECT {_CRL_COLUMNS} FROM crls WHERE issuer_key = ? AND this_update <= ? "
                    "AND next_update IS NOT NULL AND next_update >= ? ORDER BY this_update DESC"
                ),
                (issuer_key, self._time(at), self._time(at)),
            )
            return [self._crl_info(r) for r in cur.fetchall()]

    def revoked(self, issuer_key: str, serial: int, at: datetime) -> RevokedEntry | None:
        from idm.validator.revocation.crlder import (
            REASON_NAMES,
            parse_time_text,
            serial_bytes,
            time_text,
        )

        found: list[tuple[datetime, str | None, int | None, str]] = []
        with self._tx() as cur:
            cur.execute(
                self._sql(
                    "SELECT r.revoked_at, r.reason, c.crl_number, c.sha256 FROM crls c "
                    "JOIN revoked_serials r ON r.crl_id = c.id "
                    "WHERE c.issuer_key = ? AND r.serial = ? AND r.revoked_at <= ?"
                ),
                (issuer_key, serial_bytes(serial), time_text(at)),
            )
            for when, reason, number, sha in cur.fetchall():
                name = None if reason is None else REASON_NAMES.get(reason, "unspecified")
                found.append((parse_time_text(when), name, _int(number), sha))
            cur.execute(
                self._sql(
                    "SELECT crl_number, sha256 FROM crls WHERE issuer_key = ? AND indexed = ?"
                ),
                (issuer_key, False),
            )
            unindexed = cur.fetchall()
            unindexed += [
                (None if i.crl_number is None else _hex(i.crl_number), sha)
                for sha, (i, _) in self._deferred.items()
                if i.issuer_key == issuer_key
            ]
            for number, sha in unindexed:
                der = self._ders.get(sha)
                if der is None:
                    cur.execute(self._sql("SELECT der FROM crls WHERE sha256 = ?"), (sha,))
                    row = cur.fetchone()
                    if row is None or row[0] is None:
                        continue  # indexed meanwhile: the query above saw it
                    der = bytes(row[0])
                from idm.validator.revocation.crl import lookup_der

                hit = lookup_der(der, serial)
                if hit is not None and hit[0] <= at:
                    found.append((hit[0], hit[1], _int(number), sha))
        if not found:
            return None
        when, reason, number, sha = min(found, key=lambda f: f[0])
        return RevokedEntry(issuer_key, serial, when, reason, number, sha)

    # -- OCSP -------------------------------------------------------------------------------

    def store_ocsp(self, record: OcspRecord) -> None:
        with self._tx(write=True) as cur:
            cur.execute(
                self._sql("SELECT id, this_update FROM ocsp_responses WHERE issuer_key = ? "
                          "AND serial = ?"),
                (record.issuer_key, _hex(record.serial)),
            )
            row = cur.fetchone()
            if row is not None and self._read_time(row[1]) > record.this_update:  # type: ignore[operator]
                return
            values = (
                record.status,
                self._time(record.revoked_at),
                record.reason,
                self._time(record.this_update),
                self._time(record.next_update),
                self._time(record.produced_at),
                record.url,
                record.response_der,
                self._time(datetime.now(UTC)),
            )
            if row is None:
                cur.execute(
                    self._sql(
                        "INSERT INTO ocsp_responses (status, revoked_at, reason, this_update, "
                        "next_update, produced_at, url, der, fetched_at, issuer_key, serial) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    ),
                    (*values, record.issuer_key, _hex(record.serial)),
                )
            else:
                cur.execute(
                    self._sql(
                        "UPDATE ocsp_responses SET status = ?, revoked_at = ?, reason = ?, "
                        "this_update = ?, next_update = ?, produced_at = ?, url = ?, der = ?, "
                        "fetched_at = ? WHERE id = ?"
                    ),
                    (*values, row[0]),
                )

    def ocsp(self, issuer_key: str, serial: int, at: datetime) -> OcspRecord | None:
        with self._tx() as cur:
            cur.execute(
                self._sql(
                    "SELECT status, this_update, next_update, produced_at, revoked_at, reason, "
                    "url, der FROM ocsp_responses WHERE issuer_key = ? AND serial = ?"
                ),
                (issuer_key, _hex(serial)),
            )
            row = cur.fetchone()
        if row is None:
            return None
        status, this_update, next_update, produced_at, revoked_at, reason, url, der = row
        this = self._read_time(this_update)
        assert this is not None
        if this > at:
            return None
        return OcspRecord(
            issuer_key=issuer_key,
            serial=serial,
            status=status,
            this_update=this,
            next_update=self._read_time(next_update),
            produced_at=self._read_time(produced_at) or this,
            revoked_at=self._read_time(revoked_at),
            reason=reason,
            url=url or "",
            response_der=bytes(der),
        )

    # -- validated paths (idm.validator.memo.PathMemo) --------------------------------------

    def load_path(self, key: str, at: datetime) -> str | None:
        with self._tx() as cur:
            cur.execute(
                self._sql(
                    "SELECT record FROM validated_paths WHERE key = ? AND valid_from <= ? "
                    "AND valid_until >= ?"
                ),
                (key, self._time(at), self._time(at)),
            )
            row = cur.fetchone()
        return row[0] if row else None

    def save_path(self, key: str, valid_from: datetime, valid_until: datetime, record: str) -> None:
        now = datetime.now(UTC)
        with self._tx(write=True) as cur:
            # Expired paths are of no further use (a validation "at" a past time then
            # simply validates again).
            cur.execute(
                self._sql("DELETE FROM validated_paths WHERE key = ? OR valid_until < ?"),
                (key, self._time(now)),
            )
            cur.execute(
                self._sql(
                    "INSERT INTO validated_paths (key, valid_from, valid_until, record, "
                    "created_at) VALUES (?, ?, ?, ?, ?)"
                ),
                (key, self._time(valid_from), self._time(valid_until), record, self._time(now)),
            )


def sqlite_path(url: str) -> Path | None:
    """The file of a plain ``sqlite:///PATH`` URL, else None (memory, URI, options)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or "?" in url:
        return None
    path = url[len(prefix) :]
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    return Path(path).expanduser()


def _light_sqlite(url: str) -> sqlite3.Connection | None:
    """A sqlite3 connection when the file exists at SCHEMA_REVISION, else None."""
    path = sqlite_path(url)
    if path is None or not path.is_file():
        return None
    try:
        conn = connect_sqlite(path)
    except sqlite3.Error:
        return None
    try:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:
        row = None
    if row is None or row[0] != SCHEMA_REVISION:
        conn.close()
        return None
    return conn


def open_revocation_store(
    url: str | None = None, *, defer_indexing_above: int | None = None
) -> SqlRevocationStore:
    """The revocation cache of the inventory at `url` (default: IDM_DB, else the default).

    A SQLite file whose schema is current is opened with the standard library alone;
    anything else goes through `Inventory`, which creates or migrates the schema (and
    raises `InventoryError` with one clear line when it cannot).
    """
    if url is None:
        from idm.identity.config import default_data_dir

        url = os.environ.get("IDM_DB") or f"sqlite:///{default_data_dir() / 'inventory.sqlite'}"
    conn = _light_sqlite(url)
    if conn is not None:
        return SqlRevocationStore(
            db=_SqliteDb(conn), url=url, defer_indexing_above=defer_indexing_above
        )
    from idm.identity.inventory.store import open_inventory

    inventory = open_inventory(url)
    return SqlRevocationStore(inventory, defer_indexing_above=defer_indexing_above)


def _write_private(der: bytes, sha256: str) -> str | None:
    """Write `der` to a new file only this user can read; its path, or None."""
    directory = os.environ.get("TMPDIR") or "/tmp"
    path = os.path.join(directory, f"idm-crl-{os.getpid()}-{sha256[:16]}.der")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(der)
    except OSError:
        os.unlink(path)
        return None
    return path


def spawn_indexer(url: str) -> None:
    """Index pending CRLs in a detached background process (subprocess fallback)."""
    import subprocess

    subprocess.Popen(
        [sys.executable, "-m", "idm.identity.inventory.revocation"],
        env=dict(os.environ, IDM_DB=url),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


def _spawn_detached(
    url: str, crl_file: str | None, info: CrlInfo | None, der: bytes | None = None
) -> None:
    """Start the indexer: a new session, stdio on /dev/null, settings in its environment
    (not argv, so that a PostgreSQL password does not show in `ps`)."""
    env = dict(os.environ, IDM_DB=url)
    if crl_file is not None and info is not None and der is not None:
        env["IDM_CRL_FILE"] = crl_file
        env["IDM_CRL_INFO"] = json.dumps(_info_json(info))
        env["IDM_CRL_SHA256"] = hashlib.sha256(der).hexdigest()
    devnull = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
    try:
        os.posix_spawn(
            sys.executable,
            [sys.executable, "-m", "idm.identity.inventory.revocation"],
            env,
            file_actions=devnull,
            setsid=True,
        )
    except (OSError, AttributeError):
        spawn_indexer(url)


def _info_json(info: CrlInfo) -> dict[str, Any]:
    return {
        "issuer_key": info.issuer_key,
        "crl_number": info.crl_number,
        "this_update": info.this_update.isoformat(),
        "next_update": info.next_update.isoformat() if info.next_update else None,
        "sha256": info.sha256,
        "source": info.source,
        "entries": info.entries,
    }


def _info_from_json(d: dict[str, Any]) -> CrlInfo:
    return CrlInfo(
        issuer_key=d["issuer_key"],
        crl_number=d["crl_number"],
        this_update=datetime.fromisoformat(d["this_update"]),
        next_update=datetime.fromisoformat(d["next_update"]) if d["next_update"] else None,
        sha256=d["sha256"],
        source=d["source"],
        entries=d["entries"],
    )


def main() -> int:
    """Index the pending CRLs of the inventory named by IDM_DB; first store the CRL that
    `idm verify` left in IDM_CRL_FILE (described by IDM_CRL_INFO), if any."""
    if hasattr(os, "nice"):
        os.nice(10)  # background work: the user's next command comes first
    store = open_revocation_store(os.environ.get("IDM_DB"))
    try:
        crl_file = os.environ.get("IDM_CRL_FILE")
        if crl_file:
            try:
                with open(crl_file, "rb") as f:
                    der = f.read()
            finally:
                os.unlink(crl_file)
            info = _info_from_json(json.loads(os.environ["IDM_CRL_INFO"]))
            # Written by the verifying process, which checked the CRL's signature; the
            # file is private (0600, created exclusively), and must still be the same.
            if hashlib.sha256(der).hexdigest() == os.environ.get("IDM_CRL_SHA256"):
                store.store_crl_der(info, der)
        store.index_pending()
    finally:
        store.close()
    return 0



if __name__ == "__main__":
    sys.exit(main())
