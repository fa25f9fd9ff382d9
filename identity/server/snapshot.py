"""The login-time snapshot: what ``idm refresh`` decided, in a form sshd's helper reads fast.

Standard library only (and idm's stdlib-only file reader): ``idm authorized-keys``
imports this at every login attempt.

The snapshot is a small SQLite file. ``idm refresh`` writes it to a temporary file in the
same folder and renames it over the old one, so a reader sees either the old or the new
snapshot, never a mix; readers open it read-only and ``immutable`` (no locks, no journal
files, nothing to write in a root-owned folder). Tables:

``meta``
    ``format`` (``idm-snapshot-2``), ``written_at`` and ``deadline`` (Unix seconds, UTC),
    ``source`` (the inventory it came from, password hidden), ``entries``.
``keys``
    One row per (plain SSH key, user): ``digest`` (SHA-256 of the plain key blob, the
    index), ``username``, ``key_type``, ``valid_until`` (Unix seconds: the earliest of the
    certificate's notAfter, its verdict's freshness and the snapshot deadline),
    ``certificate`` (SHA-256 hex), ``subject``, ``rule`` (which mapping rule matched),
    ``line`` (the complete authorized_keys line of the plain key, formatted at refresh
    time) and ``x509_line`` (the same for PKIX-SSH's sshd: the certificate under its
    X.509 key type, ``x509v3-sign-rsa`` / ``x509v3-ecdsa-sha2-*`` and base64 DER; empty
    for a key type PKIX-SSH has no such line for).
``denied``
    Certificates that must never authorize anything (revoked, superseded, rejected,
    expired): ``certificate``, ``digest``, ``status``, ``reason``. Used for the log line
    on a refused login and by the X.509 path.
``principals``
    The explicit authorizations (``idm allow``) at refresh time, for the X.509 path, so
    it needs no database at login.

A snapshot past its ``deadline`` is stale and authorizes nothing. The deadline is
``written_at + [server] snapshot_lifetime``; each entry also carries its own
``valid_until``, so one certificate whose revocation status runs out early is refused on
its own without making the whole snapshot stale.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from collections import namedtuple
from collections.abc import Iterable, Iterator
from pathlib import Path  # already imported by the interpreter's site; costs nothing here

from idm.identity.display import printable

try:  # the builtin SHA-256: importing hashlib loads OpenSSL, ~3 ms at every login attempt
    from _sha2 import sha256 as _sha256  # type: ignore[import-not-found]  # Python >= 3.12
except ImportError:
    try:
        from _sha256 import sha256 as _sha256  # type: ignore[import-not-found,no-redef]
    except ImportError:
        from hashlib import sha256 as _sha256  # type: ignore[assignment]

from idm.validator.inputfile import InputFileError, open_regular_file

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs every login ~3 ms
if TYPE_CHECKING:
    from idm.validator.inputfile import FileCheck

# -2 added keys.x509_line; a -1 file is refused as corrupt until `idm refresh` rewrites it.
FORMAT = "idm-snapshot-2"
# A snapshot whose written_at is further ahead of the reader's clock than this is refused.
MAX_CLOCK_SKEW = 300

_SCHEMA = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE keys (
    digest BLOB NOT NULL,
    username TEXT NOT NULL,
    key_type TEXT NOT NULL,
    valid_until INTEGER NOT NULL,
    certificate TEXT NOT NULL,
    subject TEXT NOT NULL,
    rule TEXT NOT NULL,
    line TEXT NOT NULL,
    x509_line TEXT NOT NULL
);
CREATE TABLE denied (
    certificate TEXT PRIMARY KEY,
    digest BLOB NOT NULL,
    status TEXT NOT NULL,
    reason TEXT
) WITHOUT ROWID;
CREATE TABLE principals (username TEXT NOT NULL, kind TEXT NOT NULL, value TEXT NOT NULL);
"""
_INDEXES = """
CREATE INDEX keys_digest ON keys (digest);
CREATE INDEX keys_username ON keys (username);
CREATE INDEX denied_digest ON denied (digest);
"""


