"""The agent under attack (issue 14, agent section): each test is one defence of
docs/security.md, against the real `idm agent` process, OpenSSH's ssh-add and SoftHSM2.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.x509.oid import NameOID

from idm.identity import sshwire as w
from idm.identity.agent import protocol as p
from idm.identity.display import printable
from tests.agent.client import AgentClient
from tests.agent.conftest import (
    AS_NOBODY,
    NOBODY,
    SETPRIV,
    SSH_ADD,
    IdmAgent,
    make_key,
    start_agent,
)
from tests.agent.tokenworld import GUARD, Agent, World

# ------------------------------------------------------------------ comments


def _hostile_certificate(world: World, tmp_path: Path) -> tuple[rsa.RSAPrivateKey, Path, str]:
    """A sample-ca certificate whose O= holds a newline and a whole ed25519 key line."""
    intruder = ed25519.Ed25519PrivateKey.generate().public_key()
    intruder_line = w.public_key_line(w.KeyBlob.plain(intruder)) + " intruder@evil"
    key = rsa.generate_private_key(65537, 2048)
    subject = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, "mallory"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"x\n{intruder_line}\n\x1b]0;owned\x07"),
    ])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    csr_path = tmp_path / "mallory.csr"
    csr_path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    cert_path = tmp_path / "mallory.pem"
    world.ca.run("issue", "--csr", csr_path, "--out", cert_path)
    issued = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert "\n" in issued.subject.rfc4514_string()  # the CA kept the newline
    return key, cert_path, intruder_line.split()[1]


@pytest.mark.softhsm
def test_hostile_subject_gives_one_ssh_add_line_per_identity(
    world: World, agents: Callable[..., Agent], tmp_path: Path,
) -> None:
    world.put("alice", b"\x01")
    key, cert_path, intruder_b64 = _hostile_certificate(world, tmp_path)
    world.hsm.import_private_key(world.card, key, key_id=b"\x02", label="mallory")
    world.hsm.import_certificate(world.card, cert_path, key_id=b"\x02", label="mallory")
    assert world.enroll() == ["approved", "approved"]
    agent = agents()
    agent.wait_for(lambda: len(agent.blobs()) == 4, "both identities (2 blobs each)")

    assert SSH_ADD is not None
    listed = subprocess.run([SSH_ADD, "-L"], env=agent.env(), capture_output=True, text=True,
                            timeout=GUARD, check=True).stdout
    lines = listed.splitlines()
    # two identities (OpenSSH prints the plain key of each; it skips the RFC 6187 blobs)
    assert len(lines) == 2, listed
    assert intruder_b64 not in [part for line in lines for part in line.split()[:2]]
    assert not any("\x1b" in line for line in lines)
    comments = [comment for _, comment in agent.listing()]
    assert all(c == printable(c) for c in comments)
    assert any("O=x?ssh-ed25519 " in c for c in comments), comments
    # the log names the certificate on one line too: no line starts with the key
    assert not any(line.startswith("ssh-ed25519") for line in agent.log().splitlines())


# ------------------------------------------------------------------ memory

# Looks for a byte string in another process's memory, as an attacker of the same uid
# would: /proc/PID/maps for the mapped ranges, /proc/PID/mem to read them.
MEMORY_READER = r"""
import json, sys
pid, needle = int(sys.argv[1]), bytes.fromhex(sys.argv[2])
try:
    mem = open(f"/proc/{pid}/mem", "rb", buffering=0)
except OSError as exc:
    print(json.dumps({"open_errno": exc.errno})); sys.exit(0)
found = read = 0
with mem, open(f"/proc/{pid}/maps") as maps:
    for line in maps:
        span, perms = line.split()[:2]
        if not perms.startswith("r"):
            continue
        start, end = (int(x, 16) for x in span.split("-"))
        for at in range(start, end, 1 << 22):
            try:
                mem.seek(at)
                chunk = mem.read(min(end - at, (1 << 22) + len(needle)))
            except OSError:
                break
            read += len(chunk)
            found += needle in chunk
