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

import dataclasses
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import stat
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from idm.validator.revocation.scope import CrlScope
from idm.validator.revocation.store import CrlInfo, Entry, OcspRecord, RevokedEntry

if TYPE_CHECKING:
    from idm.identity.inventory.store import Inventory

# The newest migration in migrations/versions (store.py re-exports it; tests check it
# against Alembic's head). Here so that the light SQLite path can check it.
SCHEMA_REVISION = "0003"
SQLITE_BUSY_TIMEOUT_MS = 30_000
_BATCH = 50_000
_CRL_COLUMNS = (
    "issuer_key, crl_number, this_update, next_update, sha256, source, entries, issuer_name, "
    "scope"
)


def _der_rows(crl_id: int, der: bytes) -> Iterator[tuple[Any, ...]]:
    """`revoked_serials` rows of a checked direct CRL: the fast DER walker, else
    `cryptography`'s iteration (for what the walker does not read)."""
    from idm.validator.revocation.crlder import raw_entries

    try:
        raw = raw_entries(der)
    except (ValueError, IndexError):
        from idm.validator.revocation.crl import store_entries
        from idm.validator.revocation.crlder import REASON_CODES, serial_bytes, time_text

        for serial, when, reason, _ in store_entries(der):
            code = None if reason is None else REASON_CODES.get(reason, 0)
            yield crl_id, serial_bytes(serial), time_text(when), code, None
        return
    for serial_content, when_text, code in raw:
        yield crl_id, serial_content, when_text, code, None


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
        issuer_key, number, this_update, next_update, sha256, source, entries, name, scope = row
        return CrlInfo(
            issuer_key=issuer_key,
            crl_number=_int(number),
            this_update=self._read_time(this_update),  # type: ignore[arg-type]
            next_update=self._read_time(next_update),
            sha256=sha256,
            source=source or "",
            entries=entries,
            issuer_name=name,
            scope=scope or "",
        )

    def _one_crl(self, where: str, *args: Any) -> CrlInfo | None:
        with self._tx() as cur:
            cur.execute(self._sql(f"SELECT {_CRL_COLUMNS} FROM crls WHERE {where}"), args)
            row = cur.fetchone()
        return self._crl_info(row) if row else None

    # -- CRLs -------------------------------------------------------------------------------

    def crl_known(self, issuer_key: str, scope: str, crl_number: int) -> CrlInfo | None:
        for info, _ in self._deferred.values():
            if (info.issuer_key, info.scope, info.crl_number) == (issuer_key, scope, crl_number):
                return info
        return self._one_crl(
            "issuer_key = ? AND scope = ? AND crl_number = ?", issuer_key, scope, _hex(crl_number)
        )

    def crl_by_sha256(self, sha256: str) -> CrlInfo | None:
        if sha256 in self._deferred:
            return self._deferred[sha256][0]
        return self._one_crl("sha256 = ?", sha256)

    def store_crl(self, info: CrlInfo, entries: Iterable[Entry]) -> None:
        from idm.validator.revocation.crlder import REASON_CODES, serial_bytes, time_text

        def rows(crl_id: int) -> Iterator[tuple[Any, ...]]:
            for serial, revoked_at, reason, cert_issuer in entries:
                code = None if reason is None else REASON_CODES.get(reason, 0)
                yield crl_id, serial_bytes(serial), time_text(revoked_at), code, cert_issuer

        self._store(info, None, rows)

    def store_crl_der(self, info: CrlInfo, der: bytes) -> None:
        """Keep a checked direct CRL given as DER; index it now, or later for a large one.

        Later means: held in this store's memory (every query of this store sees it) and
        written with its index by `finish_deferred()`, in the background.
        """
        defer = self.defer_indexing_above is not None and info.entries > self.defer_indexing_above
        if defer:
            if info.sha256 in self._deferred or self.crl_by_sha256(info.sha256) is not None:
                return
            if info.crl_number is not None and self.crl_known(
                info.issuer_key, info.scope, info.crl_number
            ):
                return
            self._deferred[info.sha256] = (info, der)
            self._ders[info.sha256] = der
            self.pending = True
            return
        self._store(info, None, lambda crl_id: _der_rows(crl_id, der))

    def _store(self, info: CrlInfo, der: bytes | None, rows: Any) -> bool:
        """Insert the CRL row (and its entries when `rows` is given); False if held.

        Race-free: the row goes in with INSERT … ON CONFLICT DO NOTHING (the sha256 and the
        (signer, scope, number) are unique), so two processes storing the same CRL at once
        both succeed and only one writes its entries.
        """
        fetched = datetime.now(UTC)
        with self._tx(write=True) as cur:
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
                info.issuer_name,
                info.scope,
            )
            cur.execute(
                self._sql(
                    "INSERT INTO crls (issuer_key, crl_number, this_update, next_update, source, "
                    "sha256, entries, fetched_at, der, indexed, issuer_name, scope) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING "
                    "RETURNING id"
                ),
                values,
            )
            row = cur.fetchone()
            if row is None:
                return False  # held already (or stored by another process just now)
            crl_id = row[0]
            # Older CRLs of this signer and lineage (scope; complete or delta) that have
            # expired are superseded by this one (CRLs are cumulative): drop them and their
            # entries so the tables do not grow daily.
            cur.execute(
                self._sql(
                    "SELECT id, scope FROM crls WHERE issuer_key = ? AND id != ? "
                    "AND next_update < ? AND this_update < ?"
                ),
                (info.issuer_key, crl_id, self._time(fetched), self._time(info.this_update)),
            )
            lineage = CrlScope.lineage(info.scope)
            stale_ids = [i for i, scope in cur.fetchall() if CrlScope.lineage(scope) == lineage]
            for stale in stale_ids:
                cur.execute(self._sql("DELETE FROM revoked_serials WHERE crl_id = ?"), (stale,))
                cur.execute(self._sql("DELETE FROM crls WHERE id = ?"), (stale,))
            if rows is not None:
                self._insert_rows(cur, rows(crl_id))
        return True

    def _insert_rows(self, cur: Any, rows: Iterable[tuple[Any, ...]]) -> None:
        sql = self._sql(
            "INSERT INTO revoked_serials (crl_id, serial, revoked_at, reason, cert_issuer) "
            "VALUES (?, ?, ?, ?, ?)"
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
                self._insert_rows(cur, _der_rows(crl_id, der))
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

    def crls_named(self, issuer_name: str) -> list[CrlInfo]:
        with self._tx() as cur:
            cur.execute(
                self._sql(f"SELECT {_CRL_COLUMNS} FROM crls WHERE issuer_name = ?"),
                (issuer_name,),
            )
            held = [self._crl_info(r) for r in cur.fetchall()]
        held = [i for i in held if i.sha256 not in self._deferred]
        return held + [i for i, _ in self._deferred.values() if i.issuer_name == issuer_name]

    def crl_entries(self, crl_sha256s: Sequence[str], serial: int) -> list[RevokedEntry]:
        from idm.validator.revocation.crlder import REASON_NAMES, parse_time_text, serial_bytes

        if not crl_sha256s:
            return []
        found: list[RevokedEntry] = []
        marks = ", ".join("?" for _ in crl_sha256s)
        with self._tx() as cur:
            cur.execute(
                self._sql(
                    "SELECT c.sha256, r.revoked_at, r.reason, r.cert_issuer FROM crls c "
                    f"JOIN revoked_serials r ON r.crl_id = c.id WHERE c.sha256 IN ({marks}) "
                    "AND r.serial = ?"
                ),
                (*crl_sha256s, serial_bytes(serial)),
            )
            for sha, when, reason, cert_issuer in cur.fetchall():
                name = None if reason is None else REASON_NAMES.get(reason, "unspecified")
                found.append(RevokedEntry(sha, serial, parse_time_text(when), name, cert_issuer))
            cur.execute(
                self._sql(f"SELECT sha256 FROM crls WHERE sha256 IN ({marks}) AND indexed = ?"),
                (*crl_sha256s, False),
            )
            unindexed = [row[0] for row in cur.fetchall()]
            unindexed += [sha for sha in crl_sha256s if sha in self._deferred]
            indexed = {e.crl_sha256 for e in found}
            for sha in dict.fromkeys(unindexed):
                if sha in indexed:
                    continue  # indexed since this store kept it in memory
                der = self._ders.get(sha)
                if der is None:
                    cur.execute(self._sql("SELECT der FROM crls WHERE sha256 = ?"), (sha,))
                    row = cur.fetchone()
                    if row is None or row[0] is None:
                        continue  # indexed meanwhile: the query above saw it
                    der = bytes(row[0])
                from idm.validator.revocation.crl import lookup_der  # needs cryptography

                hit = lookup_der(der, serial)
                if hit is not None:
                    when, reason = hit
                    found.append(RevokedEntry(sha, serial, when, reason))  # type: ignore[arg-type]
        return found

    # -- OCSP -------------------------------------------------------------------------------

    def store_ocsp(self, record: OcspRecord) -> None:
        values = (
            record.issuer_key,
            _hex(record.serial),
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
        # One statement, race-free: a newer response replaces the held one, an older one
        # changes nothing.
        with self._tx(write=True) as cur:
            cur.execute(
                self._sql(
                    "INSERT INTO ocsp_responses (issuer_key, serial, status, revoked_at, reason, "
                    "this_update, next_update, produced_at, url, der, fetched_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (issuer_key, serial) DO UPDATE SET status = excluded.status, "
                    "revoked_at = excluded.revoked_at, reason = excluded.reason, "
                    "this_update = excluded.this_update, next_update = excluded.next_update, "
                    "produced_at = excluded.produced_at, url = excluded.url, der = excluded.der, "
                    "fetched_at = excluded.fetched_at "
                    "WHERE excluded.this_update >= ocsp_responses.this_update"
                ),
                values,
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
    #
    # A remembered path is a claim that a certificate chains to an anchor; anyone who can
    # write the inventory (in a fleet, every enrolling client) could plant one. So each
    # record carries an HMAC under a key private to this user on this machine
    # (`path_cache_key`), and a record without a valid one is ignored: the path is then
    # simply validated again (and re-saved under this user's key).

    def _mac(self, key: str, record: str) -> str | None:
        secret = path_cache_key()
        if secret is None:
            return None
        return hmac.new(secret, f"{key}\n{record}".encode(), hashlib.sha256).hexdigest()

    def load_path(self, key: str, at: datetime) -> str | None:
        with self._tx() as cur:
            cur.execute(
                self._sql(
                    "SELECT record, mac FROM validated_paths WHERE key = ? AND valid_from <= ? "
                    "AND valid_until >= ?"
                ),
                (key, self._time(at), self._time(at)),
            )
            row = cur.fetchone()
        if row is None:
            return None
        record, mac = row
        expected = self._mac(key, record)
        if expected is None or not mac or not hmac.compare_digest(expected, mac):
            return None
        return str(record)

    def save_path(self, key: str, valid_from: datetime, valid_until: datetime, record: str) -> None:
        mac = self._mac(key, record)
        if mac is None:
            return  # no private key to vouch for it: remember nothing
        now = datetime.now(UTC)
        with self._tx(write=True) as cur:
            # Expired paths are of no further use (a validation "at" a past time then
            # simply validates again).
            cur.execute(
                self._sql("DELETE FROM validated_paths WHERE valid_until < ?"), (self._time(now),)
            )
            cur.execute(
                self._sql(
                    "INSERT INTO validated_paths (key, valid_from, valid_until, record, mac, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
                    "valid_from = excluded.valid_from, valid_until = excluded.valid_until, "
                    "record = excluded.record, mac = excluded.mac, created_at = excluded.created_at"
                ),
                (key, self._time(valid_from), self._time(valid_until), record, mac,
                 self._time(now)),
            )


_PATH_KEY: list[bytes | None] = []


def path_cache_key() -> bytes | None:
    """This user's secret for the path cache's HMACs, created on first use (0600, in the
    data folder, ``path-cache.key``); None when it can be neither read nor created (the
    path cache is then not used)."""
    if _PATH_KEY:
        return _PATH_KEY[0]
    from idm.identity.config import default_data_dir

    path = default_data_dir() / "path-cache.key"
    secret: bytes | None = None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077:
                data = f.read(64)
                secret = data if len(data) == 32 else None
    except FileNotFoundError:
        secret = secrets.token_bytes(32)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secret)
        except FileExistsError:
            _PATH_KEY.clear()
            return path_cache_key()  # another process made it first: use theirs
        except OSError:
            secret = None
    except OSError:
        secret = None
    _PATH_KEY[:] = [secret]
    return secret


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
    d = dataclasses.asdict(info)
    d["this_update"] = info.this_update.isoformat()
    d["next_update"] = info.next_update.isoformat() if info.next_update else None
    return d


def _info_from_json(d: dict[str, Any]) -> CrlInfo:
    d = dict(d)
    d["this_update"] = datetime.fromisoformat(d["this_update"])
    d["next_update"] = datetime.fromisoformat(d["next_update"]) if d["next_update"] else None
    return CrlInfo(**d)


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
