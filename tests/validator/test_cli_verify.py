"""The `idm verify` contract: options, --json fields, exit codes, targets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from idm.cli import main as cli_main
from idm.cli.verify import JSON_FIELDS
from tests.sample_ca_fixture import SampleCA, make_sample_ca, serving


@pytest.fixture
def idm(monkeypatch):
    monkeypatch.setitem(cli_main.COMMANDS, "verify", "idm.cli.verify:verify")
    runner = CliRunner()

    def run(*args: str | Path):
        return runner.invoke(cli_main.cli, [str(a) for a in args], catch_exceptions=False)

    return run


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> SampleCA:
    ca = make_sample_ca(tmp_path_factory.mktemp("cli"))
    ca.user("revoked")
    ca.revoke(ca.user_cert("revoked"))
    ca.user("expired", "--not-before", "-10d", "--not-after", "-1d")
    ca.run("selfsigned", "selfie")
    return ca


def _lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_json_contract_and_exit_codes(idm, ca):
    crls = ["--crl", ca.crl_intermediate, "--crl", ca.crl_root]
    r = idm("verify", "--ca", ca.ca_bundle, *crls, "--offline", "--json", ca.user_chain("alice"))
    assert r.exit_code == 0, r.output
    (obj,) = _lines(r.output)
    assert tuple(obj) == JSON_FIELDS
    assert obj["valid"] is True and obj["status"] == "valid"
    assert obj["subject"] == "CN=alice,O=idm demo,C=XX"
    assert obj["issuer"] == "CN=idm demo Intermediate CA,O=idm demo,C=XX"
    assert obj["serial"] == ca.serial_of(ca.user_cert("alice")).lower().lstrip("0")
    assert len(obj["sha256"]) == 64
    assert obj["chain"] == [
        "CN=alice,O=idm demo,C=XX",
        "CN=idm demo Intermediate CA,O=idm demo,C=XX",
        "CN=idm demo Root CA,O=idm demo,C=XX",
    ]
    assert obj["ssh_identity"] == "x509"
    for ev in obj["revocation"]:
        assert set(ev) == {"subject", "source", "status", "this_update", "next_update", "url"}
        assert ev["source"] == "crl" and ev["status"] == "good"

    r = idm(
        "verify",
        "--ca",
        ca.ca_bundle,
        "--untrusted",
        ca.chain,
        *crls,
        "--offline",
        "--json",
        ca.user_cert("alice"),
        ca.user_cert("revoked"),
        ca.user_cert("expired"),
    )
    assert r.exit_code == 1
    statuses = [o["status"] for o in _lines(r.output)]
    assert statuses == ["valid", "revoked", "expired"]


def test_self_signed_is_plain(idm, ca):
    r = idm("verify", "--ca", ca.user_cert("selfie"), "--json", ca.user_cert("selfie"))
    (obj,) = _lines(r.output)
    assert r.exit_code == 0 and obj["ssh_identity"] == "plain"
    r = idm("verify", "--ca", ca.ca_bundle, "--json", ca.user_cert("selfie"))
    (obj,) = _lines(r.output)
    assert r.exit_code == 1 and obj["status"] == "untrusted" and obj["ssh_identity"] == "plain"


def test_input_errors_exit_2(idm, ca, tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
    r = idm("verify", "--ca", ca.ca_bundle, "--revocation", "off", "--json", garbage)
    assert r.exit_code == 2
    (obj,) = _lines(r.stdout)
    assert obj["status"] == "malformed" and tuple(obj) == JSON_FIELDS
    assert "garbage.pem" in r.stderr and "malformed PEM" in r.stderr

    r = idm("verify", "--ca", ca.ca_bundle, tmp_path / "missing.pem")
    assert r.exit_code == 2 and "no such file" in r.stderr

    r = idm("verify", ca.user_cert("alice"))
    assert r.exit_code == 2 and "no trust anchors" in r.stderr

    r = idm("verify", "--ca", garbage, ca.user_cert("alice"))
    assert r.exit_code == 2 and "garbage.pem" in r.stderr

    bad_crl = tmp_path / "bad.crl"
    bad_crl.write_bytes(b"\x30\x05junk")
    r = idm("verify", "--ca", ca.ca_bundle, "--crl", bad_crl, ca.user_chain("alice"))
    assert r.exit_code == 2 and "malformed CRL" in r.stderr

    r = idm("verify", "--ca", ca.ca_bundle, "--at", "yesterday", ca.user_cert("alice"))
    assert r.exit_code == 2 and "ISO-8601" in r.stderr

    r = idm("verify", "--ca", ca.ca_bundle, "--revocation", "sometimes", ca.user_cert("alice"))
    assert r.exit_code == 2

    r = idm("verify", "--ca", ca.ca_bundle, "pkcs11:token=x;object=y")
    assert r.exit_code == 2 and "no token matching pkcs11:token=x is present" in r.stderr


def test_at_and_purpose(idm, ca):
    common = ["verify", "--ca", ca.ca_bundle, "--untrusted", ca.chain, "--revocation", "off"]
    r = idm(*common, "--at", "2001-01-01T00:00:00Z", ca.user_cert("alice"))
    assert r.exit_code == 1 and "not-yet-valid" in r.output
    ca.user("server", "--eku", "serverAuth")
    r = idm(*common, ca.user_cert("server"))
    assert r.exit_code == 1 and "invalid-path" in r.output and "extendedKeyUsage" in r.output
    r = idm(*common, "--purpose", "any", ca.user_cert("server"))
    assert r.exit_code == 0


def test_crl_url_ocsp_and_cache(idm, tmp_path):
    ca = make_sample_ca(tmp_path)
    with serving(ca):
        r = idm("verify", "--ca", ca.ca_bundle, "--json", ca.user_chain("bob"))
        assert r.exit_code == 0, r.output
        ca.revoke(ca.user_cert("bob"))
        r = idm(
            "verify",
            "--ca",
            ca.ca_bundle,
            "--crl",
            ca.crl_url("intermediate"),
            "--json",
            ca.user_chain("bob"),
        )
        (obj,) = _lines(r.stdout)
        assert r.exit_code == 1 and obj["status"] == "revoked"
    # the CRL fetched over HTTP is now in the inventory: offline, no CRL given, still revoked
    r = idm("verify", "--ca", ca.ca_bundle, "--offline", "--json", ca.user_chain("bob"))
    (obj,) = _lines(r.stdout)
    assert obj["status"] == "revoked"
    # --no-cache neither reads nor writes it
    r = idm(
        "verify", "--ca", ca.ca_bundle, "--offline", "--no-cache", "--json", ca.user_chain("bob")
    )
    (obj,) = _lines(r.stdout)
    assert obj["status"] == "revocation-unknown"


def test_inventory_fingerprint_target(idm, ca):
    from idm.identity.checker import certificate_record
    from idm.identity.inventory.store import open_inventory
    from idm.validator.bundle import load_certificate_file

    leaf, _ = load_certificate_file(ca.user_cert("alice"))
    inv = open_inventory(None)
    try:
        rec, _ = inv.add_certificate(certificate_record(leaf))
    finally:
        inv.close()
    r = idm(
        "verify",
        "--ca",
        ca.ca_bundle,
        "--untrusted",
        ca.chain,
        "--revocation",
        "off",
        "--json",
        rec.sha256[:16],
    )
    (obj,) = _lines(r.stdout)
    assert r.exit_code == 0 and obj["sha256"] == rec.sha256 and obj["target"] == rec.sha256[:16]
    inv = open_inventory(None)
    try:
        again = inv.certificate(rec.sha256)
    finally:
        inv.close()
    assert again is not None and again.verdict_status == "valid"
    r = idm("verify", "--ca", ca.ca_bundle, "--json", "deadbeefdeadbeef")
    assert r.exit_code == 2 and "no certificate with that fingerprint" in r.stderr
