"""CertificateChecker (configuration → validator) and certificate_record, on sample-ca."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from idm.identity.checker import CertificateChecker, CheckerError, certificate_record
from idm.identity.config import Config
from idm.identity.inventory.store import Inventory


def test_record_matches_openssh_fingerprint(sample_ca, tmp_path: Path) -> None:
    cert = x509.load_pem_x509_certificate(sample_ca.user_cert("alice").read_bytes())
    rec = certificate_record(cert, cka_id=b"\x01\x02", label="alice")
    pub = tmp_path / "alice.pub"
    subprocess.run(
        ["ssh-keygen", "-y", "-f", str(sample_ca.user_key("alice"))],
        check=True,
        stdout=pub.open("w"),
    )
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(pub)], capture_output=True, text=True)
    assert rec.key_fingerprint == out.stdout.split()[1]
    assert rec.key_type == "ssh-rsa" and rec.cka_id == "0102" and not rec.self_signed
    assert rec.subject == "CN=alice,O=idm demo,C=XX"
    assert rec.serial == format(cert.serial_number, "x")


def test_self_signed_is_recorded(sample_ca) -> None:
    sample_ca.run("selfsigned", "solo")
    path = sample_ca.users / "solo.pem"
    rec = certificate_record(x509.load_pem_x509_certificate(path.read_bytes()))
    assert rec.self_signed


def test_checker_needs_anchors() -> None:
    with pytest.raises(CheckerError, match="no trust anchors"):
        CertificateChecker.from_config(Config())


def test_checker_uses_config_and_caches_crls_in_inventory(sample_ca, tmp_path: Path) -> None:
    config = Config()
    config.validation.ca = [sample_ca.ca_bundle]
    config.validation.untrusted = [sample_ca.chain]
    config.revocation.crl = [sample_ca.dir / "crl"]
    config.revocation.offline = True
    inv = Inventory(f"sqlite:///{tmp_path / 'inv.sqlite'}")
    checker = CertificateChecker.from_config(config, inv)
    alice = sample_ca.user_cert("alice").read_bytes()
    verdict = checker.check(alice)
    assert verdict.valid, verdict.reason
    sample_ca.revoke(sample_ca.user_cert("alice"), reason="keyCompromise")
    checker = CertificateChecker.from_config(config, inv)
    verdict = checker.check(alice)
    assert verdict.status == "revoked", verdict.reason
    # the CRL is now held in the inventory: without any CRL given, still revoked
    config.revocation.crl = []
    verdict = CertificateChecker.from_config(config, inv).check(alice)
    assert verdict.status == "revoked", verdict.reason
    inv.close()
