"""`idm agent` serving SoftHSM2 identities: real peers (OpenSSH ssh/sshd/ssh-add, asyncssh),
the sample CA's OCSP responder, card removal and re-insertion, PIN policy.

Every agent here is a real `idm --config … --db … agent -d` process on a private socket;
SIGUSR1 makes it re-validate and poll the cards now, so no test waits for a timer.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import asyncssh
import pytest

from idm.identity import sshwire as w
from idm.identity.agent import protocol as p
from idm.identity.checker import CertificateChecker
from idm.identity.config import load_config
from idm.identity.tokens.enroll import enroll_certificate
from idm.identity.tokens.uri import TokenIdentity
from tests.agent.client import AgentClient
from tests.agent.conftest import SSH_ADD, Askpass
from tests.agent.tokenworld import GUARD, Agent, World, load_cert, plain_line, write_config
from tests.sample_ca_fixture import SampleCA
from tests.softhsm import (  # noqa: F401  (fixtures)
    SOFTHSM_MODULE,
    SPY_MODULE,
    SoftHSM,
    second_module,
    softhsm,
    softhsm_second,
)

pytestmark = [pytest.mark.softhsm]


def ssh_login(sshd: object, agent: Agent) -> subprocess.CompletedProcess[str]:
    # rsa-sha2-256 for RSA keys (OpenSSH would pick rsa-sha2-512 by itself)
    options = ["PubkeyAcceptedAlgorithms=rsa-sha2-256,ecdsa-sha2-nistp256"]
    cmd = sshd.ssh_command("echo", "logged-in", agent=agent.sock,  # type: ignore[attr-defined]
                           options=options)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=GUARD,
                          stdin=subprocess.DEVNULL, check=False)


def algorithms(listing: list[tuple[str, str]]) -> list[str]:
    return [alg for alg, _ in listing]


# ------------------------------------------------------------------ tests


@pytest.mark.sshd
def test_openssh_logs_in_with_rsa_and_ec_keys_on_the_card(
    world: World, agents: Callable[..., Agent], sshd_factory: Callable[..., object],
    askpass: Askpass,
) -> None:
    world.put("alice", b"\x01")  # RSA-2048
    world.put("bob", b"\x02")  # EC P-256
    assert world.enroll() == ["approved", "approved"]
    askpass.set_passphrase(world.card.pin)
    agent = agents()
    agent.wait_for(lambda: len(agent.blobs()) == 4, "both identities")
    assert algorithms(agent.listing()) == [
        "ssh-rsa", "x509v3-rsa2048-sha256", "ecdsa-sha2-nistp256", "x509v3-ecdsa-sha2-nistp256"]

    listed = subprocess.run([SSH_ADD, "-L"], env=agent.env(), capture_output=True, text=True,
                            timeout=GUARD, check=True).stdout.splitlines()
    # OpenSSH skips the RFC 6187 entries: the two plain keys, with the agent's comments.
    assert [line.split()[0] for line in listed] == ["ssh-rsa", "ecdsa-sha2-nistp256"]
    assert "card 'alice-card-1'" in listed[0]
    assert subprocess.run([SSH_ADD, "-l"], env=agent.env(), capture_output=True, text=True,
                          timeout=GUARD, check=True).stdout.count("SHA256:") == 2

    sshd = sshd_factory(authorized_keys=plain_line(world.ca.user_cert("alice")) + "\n")
    result = ssh_login(sshd, agent)
    assert result.returncode == 0, result.stderr + agent.log()
    assert result.stdout.strip() == "logged-in"
    assert re.search(r"Accepted publickey for \S+ .* RSA SHA256:", sshd.log_text())  # type: ignore[attr-defined]
    assert "flags 0x2)" in agent.log()  # rsa-sha2-256 asked and served

    sshd.authorized_keys.write_text(plain_line(world.ca.user_cert("bob")) + "\n")  # type: ignore[attr-defined]
    result = ssh_login(sshd, agent)
    assert result.returncode == 0, result.stderr + agent.log()
    assert re.search(r"Accepted publickey for \S+ .* ECDSA SHA256:", sshd.log_text())  # type: ignore[attr-defined]
    # one card, one login: the PIN was asked once for both keys (--pin-cache default)
    assert len(agent.pin_prompts()) == 1
    assert "alice-card-1" in agent.pin_prompts()[0]


async def _asyncssh_login(sock: Path, ca: SampleCA, algorithm: str, subject: str,
                          user: str) -> str:
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    auth = asyncssh.import_authorized_keys(f"{algorithm} subject={subject}\n")

    def process(proc: asyncssh.SSHServerProcess[str]) -> None:
        proc.stdout.write("x509-login\n")
        proc.exit(0)

    server = await asyncssh.listen(
        "127.0.0.1", 0, server_host_keys=[host_key], authorized_client_keys=auth,
        x509_trusted_certs=[str(ca.root)], x509_purposes="clientAuth",
        process_factory=process,
    )
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncssh.connect(
            # asyncssh matches the login name against the certificate's SAN e-mail
            "127.0.0.1", port, username=user, agent_path=str(sock), known_hosts=None,
            config=[], connect_timeout=GUARD,
        ) as conn:
            result = await conn.run("anything", check=True)
            return str(result.stdout).strip()
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(("user", "algorithm"), [
    ("alice", "x509v3-rsa2048-sha256"),
    ("bob", "x509v3-ecdsa-sha2-nistp256"),
])
def test_asyncssh_x509_login_through_the_agent(
    world: World, agents: Callable[..., Agent], askpass: Askpass, user: str, algorithm: str,
) -> None:
    world.put(user, b"\x01")
    assert world.enroll() == ["approved"]
    askpass.set_passphrase(world.card.pin)
    agent = agents()
    agent.wait_for(lambda: len(agent.blobs()) == 2, "the identity")
    # The RFC 6187 blob carries leaf + intermediate (not the root the server trusts).
    x509_blob = w.parse_key_blob(agent.blobs()[1])
    assert x509_blob.algorithm == algorithm and len(x509_blob.chain) == 2
    # (an asyncssh authorized_keys option cannot hold the space of "O=idm demo")
    out = asyncio.run(_asyncssh_login(agent.sock, world.ca, algorithm, "C=XX,*",
                                      f"{user}@example.org"))
    assert out == "x509-login"
    assert f"({algorithm}, flags" in agent.log()  # signed for the X.509 form


def test_pkix_socket_lists_raw_der_and_plain(world: World, agents: Callable[..., Agent],
                                             askpass: Askpass) -> None:
    world.put("alice", b"\x01")
    world.put("bob", b"\x02")
    world.enroll()
    askpass.set_passphrase(world.card.pin)
    agent = agents(pkix=True)
    assert agent.pkix is not None
    agent.wait_for(lambda: len(agent.blobs()) == 4, "both identities")
    assert algorithms(agent.listing(agent.pkix)) == [
        "x509v3-sign-rsa", "ssh-rsa", "x509v3-ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256"]
    raw_der = w.KeyBlob.raw_der(load_cert(world.ca.user_cert("alice")))
    for sock in (agent.sock, agent.pkix):
        with AgentClient(sock) as c:
            resp = c.request(p.SignRequest(raw_der.blob, b"pkix data", 0))
        assert isinstance(resp, p.SignResponse), agent.log()
        assert w.parse_signature_blob(resp.signature)[0] == "x509v3-sign-rsa"
        w.verify_signature(raw_der, b"pkix data", resp.signature)


@pytest.mark.sshd
def test_revoked_certificate_disappears_and_login_fails(
    world: World, agents: Callable[..., Agent], sshd_factory: Callable[..., object],
    askpass: Askpass,
) -> None:
    cert = world.ca.user("rita")
    world.put("rita", b"\x07")
    assert world.enroll() == ["approved"]
    askpass.set_passphrase(world.card.pin)
    agent = agents()
    agent.wait_for(lambda: len(agent.blobs()) == 2, "rita's identity")
    sshd = sshd_factory(authorized_keys=plain_line(cert) + "\n")
    assert ssh_login(sshd, agent).returncode == 0, agent.log()

    world.ca.revoke(cert, reason="keyCompromise")
    agent.refresh()
    agent.wait_for(lambda: agent.blobs() == [], "the revoked identity to be withdrawn")
    result = ssh_login(sshd, agent)
    assert result.returncode != 0
    assert "revoked" in agent.log()

    inv = world.inventory()
    try:
        sha = next(c.sha256 for c in inv.certificates() if c.subject.startswith("CN=rita"))
        assert inv.certificate(sha).status == "revoked"  # type: ignore[union-attr]
        events = [e for e in inv.events(certificate=sha) if e.kind == "revoked"]
    finally:
        inv.close()
    assert events and events[-1].command == "idm agent"
    assert "revoked" in (events[-1].reason or "").lower()


@pytest.mark.sshd
def test_card_removed_then_reinserted_in_another_reader(
    world: World, agents: Callable[..., Agent], sshd_factory: Callable[..., object],
    askpass: Askpass, softhsm_second: SoftHSM,  # noqa: F811
) -> None:
    world.put("alice", b"\x01")
    world.enroll()
    write_config(world.config, world.ca, [SOFTHSM_MODULE, softhsm_second.module])
    askpass.set_passphrase(world.card.pin)
    # Polls only on SIGUSR1 here, so each step is deterministic.
    agent = agents("--poll-interval", "3600", env=softhsm_second.env)
    agent.wait_for(lambda: len(agent.blobs()) == 2, "alice's identity")
    sshd = sshd_factory(authorized_keys=plain_line(world.ca.user_cert("alice")) + "\n")
    assert ssh_login(sshd, agent).returncode == 0, agent.log()
    plain = agent.blobs()[0]

    world.hsm.remove(world.card)
    resp = agent.sign(plain, w.SIGN_RSA_SHA2_256)
    assert isinstance(resp, p.Failure)
    assert "card 'alice-card-1' is not inserted" in agent.log()
    assert agent.blobs() == []  # withdrawn at once
    assert ssh_login(sshd, agent).returncode != 0

    world.hsm.reinsert(world.card, into=softhsm_second)  # another module, another slot
    agent.refresh()
    agent.wait_for(lambda: len(agent.blobs()) == 2, "alice's identity to come back")
    result = ssh_login(sshd, agent)
    assert result.returncode == 0, result.stderr + agent.log()
    assert agent.proc.poll() is None  # same agent, not restarted
    assert "libsofthsm2-second.so" in agent.log()
    assert len(agent.pin_prompts()) == 2  # the card logged in again after re-insertion


def test_wrong_pin_is_tried_once_and_explained(
    world: World, agents: Callable[..., Agent], askpass: Askpass, tmp_path: Path,
) -> None:
    if SPY_MODULE is None:
        pytest.skip("OpenSC pkcs11-spy is not installed")
    world.put("alice", b"\x01")
    world.enroll()
    write_config(world.config, world.ca, [SPY_MODULE])
    spy_log = tmp_path / "spy.log"
    env = dict(os.environ, PKCS11SPY=SOFTHSM_MODULE, PKCS11SPY_OUTPUT=str(spy_log))
    askpass.set_passphrase("9999")
    agent = agents(env=env)
    agent.wait_for(lambda: len(agent.blobs()) == 2, "alice's identity")
    resp = agent.sign(agent.blobs()[0], w.SIGN_RSA_SHA2_256)
    assert isinstance(resp, p.Failure)
    # and a second form of the same key right after: no second prompt, no second C_Login
    resp = agent.sign(agent.blobs()[1])
    assert isinstance(resp, p.Failure)
    assert len(agent.pin_prompts()) == 1
    assert spy_log.read_text(errors="replace").count("C_Login") == 1
    log = agent.log()
    assert "wrong PIN for card 'alice-card-1', not tried again" in log
    assert "9999" not in log


def test_only_limits_what_is_offered(world: World, agents: Callable[..., Agent]) -> None:
    world.put("alice", b"\x01")
    world.put("bob", b"\x02")
    world.enroll()
    by_dn = agents("--only", "CN=bob")
    by_dn.wait_for(lambda: len(by_dn.blobs()) == 2, "bob's identity")
    assert algorithms(by_dn.listing()) == ["ecdsa-sha2-nistp256", "x509v3-ecdsa-sha2-nistp256"]
    by_uri = agents("--only", "pkcs11:token=alice-card-1;id=%01")
    by_uri.wait_for(lambda: len(by_uri.blobs()) == 2, "alice's identity")
    assert algorithms(by_uri.listing()) == ["ssh-rsa", "x509v3-rsa2048-sha256"]
    by_label = agents("--only", "nobody")
    by_label.wait_for(lambda: "validated" in by_label.log(), "the first validation")
    assert by_label.blobs() == []


@pytest.mark.parametrize(("pin_cache", "prompts"), [("0", 3), ("300", 1)])
def test_pin_cache(world: World, agents: Callable[..., Agent], askpass: Askpass,
                   pin_cache: str, prompts: int) -> None:
    world.put("alice", b"\x01")
    world.enroll()
    askpass.set_passphrase(world.card.pin)
    agent = agents("--pin-cache", pin_cache)
    agent.wait_for(lambda: len(agent.blobs()) == 2, "alice's identity")
    blob = agent.blobs()[0]
    for i in range(3):
        resp = agent.sign(blob, w.SIGN_RSA_SHA2_256, data=b"n%d" % i)
        assert isinstance(resp, p.SignResponse), agent.log()
    assert len(agent.pin_prompts()) == prompts


def test_lock_logs_the_card_out(world: World, agents: Callable[..., Agent],
                                askpass: Askpass) -> None:
    world.put("alice", b"\x01")
    world.enroll()
    askpass.set_passphrase(world.card.pin)
    agent = agents()
    agent.wait_for(lambda: len(agent.blobs()) == 2, "alice's identity")
    blob = agent.blobs()[0]
    assert isinstance(agent.sign(blob, w.SIGN_RSA_SHA2_256), p.SignResponse)
    with AgentClient(agent.sock) as c:
        assert isinstance(c.request(p.Lock(b"secret")), p.Success)
        assert c.identities() == []
        assert isinstance(c.request(p.Unlock(b"secret")), p.Success)
    assert isinstance(agent.sign(blob, w.SIGN_RSA_SHA2_256), p.SignResponse)
    assert len(agent.pin_prompts()) == 2


def test_ssh_add_s_and_e(world: World, agents: Callable[..., Agent], askpass: Askpass,
                         tmp_path: Path) -> None:
    world.put("alice", b"\x01")
    world.enroll()
    world.ca.user("carol", "--force")
    world.put("carol", b"\x03")  # on the card, never enrolled: not offered
    no_providers = tmp_path / "none.toml"
    write_config(no_providers, world.ca, [])
    agent = agents(config=no_providers)
    agent.wait_for(lambda: "validated" in agent.log(), "the agent")
    assert agent.blobs() == []

    askpass.set_passphrase(world.card.pin)  # ssh-add asks for the PIN through askpass
    env = dict(agent.env(), SSH_ASKPASS=str(askpass.program), SSH_ASKPASS_REQUIRE="force")
    added = subprocess.run([SSH_ADD, "-s", SOFTHSM_MODULE], env=env, capture_output=True,
                           text=True, timeout=GUARD, stdin=subprocess.DEVNULL, check=False)
    assert added.returncode == 0, added.stderr + agent.log()
    listed = subprocess.run([SSH_ADD, "-L"], env=env, capture_output=True, text=True,
                            timeout=GUARD, check=True).stdout
    assert listed.split()[:2] == plain_line(world.ca.user_cert("alice")).split()[:2]
    assert "CN=carol" not in listed
    assert "certificate 'carol'" in agent.log() and "not in the inventory" in agent.log()
    # the PIN came from ssh-add: signing asks nothing more
    prompts_before = len(askpass.prompts())
    assert isinstance(agent.sign(agent.blobs()[0], w.SIGN_RSA_SHA2_256), p.SignResponse)
    assert len(askpass.prompts()) == prompts_before

    removed = subprocess.run([SSH_ADD, "-e", SOFTHSM_MODULE], env=env, capture_output=True,
                             text=True, timeout=GUARD, stdin=subprocess.DEVNULL, check=False)
    assert removed.returncode == 0, removed.stderr + agent.log()
    assert agent.blobs() == []
    bad = subprocess.run([SSH_ADD, "-s", "/tmp/not-a-provider.so"], env=env,
                         capture_output=True, text=True, timeout=GUARD,
                         stdin=subprocess.DEVNULL, check=False)
    assert bad.returncode != 0
    assert "is not allowed" in agent.log()


def test_never_seen_card_is_listed_and_asked_for(
    world: World, agents: Callable[..., Agent], askpass: Askpass,
) -> None:
    world.put("alice", b"\x01")
    world.hsm.remove(world.card)  # the card was never inserted where idm could see it
    ident = TokenIdentity("SoftHSM project", "SoftHSM v2", world.card.serial, "alice-card-1")
    inv = world.inventory()
    try:
        checker = CertificateChecker.from_config(load_config(world.config), inv)
        result = enroll_certificate(inv, checker, ident, load_cert(world.ca.user_cert("alice")),
                                    cka_id=b"\x01", label="alice", command="test")
    finally:
        inv.close()
    assert [c.status for c in result.certificates] == ["approved"]
    askpass.set_passphrase(world.card.pin)
    agent = agents("--poll-interval", "3600")
    agent.wait_for(lambda: len(agent.blobs()) == 2, "the registered identity")
    assert "not inserted yet" in agent.listing()[0][1]

    world.hsm.reinsert(world.card)
    askpass.allow(True)  # the user inserts the card and confirms the prompt
    resp = agent.sign(agent.blobs()[0], w.SIGN_RSA_SHA2_256)
    assert isinstance(resp, p.SignResponse), agent.log()
    assert any(line.startswith("confirm|Insert card 'alice-card-1'")
               for line in askpass.prompts())
    assert "not inserted yet" not in agent.listing()[0][1]