class SnapshotError(Exception):
    """The snapshot is missing, unreadable, corrupt or stale (one-line reason)."""


def comment_for(sha256: str, subject: str) -> str:
    """The authorized_keys comment naming a certificate (printable characters only)."""
    return printable(f"idm:{sha256[:16]} {subject}")


def expiry_epoch(*times: object) -> int:
    """The earliest of the given aware datetimes (None ignored), as Unix seconds."""
    return int(min(t.timestamp() for t in times if t is not None))  # type: ignore[attr-defined]


def key_digest(blob: bytes) -> bytes:
    """The index of a plain SSH key blob in the snapshot: SHA-256 of its bytes."""
    return _sha256(blob).digest()


# Named tuples, not dataclasses: importing `dataclasses` (and `inspect` with it) would
# add ~13 ms to every login attempt.
KeyEntry = namedtuple(
    "KeyEntry",
    "digest username key_type valid_until certificate subject rule line x509_line",
    defaults=("",),  # no PKIX-SSH line (a plain key, or a key type without one)
)
KeyEntry.__doc__ = "One authorized (key, user) pair; see the module docstring for the fields."
DeniedEntry = namedtuple("DeniedEntry", "certificate digest status reason")
DeniedEntry.__doc__ = "A certificate that authorizes nothing (status and reason)."
SnapshotInfo = namedtuple("SnapshotInfo", "path written_at deadline source entries")
SnapshotInfo.__doc__ = "What a snapshot says about itself (times in Unix seconds)."


def write_snapshot(
    path: str | os.PathLike[str],
    entries: Iterable[KeyEntry],
    denied: Iterable[DeniedEntry] = (),
    principals: Iterable[tuple[str, str, str]] = (),
    *,
    written_at: int,
    deadline: int,
    source: str = "",
) -> SnapshotInfo:
    """Write a new snapshot atomically (temporary file in the same folder, then rename).

    The file is made readable by everyone (0644): it holds public keys and names only, and
    sshd's AuthorizedKeysCommandUser must read it.
    """
    import contextlib
    import tempfile

    target = Path(path)
    folder = target.parent  # must exist: see idm.identity.outputpath
    # The writer's pid in the name lets a later refresh tell a dead writer's leftover from
    # a file being written (remove_stale_temp_files).
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp",
                                    dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            # Nothing reads the temporary file: no journal, and one fsync at the end.
            conn.execute("PRAGMA journal_mode=OFF")
            conn.execute("PRAGMA synchronous=OFF")
            conn.execute("BEGIN")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            count = 0

            def rows() -> Iterator[tuple[object, ...]]:
                nonlocal count
                for e in entries:
                    count += 1
                    yield (e.digest, e.username, e.key_type, int(e.valid_until),
                           e.certificate, e.subject, e.rule, e.line, e.x509_line)

            conn.executemany("INSERT INTO keys VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows())
            conn.executemany(
                "INSERT OR REPLACE INTO denied VALUES (?, ?, ?, ?)",
                ((d.certificate, d.digest, d.status, d.reason) for d in denied),
            )
            conn.executemany("INSERT INTO principals VALUES (?, ?, ?)", principals)
            for statement in _INDEXES.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [
                    ("format", FORMAT),
                    ("written_at", str(int(written_at))),
                    ("deadline", str(int(deadline))),
                    ("source", source),
                    ("entries", str(count)),
                ],
            )
            conn.execute("COMMIT")
        finally:
            conn.close()
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return SnapshotInfo(target, int(written_at), int(deadline), source, count)


# A temporary snapshot file untouched for this long has no live writer (a writer changes it
# continuously until it renames it).
STALE_TEMP_SECONDS = 60


