"""The agent under attack (issue 14, agent section): each test is one defence of
docs/security.md, against the real `idm agent` process, OpenSSH's ssh-add and SoftHSM2.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.x509.oid import NameOID

from idm.identity import sshwire as w
from idm.identity.display import printable
from tests.agent.conftest import SSH_ADD
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
