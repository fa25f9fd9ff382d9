"""PKIX-SSH for real: its ssh, ssh-add, ssh-agent and sshd against `idm agent` and
`idm authorized-keys`.

PKIX-SSH (the X.509 fork of OpenSSH) is built once from its source into a cache
(tests/pkixssh.py). One SoftHSM2 card holds three sample-ca identities (RSA-2048, EC P-256,
EC P-384); one `idm agent` serves it on its standard socket and its PKIX-SSH socket. Two
PKIX-SSH sshd servers on 127.0.0.1, shared by the tests of this module, check the logins:

(a) X.509 by PKIX-SSH alone: authorized_keys ``x509v3-… Subject:…`` lines and its CA store
    (CACertificateFile with root and intermediate, CARevocationFile with their CRLs);
(b) ``AuthorizedKeysCommand idm authorized-keys %u %t %k`` (run as nobody from a root-owned
    install) and the same CA certificates but no CRL, so a refusal after a revocation is
    idm's.

Tests that change something (a revocation, another card) bring their own certificates and
card, so each test passes alone and in any order.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from idm.identity import sshwire as w
from idm.identity.agent import protocol as p
from idm.identity.inventory.store import Inventory
from tests.agent.client import AgentClient
from tests.pkixssh import PkixsshBuild, unavailable
from tests.sample_ca_fixture import SampleCA, make_sample_ca, serving
from tests.server.helpers import HelperInstall, enroll, idm, write_config
from tests.softhsm import SOFTHSM_MODULE, SoftHSM, SoftHSMToken
from tests.sshd import SshdServer, SshdUnavailable, start_sshd

pytestmark = [pytest.mark.pkixssh, pytest.mark.softhsm, pytest.mark.sshd]

GUARD = 60.0  # a ceiling against hangs, never a performance expectation
IDM = [sys.executable, "-c", "from idm.cli.entry import main; main()"]
LOGIN_USER = "root"  # sshd with privilege separation needs root; the tests log in as root

# sample-ca user -> (key type, the X.509 algorithms PKIX-SSH offers for it, the %t its sshd
# passes for them: the first X.509 algorithm of the key type, ssh-xkalg.c)
USERS = {
    "pk-rsa": ("rsa2048", ["x509v3-sign-rsa", "x509v3-ssh-rsa", "x509v3-rsa2048-sha256"],
               "x509v3-rsa2048-sha256"),
    "pk-ec256": ("ec-p256", ["x509v3-ecdsa-sha2-nistp256"], "x509v3-ecdsa-sha2-nistp256"),
    "pk-ec384": ("ec-p384", ["x509v3-ecdsa-sha2-nistp384"], "x509v3-ecdsa-sha2-nistp384"),
    "pk-ec521": ("ec-p521", ["x509v3-ecdsa-sha2-nistp521"], "x509v3-ecdsa-sha2-nistp521"),
}
LOGINS = [(user, alg) for user, (_, algs, _) in USERS.items() for alg in algs]
KEY_TYPE = {"rsa2048": "rsa", "ec-p256": "ecdsa", "ec-p384": "ecdsa", "ec-p521": "ecdsa"}


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def subject_line(algorithm: str, cert: Path) -> str:
    """PKIX-SSH's authorized_keys ``Subject:`` line (README.x509v3: any order, ',' or '/')."""
    return f"{algorithm} Subject:{_load(cert).subject.rfc4514_string()}"


def _wait(predicate: Callable[[], bool], what: str, log: Callable[[], str]) -> None:
    deadline = time.monotonic() + GUARD
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: {log()[-3000:]}")


