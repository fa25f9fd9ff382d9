"""`idm agent` as a process: shell output, detaching, -k, socket permissions, peer uid."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.agent.client import AgentClient
from tests.agent.conftest import (
    AGENT_CMD,
    AS_NOBODY,
    GUARD_SECONDS,
    NOBODY,
    SETPRIV,
    SSH_ADD,
    IdmAgent,
    needs_openssh,
)

# The other user needs an interpreter it may run (not one under root's home).
SYSTEM_PYTHON = next((c for c in ("/usr/bin/python3", "/usr/local/bin/python3")
                      if os.access(c, os.X_OK)), None)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _parse_shell(output: str) -> dict[str, str]:
    values = {}
    for line in output.splitlines():
        if "=" in line and line.endswith(";") and "export" in line:
            name, rest = line.split("=", 1)
            values[name] = rest.split(";", 1)[0]
    return values


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + GUARD_SECONDS
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"agent pid {pid} still running")


def test_foreground_output_and_socket_mode(idm_agent: IdmAgent) -> None:
    lines = idm_agent.stdout_lines
    assert lines == [
        f"SSH_AUTH_SOCK={idm_agent.sock}; export SSH_AUTH_SOCK;",
        f"SSH_AGENT_PID={idm_agent.proc.pid}; export SSH_AGENT_PID;",
        f"echo Agent pid {idm_agent.proc.pid};",
    ]
    assert stat.S_ISSOCK(idm_agent.sock.lstat().st_mode)
    assert _mode(idm_agent.sock) == 0o600


@needs_openssh
def test_detaches_with_default_socket_and_k_kills(tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime))
    out = subprocess.run(AGENT_CMD, env=env, capture_output=True, text=True,
                         timeout=GUARD_SECONDS, check=True).stdout
    values = _parse_shell(out)
    sock = Path(values["SSH_AUTH_SOCK"])
    pid = int(values["SSH_AGENT_PID"])
    assert f"echo Agent pid {pid};" in out
    try:
        assert sock == runtime / "idm" / "agent.sock"
        assert _mode(sock.parent) == 0o700 and _mode(sock) == 0o600
        assert pid != os.getpid()
        assert SSH_ADD is not None
        r = subprocess.run([SSH_ADD, "-l"], env=dict(env, SSH_AUTH_SOCK=str(sock)),
                           capture_output=True, text=True, timeout=GUARD_SECONDS)
        assert r.returncode == 1 and "no identities" in r.stdout
        killed = subprocess.run([*AGENT_CMD, "-k"], env=dict(env, SSH_AGENT_PID=str(pid)),
                                capture_output=True, text=True, timeout=GUARD_SECONDS)
        assert killed.returncode == 0, killed.stderr
        assert killed.stdout.splitlines() == [
            "unset SSH_AUTH_SOCK;", "unset SSH_AGENT_PID;", f"echo Agent pid {pid} killed;",
        ]
        _wait_gone(pid)
        assert not sock.exists()
    finally:
        try:
            os.kill(pid, 15)
        except ProcessLookupError:
            pass


def test_falls_back_to_private_temp_dir(tmp_path: Path) -> None:
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path / "does-not-exist"))
    out = subprocess.run(AGENT_CMD, env=env, capture_output=True, text=True,
                         timeout=GUARD_SECONDS, check=True).stdout
    values = _parse_shell(out)
    sock, pid = Path(values["SSH_AUTH_SOCK"]), int(values["SSH_AGENT_PID"])
    try:
        assert sock.parent.name.startswith("idm-agent-")
        assert sock.parent.parent == Path(os.environ.get("TMPDIR", "/tmp"))
        assert _mode(sock.parent) == 0o700 and _mode(sock) == 0o600
    finally:
        os.kill(pid, 15)
        _wait_gone(pid)
    assert not sock.parent.exists()  # the agent removes the folder it made


def test_k_without_pid_is_a_one_line_error() -> None:
    env = {k: v for k, v in os.environ.items() if k != "SSH_AGENT_PID"}
    r = subprocess.run([*AGENT_CMD, "-k"], env=env, capture_output=True, text=True,
                       timeout=GUARD_SECONDS)
    assert r.returncode == 2
    assert r.stderr.strip() == (
        "idm: error: SSH_AGENT_PID is not set to an agent's pid: cannot tell which to kill"
    )


def test_live_socket_is_not_stolen(idm_agent: IdmAgent) -> None:
    r = subprocess.run([*AGENT_CMD, "-D", "-a", str(idm_agent.sock)], capture_output=True,
                       text=True, timeout=GUARD_SECONDS)
    assert r.returncode == 2
    assert "already listening" in r.stderr
    with AgentClient(idm_agent.sock) as c:
        assert c.identities() == []


def test_bad_lifetime_is_rejected() -> None:
    r = subprocess.run([*AGENT_CMD, "-D", "-t", "soon"], capture_output=True, text=True,
                       timeout=GUARD_SECONDS)
    assert r.returncode == 2 and "invalid lifetime 'soon'" in r.stderr


@pytest.mark.skipif(os.geteuid() != 0 or SETPRIV is None or SYSTEM_PYTHON is None,
                    reason="needs root, setpriv and a system python3")
def test_other_uid_is_refused(idm_agent: IdmAgent) -> None:
    as_nobody = AS_NOBODY
    assert SYSTEM_PYTHON is not None
    probe = [SYSTEM_PYTHON, "-c", (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_UNIX)\n"
        "try:\n    s.connect(sys.argv[1])\nexcept OSError as e:\n"
        "    print('connect', e.errno); sys.exit(0)\n"
        "s.settimeout(20)\n"
        "try:\n    s.sendall(b'\\0\\0\\0\\x01\\x0b')\n    data = s.recv(100)\n"
        "except (BrokenPipeError, ConnectionResetError):\n    data = b''\n"
        "print('reply', len(data))\n"
    ), str(idm_agent.sock)]
    # 1. socket 0600 in a 0700 folder: the other user cannot even connect
    r = subprocess.run([*as_nobody, *probe], capture_output=True, text=True,
                       timeout=GUARD_SECONDS)
    assert r.stdout.startswith("connect 13"), (r.stdout, r.stderr)  # EACCES
    # 2. opened up by mistake: SO_PEERCRED still refuses the other uid
    os.chmod(idm_agent.sock.parent, 0o755)
    os.chmod(idm_agent.sock, 0o666)
    r = subprocess.run([*as_nobody, *probe], capture_output=True, text=True,
                       timeout=GUARD_SECONDS)
    assert r.stdout.strip() == "reply 0", (r.stdout, r.stderr)  # closed without an answer
    assert f"uid {NOBODY} is not the agent's user" in idm_agent.log()
    # and our own uid is still served
    with AgentClient(idm_agent.sock) as c:
        assert c.identities() == []


def test_stalled_client_does_not_block_others(idm_agent: IdmAgent) -> None:
    stalled = socket.socket(socket.AF_UNIX)
    stalled.connect(str(idm_agent.sock))
    stalled.sendall(b"\x00\x00\x00\x20\x0d")  # announces 32 bytes, sends 1
    try:
        for _ in range(3):
            with AgentClient(idm_agent.sock) as c:
                assert c.identities() == []
    finally:
        stalled.close()
