"""Certificate logins through a real OpenSSH sshd whose AuthorizedKeysCommand is idm.

One sshd, one sample CA (serving CRLs and OCSP on 127.0.0.1) and one inventory are shared
by the tests of this module; every test issues its own users, so they do not depend on
each other's order. sshd runs the helper as `nobody` from a root-owned folder, as a real
installation must.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from sample_ca_fixture import SampleCA, make_sample_ca, serving

from idm.identity.inventory.store import Inventory
from idm.identity.server.snapshot import Snapshot, write_snapshot
from tests.server.helpers import HelperInstall, enroll, idm, plain_pub_line, write_config
from tests.softhsm import SoftHSM, SoftHSMToken
from tests.sshd import SshdServer, SshdUnavailable, start_sshd

pytestmark = pytest.mark.sshd


@dataclass
class World:
    ca: SampleCA
    inv: Inventory
    db: str
    install: HelperInstall
    sshd: SshdServer

    def refresh(self) -> subprocess.CompletedProcess[str]:
        return idm("refresh", config=self.install.config, db=self.db)

    def person(self, name: str, *options: str) -> Path:
        """Issue NAME's certificate, enroll it and let root log in with it."""
        cert = self.ca.user(name, *options)
        enroll(self.inv, cert)
        email = next((options[i + 1] for i, o in enumerate(options) if o == "--email"),
                     f"{name}@example.org")
        self.inv.allow("root", "principal", email, command="test")
        return cert

    def login(self, cert: Path) -> subprocess.CompletedProcess[str]:
        key = str(cert)[: -len(".pem")] + ".key"
        cmd = self.sshd.ssh_command(
            "echo", "logged-in",
            options=[f"IdentityFile={key}", "IdentitiesOnly=yes", "IdentityAgent=none"],
        )
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL, check=False)

    def assert_login(self, cert: Path) -> None:
        proc = self.login(cert)
        assert proc.returncode == 0 and "logged-in" in proc.stdout, (
            f"login refused: {proc.stderr}\nhelper log:\n{self.install.log_text()[-2000:]}"
        )

    def assert_refused(self, cert: Path) -> None:
        proc = self.login(cert)
        assert proc.returncode == 255 and "logged-in" not in proc.stdout, proc.stdout


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if os.geteuid() != 0:
        pytest.skip("sshd with privilege separation and AuthorizedKeysCommandUser needs root")
    if not Path("/usr/bin/python3").exists():
        pytest.skip("the helper install for nobody needs /usr/bin/python3")
    tmp = tmp_path_factory.mktemp("sshd-world")
    ca = make_sample_ca(tmp)
    db = f"sqlite:///{tmp / 'inventory.sqlite'}"
    inv = Inventory(db)
    install = HelperInstall.create()
    write_config(install.config, ca=ca.ca_bundle, untrusted=ca.chain,
                 snapshot=install.snapshot)
    try:
        with serving(ca):
            try:
                sshd = start_sshd(
                    tmp / "sshd",
                    extra_config=[
                        f"AuthorizedKeysCommand {install.wrapper} %u %t %k",
                        "AuthorizedKeysCommandUser nobody",
                        "MaxStartups 200",
                    ],
                )
            except SshdUnavailable as exc:
                pytest.skip(str(exc))
            try:
                yield World(ca, inv, db, install, sshd)
            finally:
                sshd.stop()
    finally:
        inv.close()
        install.remove()


def test_certificate_login_then_refused_after_crl_revocation(world: World) -> None:
    cert = world.person("crl-user", "--no-ocsp")  # revocation status from its CRL DP only
    world.refresh()
    world.assert_login(cert)

    world.ca.revoke(cert, reason="keyCompromise")
    out = world.refresh().stdout
    assert "revoked" in out
    world.assert_refused(cert)
    assert "crl-user" in world.install.log_text() and "is revoked" in world.install.log_text()