def _listing(sock: Path) -> list[bytes]:
    try:
        with AgentClient(sock) as c:
            return [blob for blob, _ in c.identities()]
    except OSError:
        return []


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(GUARD)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class World:
    """The shared pieces: CA, card, inventory, helper install, agent, both sshd servers."""

    dir: Path
    short: Path  # a short folder for UNIX sockets (108-byte path limit)
    pkix: PkixsshBuild
    ca: SampleCA
    hsm: SoftHSM
    card: SoftHSMToken
    db: str
    install: HelperInstall
    askpass: Path
    sock: Path
    pkix_sock: Path
    agent: subprocess.Popen[bytes]
    agent_log: Path
    ca_file: Path
    sshd_a: SshdServer
    sshd_b: SshdServer

    def env(self, hsm: SoftHSM | None = None, **extra: str) -> dict[str, str]:
        env = dict(os.environ, SOFTHSM2_CONF=str((hsm or self.hsm).conf),
                   SSH_ASKPASS=str(self.askpass), SSH_ASKPASS_REQUIRE="force", **extra)
        env.pop("DISPLAY", None)
        return env

    def refresh(self) -> None:
        idm("refresh", config=self.install.config, db=self.db)

    def login(self, sshd: SshdServer, algorithm: str, agent: Path | None = None,
              ) -> subprocess.CompletedProcess[str]:
        """PKIX-SSH's ssh, offering only ``algorithm``, with the keys of ``agent``."""
        cmd = sshd.ssh_command("echo", "logged-in", agent=agent or self.pkix_sock,
                               options=[f"PubkeyAlgorithms={algorithm}"])
        return subprocess.run(cmd, capture_output=True, text=True, timeout=GUARD,
                              stdin=subprocess.DEVNULL, check=False, env=self.env())

    def ssh_add(self, sock: Path, *args: str, hsm: SoftHSM | None = None,
                ) -> subprocess.CompletedProcess[str]:
        """PKIX-SSH's ssh-add."""
        return subprocess.run([str(self.pkix.ssh_add), *args], capture_output=True, text=True,
                              timeout=GUARD, stdin=subprocess.DEVNULL, check=False,
                              env=self.env(hsm, SSH_AUTH_SOCK=str(sock)))

    def agent_text(self) -> str:
        return self.agent_log.read_text(errors="replace")

    def explain(self, proc: subprocess.CompletedProcess[str], sshd: SshdServer) -> str:
        return (f"ssh: {proc.stderr[-1500:]}\nsshd: {sshd.log_text()[-2500:]}\n"
                f"helper: {self.install.log_text()[-1000:]}\nagent: {self.agent_text()[-1500:]}")

    def assert_login(self, sshd: SshdServer, algorithm: str, agent: Path | None = None) -> None:
        proc = self.login(sshd, algorithm, agent)
        assert proc.returncode == 0 and proc.stdout.strip() == "logged-in", \
            self.explain(proc, sshd)

    def assert_refused(self, sshd: SshdServer, algorithm: str, agent: Path | None = None,
                       ) -> None:
        proc = self.login(sshd, algorithm, agent)
        assert proc.returncode == 255 and "logged-in" not in proc.stdout, proc.stdout
        assert "Permission denied (publickey)" in proc.stderr, proc.stderr

    @contextlib.contextmanager
    def pkixssh_agent(self, name: str, hsm: SoftHSM) -> Iterator[Path]:
        """PKIX-SSH's own ssh-agent holding the cards of ``hsm`` (``ssh-add -s``)."""
        sock = self.short / f"{name}.sock"
        # its provider allow-list is matched against the module's real path
        proc = subprocess.Popen([str(self.pkix.ssh_agent), "-D", "-a", str(sock),
                                 "-P", "/usr/lib/*"], env=self.env(hsm),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait(sock.exists, "PKIX-SSH's ssh-agent", lambda: "")
            added = self.ssh_add(sock, "-s", SOFTHSM_MODULE, hsm=hsm)
            assert added.returncode == 0, added.stderr
            yield sock
        finally:
            _stop(proc)


def _pem_crls(ca: SampleCA) -> str:
    return "".join(x509.load_der_x509_crl(der.read_bytes()).public_bytes(Encoding.PEM).decode()
                   for der in (ca.crl_root, ca.crl_intermediate))


@pytest.fixture(scope="module")
def world(pkixssh: PkixsshBuild, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if os.geteuid() != 0:
        unavailable("sshd with privilege separation and AuthorizedKeysCommandUser needs root")
    tmp = tmp_path_factory.mktemp("pkixssh")
    short = Path(tempfile.mkdtemp(prefix="idm-pk-", dir="/tmp"))
    ca = make_sample_ca(tmp)
    hsm = SoftHSM(tmp / "softhsm")
    card = hsm.init_token("pkix-card")
    for n, (user, (kind, _, _)) in enumerate(USERS.items(), start=1):
        cert = ca.user(user, "--key", kind)
        hsm.import_private_key(card, ca.user_key(user), key_id=bytes([n]), label=user)
        hsm.import_certificate(card, cert, key_id=bytes([n]), label=user)
    db = f"sqlite:///{tmp / 'inventory.sqlite'}"
    install = HelperInstall.create()
    write_config(install.config, ca=ca.ca_bundle, untrusted=ca.chain, snapshot=install.snapshot,
                 extra=f'[tokens]\nproviders = ["{SOFTHSM_MODULE}"]\n')
    askpass = short / "askpass.sh"
    askpass.write_text(f"#!/bin/sh\necho {card.pin}\n")
    askpass.chmod(0o700)
    ca_file = tmp / "ca-certificates.pem"
    ca_file.write_text(ca.root.read_text() + ca.intermediate.read_text())
    crl_file = tmp / "ca-crls.pem"
    crl_file.write_text(_pem_crls(ca))
    env = dict(os.environ, SOFTHSM2_CONF=str(hsm.conf), SSH_ASKPASS=str(askpass),
               SSH_ASKPASS_REQUIRE="force")
    env.pop("DISPLAY", None)
    servers: list[SshdServer] = []
    agent: subprocess.Popen[bytes] | None = None
    try:
        with serving(ca):
            enrolled = subprocess.run(
                [*IDM, "--config", str(install.config), "--db", db, "enroll", "--token",
                 card.uri_with_pin], env=env, capture_output=True, text=True, check=False)
            assert enrolled.returncode == 0, enrolled.stderr
            inv = Inventory(db)
            try:
                for user in USERS:
                    inv.allow(LOGIN_USER, "principal", f"{user}@example.org", command="test")
            finally:
                inv.close()
            idm("refresh", config=install.config, db=db)
            sock, pkix_sock, agent_log = short / "std.sock", short / "pkix.sock", tmp / "agent.log"
            with open(agent_log, "wb") as err, open(tmp / "agent.out", "wb") as out:
                agent = subprocess.Popen(
                    [*IDM, "--config", str(install.config), "--db", db, "agent", "-d",
                     "-a", str(sock), "--pkix-socket", str(pkix_sock)],
                    env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
            _wait(lambda: len(_listing(pkix_sock)) == 2 * len(USERS), "the card's identities",
                  agent_log.read_text)
            store = [f"CACertificateFile {ca_file}"]
            try:
                servers.append(start_sshd(
                    tmp / "sshd-a",
                    authorized_keys="".join(subject_line(alg, ca.user_cert(user)) + "\n"
                                            for user, alg in LOGINS),
                    extra_config=[*store, f"CARevocationFile {crl_file}"],
                    sshd=pkixssh.sshd, ssh=pkixssh.ssh))
                servers.append(start_sshd(
                    tmp / "sshd-b",
                    extra_config=[*store, f"AuthorizedKeysCommand {install.wrapper} %u %t %k",
                                  "AuthorizedKeysCommandUser nobody"],
                    sshd=pkixssh.sshd, ssh=pkixssh.ssh))
            except SshdUnavailable as exc:
                pytest.fail(f"PKIX-SSH's sshd did not start: {exc}")
            yield World(tmp, short, pkixssh, ca, hsm, card, db, install, askpass, sock,
                        pkix_sock, agent, agent_log, ca_file, *servers)
    finally:
        for server in servers:
            server.stop()
        if agent is not None:
            _stop(agent)
        install.remove()
        shutil.rmtree(short, ignore_errors=True)


@pytest.fixture(scope="module")
def own_agent(world: World) -> Iterator[Path]:
    """PKIX-SSH's own ssh-agent with the world's card: the reference for idm's PKIX socket."""
    with world.pkixssh_agent("own", world.hsm) as sock:
        yield sock


# ------------------------------------------------------------------ the agent's two sockets


def test_pkix_socket_lists_what_pkixssh_agent_lists(world: World, own_agent: Path) -> None:
    assert world.pkix.version().startswith("PKIX-SSH 16.")
    # what `eval "$(idm agent --pkix-socket PATH)"` sets
    exported = (world.dir / "agent.out").read_text()
    assert f"IDM_PKIX_AUTH_SOCK={world.pkix_sock}; export IDM_PKIX_AUTH_SOCK;" in exported
    listed = world.ssh_add(world.pkix_sock, "-L")
    assert listed.returncode == 0, listed.stderr
    for user, (_, _, first) in USERS.items():
        # PKIX-SSH writes an X.509 identity as its Subject line, named by its first algorithm
        assert f"{first} Subject:C=XX,O=idm demo,CN={user}\n" in listed.stdout, listed.stdout
    fingerprints = world.ssh_add(world.pkix_sock, "-l")
    assert fingerprints.stdout.count("(RSA+cert)") == 1, fingerprints.stdout
    assert fingerprints.stdout.count("(ECDSA+cert)") == 3
    assert fingerprints.stdout.count("(RSA)") + fingerprints.stdout.count("(ECDSA)") == 4
    # The same raw-DER entries as PKIX-SSH's own agent (which lists no plain keys).
    theirs = _listing(own_agent)
    ours = _listing(world.pkix_sock)
    assert sorted(w.parse_key_blob(b).algorithm for b in theirs) == [
        "x509v3-ecdsa-sha2-nistp256", "x509v3-ecdsa-sha2-nistp384",
        "x509v3-ecdsa-sha2-nistp521", "x509v3-sign-rsa"]
    assert set(theirs) == {b for b in ours if b[:1] == b"\x30"}


@pytest.mark.parametrize("args", [["-l"], ["-L"]])
def test_standard_socket_refused_by_pkixssh_with_a_hint(world: World, args: list[str]) -> None:
    before = len(world.agent_text())
    proc = world.ssh_add(world.sock, *args)
    assert proc.returncode == 1 and "invalid format" in proc.stderr, proc
    hint = world.agent_text()[before:]
    assert re.search(r"runs PKIX-SSH \(.*/bin/ssh-add\), which rejects this socket's list", hint)
    assert f"point it at the PKIX-SSH socket: SSH_AUTH_SOCK={world.pkix_sock}" in hint
    # OpenSSH reads the same list (skipping the RFC 6187 entries) and gets no hint
    openssh_add = shutil.which("ssh-add")
    assert openssh_add is not None
    before = len(world.agent_text())
    proc = subprocess.run([openssh_add, *args], env=world.env(SSH_AUTH_SOCK=str(world.sock)),
                          capture_output=True, text=True, timeout=GUARD, check=False)
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == len(USERS), proc
    assert "PKIX-SSH" not in world.agent_text()[before:]


# ------------------------------------------------------------------ logins


@pytest.mark.parametrize(("user", "algorithm"), LOGINS)
def test_login_x509_by_pkixssh_alone(world: World, user: str, algorithm: str) -> None:
    """(a): a Subject: line and PKIX-SSH's CA store, keys through idm's PKIX socket."""
    before, before_agent = len(world.sshd_a.log_text()), len(world.agent_text())
    world.assert_login(world.sshd_a, algorithm)
    log = world.sshd_a.log_text()[before:]
    # PKIX-SSH 16's client asks a PKIX-SSH 16 server for plain SSH signatures (flags 0)
    assert f"(pkix socket): signed with \"CN={user},O=idm demo,C=XX (card 'pkix-card')\" " \
           f"({algorithm}, flags 0x0)" in world.agent_text()[before_agent:]
    # matched by a Subject: line (a name without a key: "X509(rsa)")
    kind = KEY_TYPE[USERS[user][0]]
    assert f"Authorized by X509({kind}) : CN={user},O=idm demo,C=XX" in log, log
    assert f"Accepted publickey for {LOGIN_USER} " in log


@pytest.mark.parametrize(("user", "algorithm"), LOGINS)
def test_login_through_idm_authorized_keys(world: World, user: str, algorithm: str) -> None:
    """(b): idm authorized-keys answers %u %t %k; PKIX-SSH checks the certificate after."""
    before_sshd, before_helper = len(world.sshd_b.log_text()), len(world.install.log_text())
    world.assert_login(world.sshd_b, algorithm)
    helper_log = world.install.log_text()[before_helper:]
    # %t is the first X.509 algorithm of the key type, %k the plain key (never the cert)
    plain = "ssh-rsa" if user == "pk-rsa" else algorithm.removeprefix("x509v3-")
    assert f"ALLOW: user {LOGIN_USER} key {plain} SHA256:" in helper_log, helper_log
    assert f"(sshd asked for {USERS[user][2]}): certificate " in helper_log
    sshd_log = world.sshd_b.log_text()[before_sshd:]
    # matched by the certificate line idm printed ("RSA+cert": a certificate with its key)
    label = KEY_TYPE[USERS[user][0]].upper() + "+cert"
    assert f"Authorized by {label} : C=XX,O=idm demo,CN={user}" in sshd_log, sshd_log


def test_user_only_command_with_pkixssh_sshd(world: World) -> None:
    """``%u`` alone: idm prints the user's plain key lines; PKIX-SSH matches a certificate
    to a plain key line by its public key (auth2-pubkeyfile.c, x509_match)."""
    try:
        sshd = start_sshd(world.dir / "sshd-u", sshd=world.pkix.sshd, ssh=world.pkix.ssh,
                          extra_config=[f"CACertificateFile {world.ca_file}",
                                        f"AuthorizedKeysCommand {world.install.wrapper} %u",
                                        "AuthorizedKeysCommandUser nobody"])
    except SshdUnavailable as exc:
        pytest.fail(f"PKIX-SSH's sshd did not start: {exc}")
    try:
        for algorithm, kind in [("x509v3-sign-rsa", "RSA"),
                                ("x509v3-ecdsa-sha2-nistp256", "ECDSA")]:
            before = len(sshd.log_text())
            world.assert_login(sshd, algorithm)
            log = sshd.log_text()[before:]
            # a plain key line, matched by the public key alone; then the CA store check
            assert f"Authorized by {kind} : SHA256:" in log, log
            assert re.search(rf"Accepted publickey for {LOGIN_USER} .* {kind}\+cert SHA256:", log)
    finally:
        sshd.stop()


@pytest.mark.parametrize("flags", [0, w.SIGN_ECDSA_DER])
def test_ecdsa_signature_form_matches_pkixssh_agent(world: World, own_agent: Path,
                                                    flags: int) -> None:
    """The sign request PKIX-SSH's client sends (RFC 6187 blob; flag 0x00010000 only to a
    pre-10.0 PKIX-SSH server) gets the same form from idm as from PKIX-SSH's own agent."""
    cert = _load(world.ca.user_cert("pk-ec256"))
    request = w.KeyBlob.rfc6187([cert])
    data = b"session id and userauth request"
    answers = []
    for sock in (own_agent, world.pkix_sock):
        with AgentClient(sock) as c:
            response = c.request(p.SignRequest(request.blob, data, flags))
        assert isinstance(response, p.SignResponse), (sock, world.agent_text()[-1000:])
        name, raw = w.parse_signature_blob(response.signature)
        w.verify_signature(request, data, response.signature, flags)
        answers.append((name, raw[:1] == b"\x30"))  # a DER ECDSA-Sig-Value starts 0x30
    assert answers[0] == answers[1] == ("ecdsa-sha2-nistp256", bool(flags))


def test_revoked_card_refused_while_second_user_logs_in(world: World) -> None:
    """A card that PKIX-SSH's own agent still offers, revoked at the CA, then `idm refresh`:
    (b) refuses it (its sshd has no CRL: the refusal is idm's), while another user's
    certificate on another card still logs in."""
    box = SoftHSM(world.dir / "softhsm-lost")
    card = box.init_token("lost-card")
    cert = world.ca.user("pk-lost")
    box.import_private_key(card, world.ca.user_key("pk-lost"), key_id=b"\x01", label="lost")
    box.import_certificate(card, cert, key_id=b"\x01", label="lost")
    inv = Inventory(world.db)
    try:
        enroll(inv, cert)  # approved in the inventory (the idm agent has no card for it)
        inv.allow(LOGIN_USER, "principal", "pk-lost@example.org", command="test")
        world.refresh()
        with world.pkixssh_agent("lost", box) as sock:
            world.assert_login(world.sshd_b, "x509v3-sign-rsa", sock)

            world.ca.revoke(cert, reason="keyCompromise")
            world.refresh()
            before = len(world.install.log_text())
            world.assert_refused(world.sshd_b, "x509v3-sign-rsa", sock)
            denial = world.install.log_text()[before:]
            assert re.search(r"DENY: user root key ssh-rsa SHA256:\S+ \(sshd asked for "
                             r"x509v3-rsa2048-sha256\): certificate \w+ is revoked", denial)
            world.assert_login(world.sshd_b, "x509v3-ecdsa-sha2-nistp256")
    finally:
        inv.close()
