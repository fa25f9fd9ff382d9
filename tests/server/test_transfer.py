"""A client's enrollment reaches a separately configured server: `idm export` → `idm import`.

The client has its own configuration and SQLite inventory and a SoftHSM2 card; the server
has its own configuration (its own trust anchors), its own inventory and sshd with the
helper installed as sshd requires. Nothing is shared but the export file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sample_ca_fixture import SampleCA, make_sample_ca, serving

from tests.server.helpers import HelperInstall, idm, write_config
from tests.softhsm import SOFTHSM_MODULE, SoftHSM, SoftHSMToken
from tests.sshd import SSH, SshdServer, SshdUnavailable, start_sshd

pytestmark = [pytest.mark.sshd, pytest.mark.softhsm]


@dataclass
class Side:
    """One machine's idm: its configuration file and inventory URL."""

    config: Path
    db: str

    def idm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return idm(*args, config=self.config, db=self.db, check=check)


@dataclass
class Client(Side):
    softhsm: SoftHSM
    ca: SampleCA
    work: Path

    def new_card(self, label: str, name: str) -> SoftHSMToken:
        """A card with a key made on it, certified by the sample CA, enrolled here."""
        token = self.softhsm.init_token(label)
        uri = token.uri_with_pin
        csr = self.work / f"{label}.csr"
        self.idm("enroll", "--token", uri, "--new-key", "ec-p256",
                 "--subject", f"CN={name},O=idm demo,C=XX", "--label", "ssh", "--csr", str(csr))
        cert = self.work / f"{label}.pem"
        self.ca.run_raw("issue", self.ca.dir, "--csr", csr, "--out", cert,
                        "--email", f"{name}@example.org")
        self.idm("enroll", "--token", uri, "--import-cert", str(cert))
        return token


@dataclass
class World:
    client: Client
    server: Side
    install: HelperInstall
    work: Path
    sshd: SshdServer | None = None

    def start_sshd(self) -> SshdServer:
        """sshd asking the server's helper (stopped by the fixture)."""
        try:
            self.sshd = start_sshd(self.work / "sshd", extra_config=[
                f"AuthorizedKeysCommand {self.install.wrapper} %u %t %k",
                "AuthorizedKeysCommandUser nobody",
            ])
        except SshdUnavailable as exc:
            pytest.skip(str(exc))
        return self.sshd

    def login(self, token: SoftHSMToken) -> subprocess.CompletedProcess[str]:
        """Plain OpenSSH with the card (PKCS11Provider), the PIN from askpass."""
        askpass = self.work / "askpass"
        askpass.write_text(f"#!/bin/sh\necho {token.pin}\n")
        askpass.chmod(0o700)
        env = dict(self.client.softhsm.env, SSH_ASKPASS=str(askpass),
                   SSH_ASKPASS_REQUIRE="force")
        env.pop("SSH_AUTH_SOCK", None)
        assert SSH is not None and self.sshd is not None
        cmd = [SSH, "-F", "/dev/null", "-p", str(self.sshd.port),
               "-o", f"UserKnownHostsFile={self.sshd.known_hosts}",
               "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=no",
               "-o", "PasswordAuthentication=no", "-o", "KbdInteractiveAuthentication=no",
               "-o", "IdentityAgent=none", "-o", f"PKCS11Provider={SOFTHSM_MODULE}",
               "-o", "ConnectTimeout=10", f"{self.sshd.user}@127.0.0.1", "echo", "logged-in"]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env,
                              stdin=subprocess.DEVNULL, check=False)