def remove_stale_temp_files(path: str | os.PathLike[str], *, now: float | None = None) -> int:
    """Remove the temporary files `write_snapshot` left next to ``path`` when it was killed
    before its rename: those named ``.NAME.PID.*.tmp`` whose writer PID is gone, and any
    ``.NAME.*.tmp`` unchanged for `STALE_TEMP_SECONDS`. Returns how many were removed.

    Only names `write_snapshot` makes match: ``.NAME.`` followed by a PID (absent in
    files of versions before it was added) and mkstemp's 8 random characters, which hold
    no dot, so the files of a sibling snapshot ``NAME.x`` (``.NAME.x.PID.XXXXXXXX.tmp``,
    under its own lock) never do."""
    import re  # here, not at the top: the helper imports this module at every login

    target = Path(path)
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(?:(\d+)\.)?[a-z0-9_]{{8}}\.tmp")
    moment = time.time() if now is None else now
    removed = 0
    try:
        found = [(n, m.group(1)) for n in os.listdir(target.parent)
                 if (m := pattern.fullmatch(n))]
    except OSError:
        return 0
    for name, pid in found:
        tmp = target.parent / name
        try:
            st = os.lstat(tmp)
            if not stat.S_ISREG(st.st_mode):
                continue
            writer_gone = pid is not None and not _alive(int(pid))
            if writer_gone or moment - st.st_mtime > STALE_TEMP_SECONDS:
                os.unlink(tmp)
                removed += 1
        except OSError:
            continue  # renamed or removed meanwhile by its writer
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


