"""OpenSSH ssh-add against `idm agent`: list, add, remove, lock, lifetime, confirm."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from idm.identity import sshwire as w
from idm.identity.agent import protocol as p
from tests.agent.client import AgentClient
from tests.agent.conftest import GUARD_SECONDS, SSH_KEYGEN, IdmAgent, make_key, needs_openssh

pytestmark = needs_openssh


def fingerprint(pub: Path) -> str:
    assert SSH_KEYGEN is not None
    out = subprocess.run([SSH_KEYGEN, "-l", "-f", str(pub)], capture_output=True, text=True,
                         check=True).stdout
    return out.split()[1]


def test_empty_agent(idm_agent: IdmAgent) -> None:
    r = idm_agent.ssh_add("-l")
    assert r.returncode == 1
    assert "no identities" in r.stdout


def test_add_list_remove_keys(idm_agent: IdmAgent, short_dir: Path) -> None:
    keys = [make_key(short_dir, k) for k in ("rsa", "ecdsa", "ecdsa384", "ed25519")]
    for key in keys:
        r = idm_agent.ssh_add(str(key))
        assert r.returncode == 0, r.stderr
    listed = idm_agent.ssh_add("-l")
    assert listed.returncode == 0
    for key in keys:
        assert fingerprint(key.with_suffix(".pub")) in listed.stdout
    lines = idm_agent.ssh_add("-L").stdout.splitlines()
    expected = {" ".join(k.with_suffix(".pub").read_text().split()[:2]) for k in keys}
    assert {" ".join(line.split()[:2]) for line in lines} == expected

    # -d removes exactly that key (ssh-add -d reads the .pub next to the key)
    r = idm_agent.ssh_add("-d", str(keys[0]))
    assert r.returncode == 0, r.stderr
    remaining = idm_agent.ssh_add("-l").stdout
    assert fingerprint(keys[0].with_suffix(".pub")) not in remaining
    assert fingerprint(keys[1].with_suffix(".pub")) in remaining
    # removing it again fails
    assert idm_agent.ssh_add("-d", str(keys[0])).returncode != 0

    r = idm_agent.ssh_add("-D")
    assert r.returncode == 0, r.stderr
    assert idm_agent.ssh_add("-l").returncode == 1


@pytest.mark.parametrize(("kind", "flags", "name"), [
    ("rsa", 0, "ssh-rsa"),
    ("rsa", w.SIGN_RSA_SHA2_256, "rsa-sha2-256"),
    ("rsa", w.SIGN_RSA_SHA2_512, "rsa-sha2-512"),
    ("ecdsa", 0, "ecdsa-sha2-nistp256"),
    ("ecdsa384", 0, "ecdsa-sha2-nistp384"),
    ("ed25519", 0, "ssh-ed25519"),
])
def test_added_keys_sign_per_table(idm_agent: IdmAgent, short_dir: Path, kind: str,
                                   flags: int, name: str) -> None:
    key = make_key(short_dir, kind)
    assert idm_agent.ssh_add(str(key)).returncode == 0
    blob = w.parse_public_key_line(key.with_suffix(".pub").read_text()).key
    with AgentClient(idm_agent.sock) as c:
        resp = c.request(p.SignRequest(blob.blob, b"to be signed", flags))
    assert isinstance(resp, p.SignResponse)
    assert w.parse_signature_blob(resp.signature)[0] == name
    w.verify_signature(blob, b"to be signed", resp.signature)


def test_lock_and_unlock(idm_agent: IdmAgent, short_dir: Path) -> None:
    assert idm_agent.askpass is not None
    key = make_key(short_dir, "ed25519")
    assert idm_agent.ssh_add(str(key)).returncode == 0
    env = idm_agent.env(SSH_ASKPASS=str(idm_agent.askpass.program), SSH_ASKPASS_REQUIRE="force")
    idm_agent.askpass.set_passphrase("correct horse")
    r = idm_agent.ssh_add("-x", env=env)
    assert r.returncode == 0, r.stderr
    # locked: no identities, no signatures
    assert idm_agent.ssh_add("-l").returncode == 1
    blob = w.parse_public_key_line(key.with_suffix(".pub").read_text()).key.blob
    with AgentClient(idm_agent.sock) as c:
        assert isinstance(c.request(p.SignRequest(blob, b"x")), p.Failure)
        assert isinstance(c.request(p.Lock(b"again")), p.Failure)
    idm_agent.askpass.set_passphrase("wrong")
    assert idm_agent.ssh_add("-X", env=env).returncode != 0
    assert idm_agent.ssh_add("-l").returncode == 1
    idm_agent.askpass.set_passphrase("correct horse")
    r = idm_agent.ssh_add("-X", env=env)
    assert r.returncode == 0, r.stderr
    assert idm_agent.ssh_add("-l").returncode == 0
    log = idm_agent.log()
    assert "wrong passphrase" in log and "correct horse" not in log


def test_lifetime_constraint(idm_agent: IdmAgent, short_dir: Path) -> None:
    forever = make_key(short_dir, "ecdsa")
    brief = make_key(short_dir, "ed25519")
    assert idm_agent.ssh_add(str(forever)).returncode == 0
    assert idm_agent.ssh_add("-t", "1", str(brief)).returncode == 0
    assert "lifetime 1s" in idm_agent.log()
    fp = fingerprint(brief.with_suffix(".pub"))
    deadline = time.monotonic() + GUARD_SECONDS
    while fp in idm_agent.ssh_add("-l").stdout:
        assert time.monotonic() < deadline, "key with a 1 s lifetime never expired"
        time.sleep(0.2)
    assert fingerprint(forever.with_suffix(".pub")) in idm_agent.ssh_add("-l").stdout


def test_default_lifetime_option(short_dir: Path) -> None:
    from tests.agent.conftest import start_agent

    agent = start_agent(short_dir, ["-t", "1h"])
    try:
        key = make_key(short_dir, "ed25519")
        assert agent.ssh_add(str(key)).returncode == 0
        assert "lifetime 3600s" in agent.log()
    finally:
        agent.stop()


def test_confirm_constraint_uses_askpass(idm_agent: IdmAgent, short_dir: Path) -> None:
    assert idm_agent.askpass is not None
    key = make_key(short_dir, "ecdsa")
    r = idm_agent.ssh_add("-c", str(key))
    assert r.returncode == 0, r.stderr
    blob = w.parse_public_key_line(key.with_suffix(".pub").read_text()).key
    with AgentClient(idm_agent.sock) as c:
        idm_agent.askpass.allow(False)
        assert isinstance(c.request(p.SignRequest(blob.blob, b"d")), p.Failure)
        idm_agent.askpass.allow(True)
        resp = c.request(p.SignRequest(blob.blob, b"d"))
        assert isinstance(resp, p.SignResponse)
        w.verify_signature(blob, b"d", resp.signature)
    prompts = [pr for pr in idm_agent.askpass.prompts() if "|" in pr]
    assert prompts == ["confirm|Allow use of key ecdsa-test?"] * 2
    assert f"Key fingerprint {blob.fingerprint}." in idm_agent.askpass.prompts()
    assert "not confirmed by the user" in idm_agent.log()


def test_smartcard_requests_without_token_support_say_why(idm_agent: IdmAgent) -> None:
    with AgentClient(idm_agent.sock) as c:
        resp = c.request(p.AddSmartcardKey("/usr/lib/softhsm/libsofthsm2.so", "1234"))
        assert isinstance(resp, p.Failure)
        assert isinstance(c.request(p.RemoveSmartcardKey("/x.so")), p.Failure)
    log = idm_agent.log()
    assert "no token support" in log
    assert "1234" not in log


def test_extensions(idm_agent: IdmAgent) -> None:
    with AgentClient(idm_agent.sock) as c:
        assert isinstance(c.request(p.Extension("query")), p.Failure)
        # a session-bind whose signature does not verify is refused as a failed extension
        host = w.KeyBlob.plain(_ed25519().public_key())
        bad = p.SessionBind(host.blob, b"sid", w.signature_blob("ssh-ed25519", b"\0" * 64), False)
        resp = c.request(p.Extension(p.SESSION_BIND, bad.encode_contents()))
        assert isinstance(resp, p.ExtensionFailure)
        key = _ed25519()
        sig = w.sign_with_private_key(key, w.signature_scheme(w.KeyBlob.plain(
            key.public_key())), b"session-id")
        good = p.SessionBind(w.public_key_blob(key.public_key()), b"session-id", sig, False)
        assert isinstance(c.request(p.Extension(p.SESSION_BIND, good.encode_contents())),
                          p.Success)
        # the connection still works
        assert c.identities() == []


def test_add_identity_over_raw_protocol_with_all_constraints(idm_agent: IdmAgent) -> None:
    key = _ed25519()
    with AgentClient(idm_agent.sock) as c:
        req = p.AddIdentity(key, "raw", p.Constraints(lifetime=600, max_signatures=1))
        assert isinstance(c.request(req), p.Success)
        blob = w.public_key_blob(key.public_key())
        assert c.identities() == [(blob, "raw")]
        assert isinstance(c.request(p.SignRequest(blob, b"1")), p.SignResponse)
        assert isinstance(c.request(p.SignRequest(blob, b"2")), p.Failure)
    assert "maximum number of signatures" in idm_agent.log()


def test_openssh_certificate_keys_are_refused_in_words(idm_agent: IdmAgent,
                                                       short_dir: Path) -> None:
    assert SSH_KEYGEN is not None
    ca = make_key(short_dir, "ed25519", "ca")
    user = make_key(short_dir, "ed25519", "user")
    subprocess.run([SSH_KEYGEN, "-q", "-s", str(ca), "-I", "u", str(user) + ".pub"], check=True)
    # ssh-add adds the plain key and then tries user-cert.pub
    idm_agent.ssh_add(str(user))
    assert "unsupported private key type 'ssh-ed25519-cert-v01@openssh.com'" in idm_agent.log()
    assert fingerprint(user.with_suffix(".pub")) in idm_agent.ssh_add("-l").stdout


def _ed25519() -> w.PrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519.Ed25519PrivateKey.generate()


def test_pkcs8_roundtrip_helper_sanity() -> None:
    """AddIdentity.encode uses sshwire.pack_private_key: the key survives the codec."""
    key = _ed25519()
    body = p.AddIdentity(key, "c").encode()[4:]
    parsed = p.parse_request(body)
    assert isinstance(parsed, p.AddIdentity)
    assert parsed.private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
        serialization.NoEncryption()) == key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
        serialization.NoEncryption())