print(json.dumps({"found": found, "read": read}))
"""


def _read_memory(pid: int, needle: bytes, prefix: list[str]) -> dict[str, int]:
    proc = subprocess.run([*prefix, sys.executable, "-c", MEMORY_READER, str(pid), needle.hex()],
                          capture_output=True, text=True, timeout=GUARD, check=False)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def _nobody_can_run_python() -> bool:
    if os.geteuid() != 0 or SETPRIV is None:
        return False
    probe = subprocess.run([*AS_NOBODY, sys.executable, "-c", "import idm.identity.agent.server"],
                           capture_output=True, timeout=GUARD, check=False)
    return probe.returncode == 0


@pytest.mark.skipif(not _nobody_can_run_python(),
                    reason="needs root, setpriv and an interpreter the user nobody may run")
def test_agent_memory_is_not_readable_by_its_own_user(tmp_path: Path) -> None:
    run_dir = Path(tempfile.mkdtemp(prefix="idm-nobody-", dir="/tmp"))  # nobody can reach it
    os.chown(run_dir, NOBODY, NOBODY)
    agent = start_agent(tmp_path, sock=run_dir / "agent.sock", prefix=AS_NOBODY)
    bystander = subprocess.Popen(
        [*AS_NOBODY, sys.executable, "-c",
         "import sys, time; marker = bytes.fromhex(sys.argv[1]) * 2; time.sleep(120)",
         "5ec12e7c0ffee15b"], stdin=subprocess.DEVNULL)
    try:
        key_path = make_key(tmp_path, "ed25519")
        added = agent.ssh_add(str(key_path))
        assert added.returncode == 0, added.stderr + agent.log()
        key = serialization.load_ssh_private_key(key_path.read_bytes(), None)
        assert isinstance(key, ed25519.Ed25519PrivateKey)
        seed = key.private_bytes_raw()

        status = Path(f"/proc/{agent.pid}/status").read_text()
        assert f"Uid:\t{NOBODY}\t" in status  # the agent runs as nobody
        # another process of the same uid cannot read the agent's memory ...
        assert _read_memory(agent.pid, seed, AS_NOBODY) == {"open_errno": 13}  # EACCES
        assert os.stat(f"/proc/{agent.pid}/mem").st_uid == 0  # not dumpable: root's file
        # ... although it reads a plain process of that uid (so the refusal is the agent's)
        assert _read_memory(bystander.pid, bytes.fromhex("5ec12e7c0ffee15b") * 2,
                            AS_NOBODY)["found"] >= 1
        # and the key is there to be found by one who may read it (root)
        assert _read_memory(agent.pid, seed, [])["found"] >= 1
    finally:
        bystander.kill()
        bystander.wait()
        agent.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


# ------------------------------------------------------------------ many connections


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + GUARD
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


HELD = 1000


def test_held_and_dripping_connections_never_lock_out_a_new_client(idm_agent: IdmAgent) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < HELD + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * HELD), hard))
    with AgentClient(idm_agent.sock) as c:
        assert c.identities() == []
        baseline = _open_fds(idm_agent.pid) - 1  # without this connection
    _wait_until(lambda: _open_fds(idm_agent.pid) == baseline, "the first client to go")
    held: list[socket.socket] = []
    stop = threading.Event()

    def drip(sock: socket.socket) -> None:
        # a message that never ends: one byte of it every 0.1 s
        sock.sendall(struct.pack(">I", 1000))
        while not stop.wait(0.1):
            try:
                sock.sendall(b"\x0d")
            except OSError:
                return

    drippers = []
    try:
        for i in range(HELD):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(idm_agent.sock))
            if i % 100 == 0:  # a few stalled in the middle of a message ...
                s.sendall(b"\x00\x00\x00\x20\x0d")
            held.append(s)
        for s in held[1:200:20]:  # ... and a few sending a byte at a time
            t = threading.Thread(target=drip, args=(s,), daemon=True)
            t.start()
            drippers.append(t)
        _wait_until(lambda: _open_fds(idm_agent.pid) >= baseline + HELD,
                    f"the agent to hold {HELD} connections")

        # a new client is served (the time is reported; bench/agent_idle.py measures it)
        started = time.monotonic()
        listed = idm_agent.ssh_add("-l")
        took = time.monotonic() - started
        assert listed.returncode == 1 and "no identities" in listed.stdout, listed
        print(f"ssh-add -l with {HELD} connections held: {took * 1000:.0f} ms")
        with AgentClient(idm_agent.sock) as c:
            assert c.identities() == []
    finally:
        stop.set()
        for t in drippers:
            t.join(GUARD)
        for s in held:
            s.close()
    # every descriptor is given back
    _wait_until(lambda: _open_fds(idm_agent.pid) == baseline,
                f"the agent's descriptors to return to {baseline}")
    with AgentClient(idm_agent.sock) as c:
        assert c.identities() == []



# ------------------------------------------------------------------ unlock guessing


def test_parallel_unlock_guesses_wait_for_one_global_delay(idm_agent: IdmAgent) -> None:
    guesses = 5
    with AgentClient(idm_agent.sock) as c:
        assert isinstance(c.request(p.Lock(b"correct horse")), p.Success)
    clients = [AgentClient(idm_agent.sock) for _ in range(guesses)]
    answers: list[p.Response] = []
    barrier = threading.Barrier(guesses)

    def guess(c: AgentClient, i: int) -> None:
        barrier.wait()
        answers.append(c.request(p.Unlock(b"guess %d" % i)))

    threads = [threading.Thread(target=guess, args=(c, i)) for i, c in enumerate(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(GUARD)
    took = time.monotonic() - started
    for c in clients:
        c.close()
    assert len(answers) == guesses and all(isinstance(a, p.Failure) for a in answers)
    # 0.1 s more per failure, and one guess at a time from every connection: the guesses
    # took at least 0.1 + 0.2 + ... + 0.5 s (in parallel, per-connection delays: 0.5 s)
    assert took >= sum(0.1 * n for n in range(1, guesses + 1)) - 0.05, took
    # the passphrase still works, and the agent serves again
    with AgentClient(idm_agent.sock) as c:
        assert isinstance(c.request(p.Unlock(b"correct horse")), p.Success)
        assert c.identities() == []
    assert "failure 5; every unlock waits 0.5 s" in idm_agent.log()