def test_certificate_login_then_refused_after_ocsp_revocation(world: World) -> None:
    cert = world.person("ocsp-user", "--no-cdp")  # revocation status from OCSP only
    world.refresh()
    world.assert_login(cert)

    world.ca.revoke(cert)
    world.refresh()
    world.assert_refused(cert)
    rec = world.inv.certificate(_sha(cert))
    assert rec is not None and rec.status == "revoked" and "OCSP" in (rec.status_reason or "")


def test_card_replacement_needs_no_server_change(world: World) -> None:
    config_before = world.sshd.config.read_bytes()
    keys_before = world.sshd.authorized_keys.read_bytes()
    old = world.person("frank")
    world.refresh()
    world.assert_login(old)

    # A new card: a new key and certificate for the same person; the old one superseded.
    new = world.person("frank-card2", "--cn", "frank", "--email", "frank@example.org")
    world.inv.set_status(_sha(old), "superseded", "replaced by a new card", command="test")
    world.refresh()
    world.assert_login(new)
    world.assert_refused(old)
    assert "superseded" in world.install.log_text()
    assert world.sshd.config.read_bytes() == config_before
    assert world.sshd.authorized_keys.read_bytes() == keys_before


def test_stale_corrupt_or_missing_snapshot_refuses(world: World) -> None:
    cert = world.person("grace")
    world.refresh()
    world.assert_login(cert)
    snap_path = world.install.snapshot

    with Snapshot(snap_path) as snap:
        entries, info = snap.all_keys(), snap.info
    # The timer stopped an hour ago: same content, deadline passed.
    write_snapshot(snap_path, entries, written_at=info.written_at - 7200,
                   deadline=info.written_at - 3600, source="test")
    world.assert_refused(cert)
    assert "is stale" in world.install.log_text().splitlines()[-1]

    snap_path.write_bytes(b"SQLite format 3\x00" + b"\xff" * 3000)
    world.assert_refused(cert)
    assert "corrupt" in world.install.log_text().splitlines()[-1]

    snap_path.unlink()
    world.assert_refused(cert)
    assert "missing" in world.install.log_text().splitlines()[-1]

    world.refresh()
    world.assert_login(cert)


def test_fifty_logins_at_once(world: World) -> None:
    cert = world.person("heidi", "--key", "ec-p256")
    world.refresh()
    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(lambda _: world.login(cert), range(50)))
    failed = [r.stderr for r in results if r.returncode != 0 or "logged-in" not in r.stdout]
    assert not failed, f"{len(failed)} of 50 logins failed: {failed[:3]}"


def _as_nobody(install: HelperInstall, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
         str(install.wrapper), *args],
        capture_output=True, text=True, check=False, env={"PATH": "/usr/bin:/bin"},
    )


@pytest.mark.parametrize(
    "args",
    [
        ("root", "ssh-rsa", "!!!not-base64!!!"),
        ("root", "ssh-rsa", ""),
        ("root", "ssh-rsa", "AAAA" * 20000),
        ("root", "ssh rsa", "AAAA"),
        ("root", "ecdsa-sha2-nistp256", "AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYA"),
        ("root", "x509v3-sign-rsa", "MIIBAAAA"),
        ("root", "x509v3-ecdsa-sha2-nistp256", "AAAAAQ=="),
        ("root", "ssh-rsa"),
        ("root", "\x01", "AAAA"),
    ],
)
def test_malformed_key_input_is_refused_without_traceback(
    world: World, args: tuple[str, ...]
) -> None:
    proc = _as_nobody(world.install, *args)
    assert proc.returncode != 0
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("idm authorized-keys: DENY:")


def test_nobody_lists_all_keys_of_a_user(world: World) -> None:
    cert = world.person("ivan")
    world.refresh()
    proc = _as_nobody(world.install, "root")
    assert proc.returncode == 0, proc.stderr
    assert "CN=ivan" in proc.stdout
    assert all(line.startswith('expiry-time="') for line in proc.stdout.splitlines())
    del cert


def _sha(cert: Path) -> str:
    import hashlib

    from cryptography.hazmat.primitives.serialization import Encoding

    from tests.server.helpers import load_cert

    return hashlib.sha256(load_cert(cert).public_bytes(Encoding.DER)).hexdigest()