@pytest.fixture
def world(tmp_path: Path, softhsm: SoftHSM) -> Iterator[World]:
    if os.geteuid() != 0:
        pytest.skip("sshd with privilege separation and AuthorizedKeysCommandUser needs root")
    if not Path("/usr/bin/python3").exists():
        pytest.skip("the helper install for nobody needs /usr/bin/python3")
    ca = make_sample_ca(tmp_path)
    # The client trusts the sample CA through its own copy of the files.
    client_dir = tmp_path / "client"
    client_dir.mkdir()
    client_config = client_dir / "config.toml"
    client_config.write_text(
        f'[validation]\nca = ["{ca.ca_bundle}"]\nuntrusted = ["{ca.chain}"]\n'
        f'[revocation]\npolicy = "hard-fail"\n[tokens]\nproviders = ["{SOFTHSM_MODULE}"]\n'
    )
    client = Client(client_config, f"sqlite:///{client_dir / 'inventory.sqlite'}",
                    softhsm, ca, client_dir)
    install = HelperInstall.create()
    server_ca = install.state / "ca-bundle.pem"
    server_chain = install.state / "chain.pem"
    shutil.copy(ca.ca_bundle, server_ca)
    shutil.copy(ca.chain, server_chain)
    write_config(install.config, ca=server_ca, untrusted=server_chain,
                 snapshot=install.snapshot, mapping=("principals",))
    server = Side(install.config, f"sqlite:///{tmp_path / 'server' / 'inventory.sqlite'}")
    world = World(client, server, install, tmp_path)
    try:
        with serving(ca):
            yield world
    finally:
        if world.sshd is not None:
            world.sshd.stop()
        install.remove()


def test_client_enrollment_reaches_a_separate_server_through_export_and_import(
    world: World,
) -> None:
    sshd = world.start_sshd()
    token = world.client.new_card("carol-card", "carol")
    export = world.work / "carol.idm.json"
    out = world.client.idm("export", "--output", str(export))
    assert "exported 1 approved certificate(s)" in out.stderr
    doc = json.loads(export.read_text())
    (entry,) = doc["certificates"]
    assert doc["format"] == "idm-export" and doc["version"] == 1
    assert entry["pem"].startswith("-----BEGIN CERTIFICATE-----")
    assert entry["token"]["label"] == "carol-card" and entry["token"]["serial"] == token.serial
    assert entry["principals"] == ["email:carol@example.org"]
    assert "PRIVATE KEY" not in export.read_text() and token.pin not in export.read_text()

    # Before the import, the server knows nothing of carol.
    world.server.idm("allow", sshd.user, "--principal", "carol@example.org")
    world.server.idm("refresh")
    assert world.login(token).returncode == 255

    imported = world.server.idm("import", str(export))
    assert "1 certificate(s): 1 approved" in imported.stdout, imported.stdout
    assert entry["sha256"][:16] in imported.stdout and "carol-card" in imported.stdout
    listing = world.server.idm("list", "--json").stdout
    assert entry["sha256"] in listing
    # Idempotent: the same file again changes nothing.
    again = world.server.idm("import", str(export), "--json")
    report = json.loads(again.stdout)
    assert report["changed"] is False
    assert [c["status"] for c in report["certificates"]] == ["approved"]

    refreshed = world.server.idm("refresh")
    assert refreshed.returncode == 0, refreshed.stderr
    r = world.login(token)
    assert r.returncode == 0 and r.stdout.strip() == "logged-in", (
        r.stderr + world.install.log_text()[-2000:])
    assert f"Accepted publickey for {sshd.user}" in sshd.log_text()


def test_import_validates_with_the_servers_own_anchors(world: World, tmp_path: Path) -> None:
    """A file saying "approved" cannot make a certificate approved: a server that does not
    trust the client's CA rejects the import, records why, and does not let it log in."""
    token = world.client.new_card("dave-card", "dave")
    export = world.work / "dave.idm.json"
    world.client.idm("export", "--output", str(export))
    other = make_sample_ca(tmp_path, subdir="other-ca")  # the server trusts only this CA
    shutil.copy(other.ca_bundle, world.install.state / "ca-bundle.pem")
    shutil.copy(other.chain, world.install.state / "chain.pem")

    r = world.server.idm("import", str(export), "--json", check=False)
    assert r.returncode == 1, r.stderr
    (cert,) = json.loads(r.stdout)["certificates"]
    assert cert["status"] == "rejected" and cert["reason"], cert
    sshd = world.start_sshd()
    world.server.idm("allow", sshd.user, "--principal", "dave@example.org")
    world.server.idm("refresh")
    assert world.login(token).returncode == 255
    shown = world.server.idm("show", cert["sha256"][:16])
    assert "rejected" in shown.stdout