class Snapshot:
    """A snapshot opened for reading; checks format and completeness on open.

    ``check`` (the helper's StrictModes rules) is called with the path and the stat of
    the opened file before SQLite reads it; a FIFO, device or folder is refused without
    blocking."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        now: float | None = None,
        check: FileCheck | None = None,
    ) -> None:
        self.path = Path(path)
        self.now = time.time() if now is None else now
        # The file may be replaced (renamed over) while we open it: the size we compare
        # must be that of the file SQLite opened, so stat before and after and retry if
        # the path changed its inode in between.
        for _attempt in range(5):
            before = self._stat(check)
            try:
                # immutable=1: the file is never changed in place (it is replaced by
                # rename), so SQLite needs no locks and no -journal/-wal files next to it.
                self._conn = sqlite3.connect(
                    f"file:{_uri_path(self.path)}?mode=ro&immutable=1", uri=True
                )
            except sqlite3.Error as exc:
                raise SnapshotError(f"snapshot {self.path} is unreadable: {exc}") from None
            try:
                page_size = self._conn.execute("PRAGMA page_size").fetchone()[0]
                pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
                meta = dict(self._conn.execute("SELECT name, value FROM meta").fetchall())
            except sqlite3.Error as exc:
                self._conn.close()
                if self._replaced(before):
                    continue
                raise SnapshotError(f"snapshot {self.path} is corrupt: {exc}") from None
            if self._replaced(before):
                self._conn.close()
                continue
            if pages * page_size != before.st_size:
                self._conn.close()
                raise SnapshotError(
                    f"snapshot {self.path} is corrupt (size {before.st_size} does not match "
                    f"its {pages} pages)"
                )
            break
        else:
            raise SnapshotError(f"snapshot {self.path} kept changing while it was opened")
        if meta.get("format") != FORMAT:
            self._conn.close()
            raise SnapshotError(f"snapshot {self.path} is corrupt: not an {FORMAT} file")
        try:
            self.info = SnapshotInfo(
                self.path,
                int(meta["written_at"]),
                int(meta["deadline"]),
                meta.get("source", ""),
                int(meta.get("entries", "0")),
            )
        except (KeyError, ValueError):
            self._conn.close()
            raise SnapshotError(f"snapshot {self.path} is corrupt: bad meta data") from None

    def _stat(self, check: FileCheck | None) -> os.stat_result:
        """The stat of the file at the path, opened without blocking (regular files only)."""
        try:
            fd, st = open_regular_file(self.path, "", check)
        except InputFileError as exc:
            if exc.missing:
                raise SnapshotError(
                    f"snapshot {self.path} is missing (run `idm refresh`)"
                ) from None
            raise SnapshotError(f"snapshot {exc}") from None
        os.close(fd)
        return st

    def _replaced(self, before: os.stat_result) -> bool:
        try:
            after = os.stat(self.path)
        except OSError:
            return True
        return (after.st_ino, after.st_dev) != (before.st_ino, before.st_dev)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_fresh(self) -> None:
        """Raise SnapshotError when the snapshot is past its deadline, or was written
        more than `MAX_CLOCK_SKEW` seconds in the future (a refresh run with a clock
        ahead would otherwise stretch its lines' lifetime by as much)."""
        if self.info.written_at > self.now + MAX_CLOCK_SKEW:
            raise SnapshotError(
                f"snapshot {self.path} was written in the future ({_utc(self.info.written_at)},"
                f" now {_utc(int(self.now))}): was `idm refresh` run with a clock ahead?"
            )
        if self.now >= self.info.deadline:
            raise SnapshotError(
                f"snapshot {self.path} is stale: written {_utc(self.info.written_at)}, "
                f"deadline {_utc(self.info.deadline)} has passed (is `idm refresh` running?)"
            )

    def _query(self, sql: str, args: tuple[object, ...]) -> list[tuple[object, ...]]:
        try:
            return self._conn.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise SnapshotError(f"snapshot {self.path} is corrupt: {exc}") from None

    def keys_for_digest(self, digest: bytes) -> list[KeyEntry]:
        """Every (user, certificate) entry of this key, fresh or not."""
        rows = self._query("SELECT * FROM keys WHERE digest = ?", (digest,))
        return [KeyEntry(*r) for r in rows]  # type: ignore[arg-type]

    def keys_for_user(self, username: str) -> list[KeyEntry]:
        """Every entry mapped to ``username``, fresh or not."""
        rows = self._query("SELECT * FROM keys WHERE username = ?", (username,))
        return [KeyEntry(*r) for r in rows]  # type: ignore[arg-type]

    def denied_for_digest(self, digest: bytes) -> list[DeniedEntry]:
        """Denied certificates holding this key."""
        rows = self._query("SELECT * FROM denied WHERE digest = ?", (digest,))
        return [DeniedEntry(*r) for r in rows]  # type: ignore[arg-type]

    def denied_certificate(self, sha256: str) -> DeniedEntry | None:
        """The denial of one certificate (by SHA-256 hex), or None."""
        rows = self._query("SELECT * FROM denied WHERE certificate = ?", (sha256,))
        return DeniedEntry(*rows[0]) if rows else None  # type: ignore[arg-type]

    def principals(self) -> list[tuple[str, str, str]]:
        """The explicit authorizations (username, kind, value) at refresh time."""
        return [
            (str(u), str(k), str(v))
            for u, k, v in self._query("SELECT username, kind, value FROM principals", ())
        ]

    def all_keys(self) -> list[KeyEntry]:
        """Every entry (for tests and diagnostics)."""
        return [KeyEntry(*r) for r in self._query("SELECT * FROM keys", ())]  # type: ignore[arg-type]


def inspect_snapshot(
    path: str | os.PathLike[str], *, now: float | None = None, check: FileCheck | None = None
) -> tuple[SnapshotInfo, str | None]:
    """What a snapshot says about itself, for reports (`idm status`, `idm doctor`): its
    info and why it is not fresh (`Snapshot.check_fresh`'s message), or None when it is.
    SnapshotError when it cannot be opened."""
    with Snapshot(path, now=now, check=check) as snap:
        try:
            snap.check_fresh()
        except SnapshotError as exc:
            return snap.info, str(exc)
        return snap.info, None


def _uri_path(path: Path) -> str:
    # Only these three characters are special in an SQLite file: URI path.
    text = str(path.absolute())
    return text.replace("%", "%25").replace("?", "%3f").replace("#", "%23")


def _utc(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
