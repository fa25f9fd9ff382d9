"""A private OpenSSH sshd for tests: own config, host key, pid file, port on 127.0.0.1.

Usage::

    with running_sshd(tmp_path, authorized_keys="ssh-ed25519 AAAA... me\\n") as sshd:
        subprocess.run(sshd.ssh_command("true", agent=sock), check=True)

or the ``sshd_factory`` fixture (import it into a conftest). ``extra_config`` adds
sshd_config lines (e.g. ``AuthorizedKeysCommand ...``); the login user is the one
running the tests. sshd needs an absolute path, root for privilege separation
(``/run/sshd``), and ``StrictModes no`` because test folders are not root-owned.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.ports import free_port

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
SSH = shutil.which("ssh")
SSH_KEYGEN = shutil.which("ssh-keygen")

# A guard against a wedged sshd, not a performance expectation.
STARTUP_GUARD_SECONDS = 20.0


# Debian's sshd is built with this privilege separation directory; the ssh service makes it
# (RuntimeDirectory=sshd), so on a machine where that service never ran it is missing.
PRIVSEP_DIR = Path("/run/sshd")


class SshdUnavailable(Exception):
    """sshd cannot be run here (not installed, not root, config rejected)."""


def ensure_privsep_dir() -> None:
    """Create sshd's privilege separation directory as sshd requires it (root-owned, 0755):
    without it sshd stops with "Missing privilege separation directory: /run/sshd"."""
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    os.chown(PRIVSEP_DIR, 0, 0)
    os.chmod(PRIVSEP_DIR, 0o755)


@dataclass
class SshdServer:
    """A running sshd and what a client needs to reach it."""

    workdir: Path
    port: int
    config: Path
    host_key: Path
    known_hosts: Path
    authorized_keys: Path
    log: Path
    proc: subprocess.Popen[bytes] = field(repr=False)
    user: str = field(default_factory=lambda: os.environ.get("USER") or "root")
    ssh: str | None = SSH  # the client that ssh_command runs (PKIX-SSH's for its sshd)

    def ssh_command(
        self, *remote: str, agent: str | os.PathLike[str] | None = None,
        options: Sequence[str] = (),
    ) -> list[str]:
        """A client command line for this server (no user config, batch mode)."""
        if self.ssh is None:
            raise SshdUnavailable("ssh client not installed")
        cmd = [
            self.ssh, "-F", "/dev/null", "-p", str(self.port),
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
            "-o", "PasswordAuthentication=no", "-o", "KbdInteractiveAuthentication=no",
            "-o", "IdentitiesOnly=no", "-o", "IdentityFile=/dev/null",
            "-o", "ConnectTimeout=10",
        ]
        if agent is not None:
            cmd += ["-o", f"IdentityAgent={agent}"]
        for opt in options:
            cmd += ["-o", opt]
        return [*cmd, f"{self.user}@127.0.0.1", *remote]

    def log_text(self) -> str:
        """What sshd logged so far (-e: its stderr)."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        """Terminate sshd and wait for it."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _wait_for_banner(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_GUARD_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SshdUnavailable(f"sshd exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                if s.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            time.sleep(0.05)
    raise SshdUnavailable(f"sshd did not answer on port {port}: {log.read_text()[-2000:]}")


def start_sshd(
    workdir: Path,
    authorized_keys: str = "",
    extra_config: Sequence[str] = (),
    log_level: str = "DEBUG1",
    sshd: str | os.PathLike[str] | None = SSHD,
    ssh: str | os.PathLike[str] | None = SSH,
) -> SshdServer:
    """Start sshd in ``workdir`` (absolute paths everywhere) and wait until it answers.

    ``sshd``/``ssh``: another build's server and client (PKIX-SSH: tests/pkixssh.py).
    """
    if sshd is None or SSH_KEYGEN is None:
        raise SshdUnavailable("OpenSSH sshd/ssh-keygen not installed")
    sshd = str(sshd)
    if os.geteuid() != 0:
        raise SshdUnavailable("sshd with privilege separation needs root")
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    ensure_privsep_dir()
    host_key = workdir / "ssh_host_ed25519_key"
    if not host_key.exists():
        subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "test-host",
                        "-f", str(host_key)], check=True)
    ak = workdir / "authorized_keys"
    ak.write_text(authorized_keys)
    port = free_port()
    config = workdir / "sshd_config"
    lines = [
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {host_key}",
        f"PidFile {workdir / 'sshd.pid'}",
        "UsePAM no",
        "StrictModes no",
        f"AuthorizedKeysFile {ak}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        f"LogLevel {log_level}",
        *extra_config,
    ]
    config.write_text("\n".join(lines) + "\n")
    check = subprocess.run([sshd, "-t", "-f", str(config)], capture_output=True, text=True)
    if check.returncode != 0:
        raise SshdUnavailable(f"sshd rejected the test config: {check.stderr.strip()}")
    known = workdir / "known_hosts"
    pub = (workdir / "ssh_host_ed25519_key.pub").read_text().split()
    known.write_text(f"[127.0.0.1]:{port} {pub[0]} {pub[1]}\n")
    log = workdir / "sshd.log"
    with open(log, "wb") as log_fh:
        proc = subprocess.Popen([sshd, "-f", str(config), "-D", "-e"],
                                stdout=log_fh, stderr=subprocess.STDOUT)
    server = SshdServer(workdir, port, config, host_key, known, ak, log, proc,
                        ssh=None if ssh is None else str(ssh))
    try:
        _wait_for_banner(port, proc, log)
    except BaseException:
        server.stop()
        raise
    return server


@contextlib.contextmanager
def running_sshd(
    workdir: Path, authorized_keys: str = "", extra_config: Sequence[str] = ()
) -> Iterator[SshdServer]:
    """Context manager around :func:`start_sshd`; skips the test if sshd cannot run."""
    try:
        server = start_sshd(workdir, authorized_keys, extra_config)
    except SshdUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sshd_factory(tmp_path: Path) -> Iterator[object]:
    """``sshd_factory(authorized_keys="", extra_config=())`` -> a started SshdServer."""
    servers: list[SshdServer] = []

    def make(authorized_keys: str = "", extra_config: Sequence[str] = ()) -> SshdServer:
        try:
            server = start_sshd(tmp_path / f"sshd{len(servers)}", authorized_keys, extra_config)
        except SshdUnavailable as exc:
            pytest.skip(str(exc))
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