def test_import_of_a_bad_file_changes_nothing(world: World) -> None:
    bad = world.work / "bad.json"
    for content, message in [
        ("not json", "not JSON"),
        ('{"format": "something-else"}', "not an idm export document"),
        ('{"format": "idm-export", "version": 99, "certificates": []}', "version 99"),
    ]:
        bad.write_text(content)
        r = world.server.idm("import", str(bad), check=False)
        assert r.returncode == 2 and message in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1
    r = world.server.idm("import", str(world.work / "missing.json"), check=False)
    assert r.returncode == 2 and "cannot read" in r.stderr
    # An entry whose certificate is garbage is refused by name; the others still import.
    world.client.new_card("erin-card", "erin")
    doc = json.loads(world.client.idm("export").stdout)
    doc["certificates"].insert(0, {**doc["certificates"][0], "pem": "garbage"})
    bad.write_text(json.dumps(doc))
    r = world.server.idm("import", str(bad), "--json", check=False)
    assert r.returncode == 1
    statuses = [(c["entry"], c["status"]) for c in json.loads(r.stdout)["certificates"]]
    assert statuses == [(0, "refused"), (1, "approved")]


def test_export_names_one_certificate_and_refuses_an_unknown_one(world: World) -> None:
    world.client.new_card("fay-card", "fay")
    world.client.new_card("gus-card", "gus")
    everything = json.loads(world.client.idm("export").stdout)["certificates"]
    assert sorted(c["token"]["label"] for c in everything) == ["fay-card", "gus-card"]
    fay = next(c for c in everything if c["token"]["label"] == "fay-card")
    one = json.loads(world.client.idm("export", fay["sha256"][:12]).stdout)["certificates"]
    assert [c["sha256"] for c in one] == [fay["sha256"]]
    r = world.client.idm("export", "00" * 8, check=False)
    assert r.returncode == 2 and "no approved certificate" in r.stderr


def test_import_reads_stdin(world: World) -> None:
    world.client.new_card("hal-card", "hal")
    doc = world.client.idm("export").stdout
    cmd = [sys.executable, "-c", "from idm.cli.entry import main; main()",
           "--db", world.server.db, "--config", str(world.server.config), "import", "-"]
    r = subprocess.run(cmd, input=doc, capture_output=True, text=True, check=False)
    assert r.returncode == 0 and "1 approved" in r.stdout, r.stderr


def test_a_replaced_card_imported_retires_the_old_one_on_the_server(world: World) -> None:
    world.client.new_card("ivy-card-1", "ivy")
    first = json.loads(world.client.idm("export").stdout)["certificates"][0]["sha256"]
    export = world.work / "ivy.idm.json"
    world.client.idm("export", "--output", str(export))
    world.server.idm("import", str(export))
    world.client.new_card("ivy-card-2", "ivy")  # same subject: the client retires card 1
    world.client.idm("export", "--output", str(export))
    exported = [c["token"]["label"] for c in json.loads(export.read_text())["certificates"]]
    assert exported == ["ivy-card-2"]
    report = json.loads(world.server.idm("import", str(export), "--json").stdout)
    assert report["superseded"] == [first]
    shown = world.server.idm("show", first[:16]).stdout
    assert "superseded" in shown and "ivy-card-2" in shown


@pytest.mark.postgres
def test_client_enrollment_reaches_the_server_through_a_shared_postgresql(
    world: World, postgres_url: str
) -> None:
    """The other supported way: client and server name the same PostgreSQL inventory
    (each keeps its own configuration and trust anchors); no file moves."""
    world.client.db = world.server.db = postgres_url
    world.client.idm("db", "upgrade")
    sshd = world.start_sshd()
    token = world.client.new_card("judy-card", "judy")
    world.server.idm("allow", sshd.user, "--principal", "judy@example.org")
    refreshed = world.server.idm("refresh")
    assert "judy" in refreshed.stdout, refreshed.stdout
    r = world.login(token)
    assert r.returncode == 0 and r.stdout.strip() == "logged-in", (
        r.stderr + world.install.log_text()[-2000:])
