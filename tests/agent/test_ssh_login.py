"""Real logins through `idm agent`: OpenSSH ssh and asyncssh against a private OpenSSH sshd."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
from collections.abc import Callable
from pathlib import Path

import asyncssh
import pytest

from idm.identity import sshwire as w
from tests.agent.conftest import GUARD_SECONDS, IdmAgent, make_key, needs_openssh
from tests.sshd import SshdServer

pytestmark = [needs_openssh, pytest.mark.sshd]

SshdFactory = Callable[..., SshdServer]


def _pub(key: Path) -> w.KeyBlob:
    return w.parse_public_key_line(key.with_suffix(".pub").read_text()).key


def _ssh(sshd: SshdServer, agent: IdmAgent, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        sshd.ssh_command("echo", "logged-in", agent=agent.sock, options=options),
        capture_output=True, text=True, timeout=GUARD_SECONDS, stdin=subprocess.DEVNULL,
        env=agent.env(),
    )


@pytest.mark.parametrize(("kind", "algorithms", "flags"), [
    ("rsa", "rsa-sha2-256", "flags 0x2"),
    ("rsa", "rsa-sha2-512", "flags 0x4"),
    ("ecdsa", "ecdsa-sha2-nistp256", "flags 0x0"),
    ("ed25519", "ssh-ed25519", "flags 0x0"),
])
def test_openssh_login_with_agent_key(idm_agent: IdmAgent, short_dir: Path,
                                      sshd_factory: SshdFactory, kind: str, algorithms: str,
                                      flags: str) -> None:
    key = make_key(short_dir, kind)
    blob = _pub(key)
    sshd = sshd_factory(w.authorized_keys_line(blob, "agent-key") + "\n")
    # not in the agent yet: the login fails
    assert _ssh(sshd, idm_agent).returncode != 0
    assert idm_agent.ssh_add(str(key)).returncode == 0
    r = _ssh(sshd, idm_agent, f"PubkeyAcceptedAlgorithms={algorithms}")
    assert r.returncode == 0, r.stderr + sshd.log_text()[-3000:]
    assert r.stdout.strip() == "logged-in"
    assert f"Accepted publickey for {sshd.user}" in sshd.log_text()
    assert blob.fingerprint in sshd.log_text()
    log = idm_agent.log()
    assert flags in log
    # ssh bound the agent connection to the server's host key (session-bind@openssh.com)
    host = w.parse_public_key_line((sshd.workdir / "ssh_host_ed25519_key.pub").read_text())
    assert f"bound to host key {host.key.fingerprint}" in log


def test_expiry_time_option_is_honoured_by_sshd(idm_agent: IdmAgent, short_dir: Path,
                                                sshd_factory: SshdFactory) -> None:
    key = make_key(short_dir, "ecdsa")
    assert idm_agent.ssh_add(str(key)).returncode == 0
    blob = _pub(key)
    past = w.expiry_time_option(dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    sshd = sshd_factory(w.authorized_keys_line(blob, "expired", [past]) + "\n")
    assert _ssh(sshd, idm_agent).returncode != 0
    assert "expired" in sshd.log_text()
    future = w.expiry_time_option(dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    sshd.authorized_keys.write_text(w.authorized_keys_line(blob, "fresh", [future]) + "\n")
    r = _ssh(sshd, idm_agent)
    assert r.returncode == 0, r.stderr


def test_asyncssh_client_logs_in_through_agent(idm_agent: IdmAgent, short_dir: Path,
                                               sshd_factory: SshdFactory) -> None:
    key = make_key(short_dir, "rsa")
    blob = _pub(key)
    sshd = sshd_factory(w.authorized_keys_line(blob) + "\n")
    assert idm_agent.ssh_add(str(key)).returncode == 0

    async def login() -> str:
        async with asyncssh.connect(
            "127.0.0.1", sshd.port, username=sshd.user, known_hosts=str(sshd.known_hosts),
            agent_path=str(idm_agent.sock), config=[],
            connect_timeout=GUARD_SECONDS,
        ) as conn:
            result = await conn.run("echo via-asyncssh", check=True)
            return str(result.stdout).strip()

    assert asyncio.run(login()) == "via-asyncssh"
    assert blob.fingerprint in sshd.log_text()
