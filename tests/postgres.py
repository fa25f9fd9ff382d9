"""A throwaway PostgreSQL server for tests: initdb into a temporary folder, 127.0.0.1 only.

Usage (see tests/conftest.py): ``PostgresServer.start(tmpdir)`` → ``server.create_database()``
returns a SQLAlchemy URL of a fresh database; ``server.stop()`` when done. As root, the
server runs as the ``postgres`` user (PostgreSQL refuses to run as root).

When PostgreSQL cannot be found or started, ``PostgresUnavailable`` says why; the
fixtures skip with that reason, unless IDM_REQUIRE_POSTGRES=1 (CI), where they fail.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.ports import free_port


class PostgresUnavailable(Exception):
    pass


def _bindir() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for c in candidates:
        if os.path.exists(os.path.join(c, "initdb")):
            return Path(c)
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb) not found: apt-get install postgresql"
    )




@dataclass
class PostgresServer:
    datadir: Path
    port: int
    bindir: Path
    user: str | None
    _counter: itertools.count  # type: ignore[type-arg]

    @classmethod
    def start(cls, base: Path) -> PostgresServer:
        bindir = _bindir()
        run_as = None
        base.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable(
                    "running as root and there is no 'postgres' user"
                ) from None
            run_as = "postgres"
            os.chown(base, pw.pw_uid, pw.pw_gid)
            base.chmod(0o700)
        datadir = base / "data"
        sockdir = base / "sock"
        port = free_port()

        def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
            cmd = list(args)
            if run_as:
                cmd = [
                    "setpriv",
                    f"--reuid={run_as}",
                    f"--regid={run_as}",
                    "--init-groups",
                    "--reset-env",
                    *cmd,
                ]
            return subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout, cwd=str(base)
            )

        for step in (
            [
                str(bindir / "initdb"),
                "-D",
                str(datadir),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        ):
            r = run(*step)
            if r.returncode != 0:
                raise PostgresUnavailable(f"initdb failed: {r.stderr.strip()[-300:]}")
        if run_as:
            sockdir.mkdir()
            pw = pwd.getpwnam(run_as)
            os.chown(sockdir, pw.pw_uid, pw.pw_gid)
        else:
            sockdir.mkdir()
        r = run(
            str(bindir / "pg_ctl"),
            "-D",
            str(datadir),
            "-w",
            "-t",
            "60",
            "-l",
            str(base / "server.log"),
            "-o",
            f"-c listen_addresses=127.0.0.1 -p {port} -k {sockdir} -c fsync=off "
            "-c full_page_writes=off -c synchronous_commit=off -c max_connections=200",
            "start",
        )
        if r.returncode != 0:
            log = (
                (base / "server.log").read_text(errors="replace")[-500:]
                if (base / "server.log").exists()
                else ""
            )
            raise PostgresUnavailable(f"pg_ctl start failed: {r.stderr.strip()} {log}")
        return cls(datadir, port, bindir, run_as, itertools.count(1))

    def admin_url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "idm_test") -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = f"{prefix}_{os.getpid()}_{next(self._counter)}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(
                    f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                    autocommit=True,
                ) as conn:
                    conn.execute(f'CREATE DATABASE "{name}"')
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        return self.admin_url(name)

    def stop(self) -> None:
        cmd = [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "immediate", "stop"]
        if self.user:
            cmd = [
                "setpriv",
                f"--reuid={self.user}",
                f"--regid={self.user}",
                "--init-groups",
                "--reset-env",
                *cmd,
            ]
        subprocess.run(cmd, capture_output=True, timeout=60)
