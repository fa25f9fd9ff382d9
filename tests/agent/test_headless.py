"""The quickstart's `eval "$(idm agent)"` on a headless machine: no display, no askpass, no
syslog (/dev/log), no XDG_RUNTIME_DIR. The agent says once where its socket and its log
are; a refused signature's reason is in that log; `ssh-add -s` typed at the terminal gives
the card its PIN, and signing works from then on."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sample_ca_fixture import make_sample_ca, serving

from tests.server.helpers import idm, plain_pub_line, write_config
from tests.softhsm import SOFTHSM_MODULE, SoftHSM, SoftHSMToken
from tests.terminal import IDM, Terminal

pytestmark = pytest.mark.softhsm

# A ceiling so a broken agent fails the test instead of hanging it.
GUARD = 30.0


def without_syslog() -> list[str]:
    """A command prefix under which /dev/log does not answer (this machine may have one)."""
    if not os.path.exists("/dev/log"):
        return []
    if os.geteuid() != 0:
        pytest.skip("/dev/log exists here and hiding it (a private mount) needs root")
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount --bind /dev/null /dev/log && exec "$@"', "sh"]


@dataclass
class Headless:
    env: dict[str, str]
    token: SoftHSMToken
    pub: Path
    state: Path
    work: Path


@pytest.fixture
def headless(tmp_path: Path, softhsm: SoftHSM) -> Iterator[Headless]:
    ca = make_sample_ca(tmp_path)
    token = softhsm.init_token("kim-card")
    cert = ca.user("kim")
    softhsm.import_private_key(token, ca.user_key("kim"), key_id=b"\x01", label="kim")
    softhsm.import_certificate(token, cert, key_id=b"\x01", label="kim")
    config = write_config(tmp_path / "config.toml", ca=ca.ca_bundle, untrusted=ca.chain,
                          snapshot=tmp_path / "snapshot.sqlite",
                          db=f"sqlite:///{tmp_path / 'inventory.sqlite'}",
                          extra=f'[tokens]\nproviders = ["{SOFTHSM_MODULE}"]\n')
    pub = tmp_path / "kim.pub"
    pub.write_text(plain_pub_line(cert) + "\n")
    env = dict(softhsm.env, IDM_CONFIG=str(config), XDG_STATE_HOME=str(tmp_path / "state"))
    for var in ("XDG_RUNTIME_DIR", "DISPLAY", "WAYLAND_DISPLAY", "SSH_ASKPASS",
                "SSH_ASKPASS_REQUIRE", "SSH_AUTH_SOCK", "SSH_AGENT_PID"):
        env.pop(var, None)
    with serving(ca):
        assert "approved" in idm("enroll", "--token", token.uri_with_pin, config=config).stdout
        yield Headless(env, token, pub, tmp_path / "state" / "idm", tmp_path)


def sign(h: Headless) -> subprocess.CompletedProcess[str]:
    data = h.work / "data"
    data.write_text("headless\n")
    (h.work / "data.sig").unlink(missing_ok=True)
    return subprocess.run(["ssh-keygen", "-Y", "sign", "-n", "test", "-f", str(h.pub),
                           str(data)], env=h.env, capture_output=True, text=True,
                          timeout=GUARD, stdin=subprocess.DEVNULL, check=False)


def wait_for_identity(h: Headless) -> None:
    deadline = time.monotonic() + GUARD
    key = h.pub.read_text().split()[1]
    while key not in subprocess.run(["ssh-add", "-L"], env=h.env, capture_output=True,
                                    text=True, check=False).stdout:
        assert time.monotonic() < deadline, "the agent never offered the card's key"
        time.sleep(0.2)


def test_headless_agent_names_its_log_and_takes_the_pin_from_ssh_add(
    headless: Headless,
) -> None:
    h = headless
    started = subprocess.run([*without_syslog(), *IDM, "agent"], env=h.env,
                             capture_output=True, text=True, timeout=GUARD, check=False)
    assert started.returncode == 0, started.stderr
    sock = re.search(r"SSH_AUTH_SOCK=([^;]+);", started.stdout)
    pid = re.search(r"SSH_AGENT_PID=(\d+);", started.stdout)
    assert sock and pid, started.stdout
    h.env.update(SSH_AUTH_SOCK=sock.group(1), SSH_AGENT_PID=pid.group(1))
    try:
        log = h.state / "agent.log"
        # said once each, on the terminal it was started from; no library warning
        lines = sorted(started.stderr.splitlines())
        assert lines == sorted([
            f"idm agent: WARNING: no syslog (/dev/log): logging to {log}",
            "idm agent: WARNING: XDG_RUNTIME_DIR is not set: the socket is in the private "
            f"folder {Path(sock.group(1)).parent} (removed when the agent stops)",
        ]), started.stderr
        assert oct(log.stat().st_mode & 0o777) == "0o600"
        wait_for_identity(h)

        # No askpass, no terminal for the agent: the signature is refused, and why is logged.
        refused = sign(h)
        assert refused.returncode != 0
        assert "no PIN for card 'kim-card'" in log.read_text(), log.read_text()

        # ssh-add -s asks for the PIN on the terminal and hands it to the agent.
        with Terminal(["ssh-add", "-s", SOFTHSM_MODULE], env=h.env) as term:
            term.expect("Enter passphrase for PKCS#11:")
            term.send(h.token.pin.encode() + b"\n")
            assert term.wait() == 0, term.output
        assert h.token.pin not in log.read_text()
        signed = sign(h)
        assert signed.returncode == 0, signed.stderr + log.read_text()
        assert (h.work / "data.sig").exists()
    finally:
        subprocess.run([*IDM, "agent", "-k"], env=h.env, capture_output=True, check=False)
    deadline = time.monotonic() + GUARD
    while time.monotonic() < deadline:
        try:
            os.kill(int(pid.group(1)), 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(int(pid.group(1)), signal.SIGKILL)
        raise AssertionError("the agent did not stop")
    assert not Path(sock.group(1)).parent.exists()  # its private folder is removed


def test_foreground_agent_without_runtime_dir_says_so_once(headless: Headless) -> None:
    h = headless
    log_file = h.work / "explicit.log"
    proc = subprocess.Popen([*IDM, "agent", "-D", "--log-file", str(log_file)], env=h.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("SSH_AUTH_SOCK="), first
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=GUARD)
    assert err.count("XDG_RUNTIME_DIR is not set") == 1, err
    assert "RuntimeDirWarning" not in err and "platformdirs" not in err
    assert "listening on" in err  # -D logs to stderr, and to --log-file as well
    assert "listening on" in log_file.read_text()
