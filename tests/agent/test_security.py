"""The agent under attack (issue 14, agent section): each test is one defence of
docs/security.md, against the real `idm agent` process, OpenSSH's ssh-add and SoftHSM2.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.x509.oid import NameOID

from idm.identity import sshwire as w
from idm.identity.display import printable
from tests.agent.conftest import AS_NOBODY, NOBODY, SETPRIV, SSH_ADD, make_key, start_agent
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