# -- cards (SoftHSM2 tokens enrolled with `idm enroll`) and the idm agent -----------------


def _card(box: SoftHSM, label: str, cert: Path) -> SoftHSMToken:
    """A SoftHSM2 token holding the sample-ca user's key and certificate (a smartcard)."""
    tok = box.init_token(label)
    key = Path(str(cert)[: -len(".pem")] + ".key")
    box.import_private_key(tok, key, key_id=b"\x01", label="ssh")
    box.import_certificate(tok, cert, key_id=b"\x01", label="ssh")
    return tok


def _enroll_card(world: World, tok: SoftHSMToken) -> dict:
    proc = idm("enroll", "--token", tok.uri_with_pin, "--json", config=world.install.config,
               db=world.db, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_card_replacement_with_idm_enroll(world: World, softhsm: SoftHSM) -> None:
    old = world.ca.user("judy")
    world.inv.allow("root", "principal", "judy@example.org", command="test")
    _enroll_card(world, _card(softhsm, "judy-card-1", old))
    world.refresh()
    world.assert_login(old)

    new = world.ca.user("judy-card2", "--cn", "judy", "--email", "judy@example.org")
    _enroll_card(world, _card(softhsm, "judy-card-2", new))
    old_rec = world.inv.certificate(_sha(old))
    assert old_rec is not None and old_rec.status == "superseded", old_rec
    world.refresh()
    world.assert_login(new)
    world.assert_refused(old)


def _start_agent(sock: Path, env: dict[str, str], db: str | None = None,
                 config: Path | None = None) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-c", "from idm.cli.entry import main; main()"]
    if db:
        cmd += ["--db", db]
    if config:
        cmd += ["--config", str(config)]
    proc = subprocess.Popen([*cmd, "agent", "-D", "-a", str(sock)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    proc.stdout.readline()  # SSH_AUTH_SOCK=…: the socket is listening
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_login_through_idm_agent_with_an_added_key(world: World) -> None:
    cert = world.person("kate")
    world.refresh()
    short = Path(tempfile.mkdtemp(prefix="idm-srv-", dir="/tmp"))
    agent = _start_agent(short / "agent.sock", dict(os.environ))
    try:
        env = dict(os.environ, SSH_AUTH_SOCK=str(short / "agent.sock"))
        key = str(cert)[: -len(".pem")] + ".key"
        subprocess.run(["ssh-add", key], env=env, check=True, capture_output=True)
        proc = subprocess.run(
            world.sshd.ssh_command("echo", "logged-in", agent=short / "agent.sock"),
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False,
        )
        assert proc.returncode == 0 and "logged-in" in proc.stdout, proc.stderr
    finally:
        _stop(agent)
        shutil.rmtree(short, ignore_errors=True)


def test_login_through_idm_agent_with_a_card(world: World, softhsm: SoftHSM) -> None:
    cert = world.ca.user("leo")
    world.inv.allow("root", "principal", "leo@example.org", command="test")
    _enroll_card(world, _card(softhsm, "leo-card", cert))
    world.refresh()
    short = Path(tempfile.mkdtemp(prefix="idm-srv-", dir="/tmp"))
    askpass = short / "askpass.sh"
    askpass.write_text("#!/bin/sh\necho 1234\n")
    askpass.chmod(0o700)
    env = dict(os.environ, SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force")
    env.pop("DISPLAY", None)
    agent = _start_agent(short / "agent.sock", env, db=world.db, config=world.install.config)
    try:
        listed = subprocess.run(["ssh-add", "-L"], capture_output=True, text=True, check=False,
                                env=dict(os.environ, SSH_AUTH_SOCK=str(short / "agent.sock")))
        card_key = plain_pub_line(cert).split()[1]
        assert card_key in listed.stdout, f"the card's key is not served: {listed.stdout}"
        proc = subprocess.run(
            world.sshd.ssh_command("echo", "logged-in", agent=short / "agent.sock"),
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False,
        )
        assert proc.returncode == 0 and "logged-in" in proc.stdout, proc.stderr
    finally:
        _stop(agent)
        shutil.rmtree(short, ignore_errors=True)
