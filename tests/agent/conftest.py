"""Fixtures for the agent tests: an `idm agent` process, an askpass script, ssh-add."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.sshd import sshd_factory  # noqa: F401  (fixture re-export)

SSH_ADD = shutil.which("ssh-add")
SSH_KEYGEN = shutil.which("ssh-keygen")

SETPRIV = shutil.which("setpriv")
NOBODY = 65534
# Run a command as the unprivileged user `nobody` (tests run as root).
AS_NOBODY = [SETPRIV or "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]

needs_openssh = pytest.mark.skipif(
    SSH_ADD is None or SSH_KEYGEN is None, reason="OpenSSH client tools not installed"
)

# Run the click command directly, so the tests do not depend on its registration in main.
AGENT_CMD = [
    sys.executable, "-c",
    "import sys; from idm.cli.agent import agent; agent.main(sys.argv[1:], prog_name='idm agent')",
]

GUARD_SECONDS = 30.0  # guards against hangs only

ASKPASS = """#!/bin/sh
# Test askpass: records each prompt; confirms if $DIR/allow exists; else prints the passphrase.
DIR={dir}
printf '%s|%s\\n' "$SSH_ASKPASS_PROMPT" "$1" >> "$DIR/askpass.log"
if [ "$SSH_ASKPASS_PROMPT" = confirm ]; then
    [ -e "$DIR/allow" ] && exit 0
    exit 1
fi
cat "$DIR/passphrase"
"""


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A private folder with a short path (UNIX socket paths are limited to 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="idm-t-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class Askpass:
    """The test askpass program and its switches."""

    dir: Path
    program: Path

    def allow(self, yes: bool) -> None:
        flag = self.dir / "allow"
        if yes:
            flag.touch()
        else:
            flag.unlink(missing_ok=True)

    def set_passphrase(self, text: str) -> None:
        (self.dir / "passphrase").write_text(text + "\n")

    def prompts(self) -> list[str]:
        log = self.dir / "askpass.log"
        return log.read_text().splitlines() if log.exists() else []


@pytest.fixture
def askpass(short_dir: Path) -> Askpass:
    d = short_dir / "askpass"
    d.mkdir()
    prog = d / "askpass.sh"
    prog.write_text(ASKPASS.format(dir=d))
    prog.chmod(0o755)
    a = Askpass(d, prog)
    a.set_passphrase("")
    return a


@dataclass
class IdmAgent:
    """A running `idm agent` process (foreground) and how to talk to it."""

    sock: Path
    pid: int
    proc: subprocess.Popen[bytes]
    stderr_path: Path
    stdout_lines: list[str]
    askpass: Askpass | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ, SSH_AUTH_SOCK=str(self.sock), **extra)
        env.pop("DISPLAY", None)
        return env

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def ssh_add(self, *args: str, env: dict[str, str] | None = None,
                user_prefix: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
        assert SSH_ADD is not None
        return subprocess.run(
            [*user_prefix, SSH_ADD, *args], env=env or self.env(), capture_output=True,
            text=True, timeout=GUARD_SECONDS, stdin=subprocess.DEVNULL, check=False,
        )

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=GUARD_SECONDS)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_agent(
    workdir: Path, args: Sequence[str] = (), env: dict[str, str] | None = None,
    askpass: Askpass | None = None, sock: Path | None = None, prefix: Sequence[str] = (),
) -> IdmAgent:
    """Start `idm agent -d -a SOCK ARGS` and wait until it printed its variables.

    ``prefix`` runs it through another program (e.g. setpriv as another user).
    """
    sock = sock or workdir / "agent.sock"
    full_env = dict(env or os.environ)
    if askpass is not None:
        full_env["SSH_ASKPASS"] = str(askpass.program)
    stderr_path = workdir / "agent.stderr"
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen([*prefix, *AGENT_CMD, "-d", "-a", str(sock), *args],
                                env=full_env, stdout=subprocess.PIPE, stderr=err,
                                stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + GUARD_SECONDS
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode()
        if not line:
            proc.wait()
            raise AssertionError(f"idm agent exited: {stderr_path.read_text()}")
        lines.append(line.rstrip("\n"))
        if line.startswith("echo Agent pid"):
            break
    pid = int(lines[-1].split()[-1].rstrip(";"))
    return IdmAgent(sock, pid, proc, stderr_path, lines, askpass)


@pytest.fixture
def idm_agent(short_dir: Path, askpass: Askpass) -> Iterator[IdmAgent]:
    """`idm agent -d` on a private socket, with the test askpass for confirmations."""
    agent = start_agent(short_dir, askpass=askpass)
    try:
        yield agent
    finally:
        agent.stop()


def make_key(directory: Path, kind: str, name: str | None = None) -> Path:
    """An unencrypted OpenSSH private key made by ssh-keygen; returns its path."""
    assert SSH_KEYGEN is not None
    args = {
        "rsa": ["-t", "rsa", "-b", "2048"], "ecdsa": ["-t", "ecdsa", "-b", "256"],
        "ecdsa384": ["-t", "ecdsa", "-b", "384"], "ed25519": ["-t", "ed25519"],
    }[kind]
    path = directory / (name or f"id_{kind}")
    subprocess.run([SSH_KEYGEN, "-q", *args, "-N", "", "-C", f"{kind}-test", "-f", str(path)],
                   check=True)
    return path


# The SoftHSM card world (imported last: tokenworld uses this module's types).
from tests.agent.tokenworld import agents, ca, world  # noqa: E402, F401  (fixture re-export)
from tests.softhsm import softhsm  # noqa: E402, F401  (fixture re-export)
