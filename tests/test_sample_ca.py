"""Tests of the demo PKI tool sample-ca/sample_ca.py against openssl and its own server."""

from __future__ import annotations

import base64
import datetime as dt
import json
import signal
import stat
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sample_ca_fixture import (
    SampleCA,
    SampleCAServer,
    SampleCAToolError,
    make_sample_ca,
    run_tool,
    serving,
)

UPN_OID = x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")
SSH_CLIENT_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.21")


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def load_crl(path: Path) -> x509.CertificateRevocationList:
    return x509.load_der_x509_crl(path.read_bytes())


def crl_lifetime(crl: x509.CertificateRevocationList) -> dt.timedelta:
    assert crl.next_update_utc is not None
    return crl.next_update_utc - crl.last_update_utc


def openssl(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", *(str(a) for a in args)], capture_output=True, text=True, cwd=cwd, check=False
    )


def verify(ca: SampleCA, cert: Path, *extra: str | Path) -> subprocess.CompletedProcess[str]:
    return openssl("verify", "-CAfile", ca.root, "-untrusted", ca.intermediate, *extra, cert)


def ocsp_query(ca: SampleCA, cert: Path, issuer: Path, *trust: str | Path) -> str:
    proc = openssl(
        "ocsp", "-issuer", issuer, "-cert", cert, "-url", ca.ocsp_url, *trust, "-timeout", "20"
    )
    assert proc.returncode == 0, proc.stderr
    # openssl prints "Response verify OK" on stderr, the status on stdout.
    assert "Response verify OK" in proc.stderr, proc.stderr
    assert "nonce" not in proc.stderr.lower(), proc.stderr  # our nonce came back
    return proc.stdout


def http_get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=20) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


def http_post(url: str, body: bytes) -> tuple[int, bytes]:
    req = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/ocsp-request"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=20) as resp:
        return resp.status, resp.read()


def ocsp_request(cert: Path, issuer: Path, nonce: bytes | None = None) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(load(cert), load(issuer), hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def assert_signed_by(resp: ocsp.OCSPResponse, signer: x509.Certificate) -> None:
    key = signer.public_key()
    assert isinstance(key, rsa.RSAPublicKey)  # all sample CA signers are RSA
    assert resp.signature_hash_algorithm is not None
    key.verify(
        resp.signature, resp.tbs_response_bytes, padding.PKCS1v15(), resp.signature_hash_algorithm
    )


@pytest.fixture(scope="module")
def shared_ca(tmp_path_factory: pytest.TempPathFactory) -> SampleCA:
    """One CA for tests that only read it."""
    return make_sample_ca(tmp_path_factory.mktemp("shared"))


@pytest.fixture(scope="module")
def shared_server(shared_ca: SampleCA) -> Iterator[SampleCAServer]:
    """The shared CA's server, for tests that only query it."""
    with serving(shared_ca) as server:
        yield server


@pytest.fixture
def ca(tmp_path: Path) -> SampleCA:
    """A fresh CA for tests that change it."""
    return make_sample_ca(tmp_path)


@pytest.fixture
def served_ca(ca: SampleCA) -> Iterator[SampleCA]:
    """A fresh CA with its server running."""
    with serving(ca):
        yield ca


# --- help and argument errors -------------------------------------------------------


def test_help_shows_layout_and_dn_pattern() -> None:
    out = run_tool("--help").stdout
    for word in ("init", "user", "issue", "revoke", "crl", "selfsigned", "serve"):
        assert word in out
    assert "CN=NAME,O=idm demo,C=XX" in out
    assert "users/NAME-chain.pem" in out
    assert "production" in out


@pytest.mark.parametrize(
    "command", ["init", "user", "issue", "revoke", "crl", "selfsigned", "serve", "list"]
)
def test_every_command_has_help(command: str) -> None:
    proc = run_tool(command, "--help")
    assert proc.stdout.startswith("usage: sample_ca " + command)


@pytest.mark.parametrize(
    "args, message",
    [
        (["init", "x"], "--port"),
        (["init", "x", "--port", "99999"], "port must be"),
        (["init", "x", "--port", "80", "--days", "0"], "positive"),
        (["user", "x", "carol", "--key", "dsa"], "invalid choice"),
        (["user", "x", "carol", "--not-after", "+1d", "--days", "3"], "not allowed with"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args: list[str], message: str) -> None:
    proc = run_tool(*args, check=False)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("sample_ca") and "error:" in last and message in last
    assert "Traceback" not in proc.stderr


def test_commands_on_a_non_ca_directory_fail_clearly(tmp_path: Path) -> None:
    for args in (["user", tmp_path, "carol"], ["crl", tmp_path], ["serve", tmp_path]):
        proc = run_tool(*args, check=False)
        assert proc.returncode == 2
        assert proc.stderr.strip() == f"sample_ca: error: {tmp_path} is not a sample CA " \
            "(no state.json): run `init` first"


def test_init_refuses_to_overwrite_without_force(ca: SampleCA) -> None:
    old_root = ca.root.read_bytes()
    proc = run_tool("init", ca.dir, "--port", str(ca.port), check=False)
    assert proc.returncode == 2 and "--force" in proc.stderr
    assert ca.root.read_bytes() == old_root
    ca.user("carol")
    run_tool("init", ca.dir, "--port", str(ca.port), "--force")
    assert ca.root.read_bytes() != old_root
    assert not ca.user_cert("carol").exists()
    assert len(ca.records()) == 5  # root, intermediate, ocsp, alice, bob


def test_bad_input_errors(ca: SampleCA) -> None:
    cases = [
        (["user", "../evil"], "bad name"),
        (["user", "carol", "--not-before", "yesterday"], "bad time 'yesterday'"),
        (["user", "carol", "--not-before", "+2d", "--not-after", "+1d"], "is not later than"),
        (["user", "alice"], "already exists"),
        (["revoke", "--serial", "xyz"], "bad serial"),
        (["revoke", "--serial", "1234"], "was not issued"),
        (["revoke"], "exactly one of CERTFILE or --serial"),
        (["revoke", ca.root], "root cannot be revoked"),
        (["revoke", ca.dir / "nope.pem"], "cannot read certificate"),
        (["user", "carol", "--eku", "none", "--eku", "clientAuth"], "cannot be combined"),
    ]
    for args, message in cases:
        proc = ca.run(args[0], *args[1:], check=False)
        assert proc.returncode == 2, args
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert message in proc.stderr, (args, proc.stderr)
    with pytest.raises(SampleCAToolError, match="already exists"):
        ca.user("alice")


# --- init: layout, chain, extensions --------------------------------------------------


def test_init_chain_verifies_with_openssl(shared_ca: SampleCA) -> None:
    ca = shared_ca
    for cert in (ca.user_cert("alice"), ca.user_cert("bob"), ca.ocsp):
        proc = verify(ca, cert)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == f"{cert}: OK"
    # chain.pem and the per-user chain file are what a client sends as untrusted certs
    proc = openssl("verify", "-CAfile", ca.ca_bundle, "-untrusted", ca.chain, ca.user_cert("bob"))
    assert proc.returncode == 0, proc.stderr
    proc = openssl(
        "verify", "-CAfile", ca.ca_bundle, "-untrusted", ca.user_chain("alice"),
        ca.user_cert("alice"),
    )
    assert proc.returncode == 0, proc.stderr
    # without the intermediate the leaf does not chain: the bundle really is the root only
    proc = openssl("verify", "-CAfile", ca.ca_bundle, ca.user_cert("alice"))
    assert proc.returncode != 0


def test_init_files_and_bundles(shared_ca: SampleCA) -> None:
    ca = shared_ca
    root, intermediate = load(ca.root), load(ca.intermediate)
    assert x509.load_pem_x509_certificates(ca.ca_bundle.read_bytes()) == [root]
    assert x509.load_pem_x509_certificates(ca.chain.read_bytes()) == [intermediate]
    alice_chain = x509.load_pem_x509_certificates(ca.user_chain("alice").read_bytes())
    assert alice_chain == [load(ca.user_cert("alice")), intermediate]
    for key in (ca.root_key, ca.intermediate_key, ca.ocsp_key, ca.user_key("alice")):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert isinstance(
        serialization.load_pem_private_key(ca.user_key("alice").read_bytes(), None),
        rsa.RSAPrivateKey,
    )
    bob_key = serialization.load_pem_private_key(ca.user_key("bob").read_bytes(), None)
    assert isinstance(bob_key, ec.EllipticCurvePrivateKey)
    assert bob_key.curve.name == "secp256r1"
    assert bob_key.public_key() == load(ca.user_cert("bob")).public_key()
    leftovers = [p.name for p in ca.dir.rglob(".*") if p.name != ".lock"]
    assert leftovers == []  # no temporary files from atomic writes


def test_ca_certificates(shared_ca: SampleCA) -> None:
    ca = shared_ca
    root, intermediate = load(ca.root), load(ca.intermediate)
    assert root.subject == root.issuer
    assert root.subject.rfc4514_string() == "CN=idm demo Root CA,O=idm demo,C=XX"
    bc = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = root.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign
    assert intermediate.issuer == root.subject
    assert intermediate.extensions.get_extension_for_class(x509.BasicConstraints).value == (
        x509.BasicConstraints(ca=True, path_length=0)
    )
    cdp = intermediate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert cdp[0].full_name == [x509.UniformResourceIdentifier(ca.crl_url("root"))]
    aia = intermediate.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert [d.access_location.value for d in aia] == [ca.ocsp_url]

    responder = load(ca.ocsp)
    assert responder.issuer == intermediate.subject
    eku = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.OCSP_SIGNING]
    responder.extensions.get_extension_for_class(x509.OCSPNoCheck)


def test_user_certificates(shared_ca: SampleCA) -> None:
    ca = shared_ca
    for name, key_type in (("alice", rsa.RSAPublicKey), ("bob", ec.EllipticCurvePublicKey)):
        cert = load(ca.user_cert(name))
        assert cert.subject.rfc4514_string() == f"CN={name},O=idm demo,C=XX"
        assert isinstance(cert.public_key(), key_type)
        ext = cert.extensions
        san = ext.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.RFC822Name) == [f"{name}@example.org"]
        ku = ext.get_extension_for_class(x509.KeyUsage).value
        assert ku.digital_signature and not ku.key_cert_sign
        assert list(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
            ExtendedKeyUsageOID.CLIENT_AUTH
        ]
        cdp = ext.get_extension_for_class(x509.CRLDistributionPoints).value
        assert cdp[0].full_name == [x509.UniformResourceIdentifier(ca.crl_url("intermediate"))]
        aia = ext.get_extension_for_class(x509.AuthorityInformationAccess).value
        assert {(d.access_method, d.access_location.value) for d in aia} == {
            (x509.AuthorityInformationAccessOID.OCSP, ca.ocsp_url),
            (x509.AuthorityInformationAccessOID.CA_ISSUERS, f"{ca.base_url}/ca/intermediate.cer"),
        }


def test_state_records_every_certificate(shared_ca: SampleCA) -> None:
    records = shared_ca.records()
    assert [r["file"] for r in records] == [
        "root.pem", "intermediate.pem", "ocsp.pem", "users/alice.pem", "users/bob.pem",
    ]
    for r in records:
        cert = load(shared_ca.dir / r["file"])
        # the same spelling `openssl x509 -serial` prints, so tests can compare strings
        out = openssl("x509", "-in", shared_ca.dir / r["file"], "-noout", "-serial").stdout
        assert out.strip() == f"serial={r['serial']}"
        assert r["subject"] == cert.subject.rfc4514_string()
        assert r["status"] == "valid" and r["revoked_at"] is None and r["reason"] is None
    assert json.loads(shared_ca.run("list", "--json").stdout) == records
    assert "users/alice.pem" in shared_ca.run("list").stdout
    assert [r["issuer"] for r in records] == ["root", "root", "intermediate"] + [
        "intermediate"
    ] * 2


def test_initial_crls(shared_ca: SampleCA) -> None:
    for path, cert in ((shared_ca.crl_root, shared_ca.root),
                       (shared_ca.crl_intermediate, shared_ca.intermediate)):
        crl, issuer = load_crl(path), load(cert)
        assert crl.issuer == issuer.subject
        issuer_key = issuer.public_key()
        assert isinstance(issuer_key, rsa.RSAPublicKey)
        assert crl.is_signature_valid(issuer_key)
        assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 1
        aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        assert aki.key_identifier == ski.digest
        assert crl_lifetime(crl) == dt.timedelta(days=7)
        assert len(crl) == 0


# --- revocation and CRLs ----------------------------------------------------------------


def test_revoke_shows_in_crl_and_openssl_verify(ca: SampleCA) -> None:
    alice = ca.user_cert("alice")
    crl_check = ("-crl_check", "-CRLfile", ca.crl_intermediate)
    assert verify(ca, alice, *crl_check).returncode == 0
    ca.revoke(alice, reason="keyCompromise")
    proc = verify(ca, alice, *crl_check)
    assert proc.returncode != 0
    assert "certificate revoked" in proc.stdout + proc.stderr
    assert verify(ca, ca.user_cert("bob"), *crl_check).returncode == 0

    crl = load_crl(ca.crl_intermediate)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2
    entry = crl.get_revoked_certificate_by_serial_number(load(alice).serial_number)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == (
        x509.ReasonFlags.key_compromise
    )
    record = next(r for r in ca.records() if r["file"] == "users/alice.pem")
    assert record["status"] == "revoked" and record["reason"] == "keyCompromise"
    assert record["revoked_at"].endswith("Z")
    # the root's CRL was not touched
    assert load_crl(ca.crl_root).extensions.get_extension_for_class(
        x509.CRLNumber
    ).value.crl_number == 1

    proc = ca.run("revoke", alice, check=False)
    assert proc.returncode == 2 and "already revoked" in proc.stderr


def test_revoke_by_serial_and_intermediate_goes_to_root_crl(ca: SampleCA) -> None:
    serial = ca.serial_of(ca.intermediate)
    ca.revoke(serial.lower(), reason="cACompromise")
    crl = load_crl(ca.crl_root)
    assert crl.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None
    proc = openssl(
        "verify", "-crl_check_all", "-CAfile", ca.root, "-untrusted", ca.intermediate,
        "-CRLfile", ca.crl_root, "-CRLfile", ca.crl_intermediate, ca.user_cert("bob"),
    )
    assert proc.returncode != 0 and "certificate revoked" in proc.stdout + proc.stderr


def test_revoke_without_reason_writes_no_reason_code(ca: SampleCA) -> None:
    ca.revoke(ca.user_cert("bob"))
    entry = load_crl(ca.crl_intermediate).get_revoked_certificate_by_serial_number(
        load(ca.user_cert("bob")).serial_number
    )
    assert entry is not None and len(entry.extensions) == 0


def test_crl_command_increments_numbers_and_sets_next_update(ca: SampleCA) -> None:
    ca.run("crl", "--next-update-hours", "2")
    for path in (ca.crl_root, ca.crl_intermediate):
        crl = load_crl(path)
        assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2
        assert crl_lifetime(crl) == dt.timedelta(hours=2)
    # the new interval is remembered for CRLs that `revoke` writes
    ca.revoke(ca.user_cert("alice"))
    crl = load_crl(ca.crl_intermediate)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 3
    assert crl_lifetime(crl) == dt.timedelta(hours=2)


# --- user options ---------------------------------------------------------------------


def test_user_expired_and_not_yet_valid(ca: SampleCA) -> None:
    expired = ca.user("old", "--not-after", "-1d")
    proc = verify(ca, expired)
    assert proc.returncode != 0 and "certificate has expired" in proc.stdout + proc.stderr
    future = ca.user("future", "--not-before", "+2d", "--days", "10")
    proc = verify(ca, future)
    assert proc.returncode != 0 and "not yet valid" in proc.stdout + proc.stderr
    cert = load(future)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=10)
    fixed = load(ca.user("fixed", "--not-before", "2020-01-01T00:00:00Z",
                         "--not-after", "2021-01-01"))
    assert fixed.not_valid_before_utc == dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    assert fixed.not_valid_after_utc == dt.datetime(2021, 1, 1, tzinfo=dt.UTC)


def test_user_eku_variants(ca: SampleCA) -> None:
    none = load(ca.user("noeku", "--eku", "none"))
    with pytest.raises(x509.ExtensionNotFound):
        none.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    server = load(ca.user("web", "--eku", "serverAuth"))
    proc = verify(ca, ca.user_cert("web"), "-purpose", "sslclient")
    assert proc.returncode != 0  # wrong EKU for a client
    assert list(server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    both = load(ca.user("ssh", "--eku", "sshClient", "--eku", "clientAuth"))
    assert list(both.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        SSH_CLIENT_OID, ExtendedKeyUsageOID.CLIENT_AUTH,
    ]
    anyeku = load(ca.user("any", "--eku", "any"))
    assert list(anyeku.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE
    ]


def test_user_without_distribution_points_and_root_issued(ca: SampleCA) -> None:
    bare = load(ca.user("bare", "--no-cdp", "--no-ocsp"))
    for ext in (x509.CRLDistributionPoints, x509.AuthorityInformationAccess):
        with pytest.raises(x509.ExtensionNotFound):
            bare.extensions.get_extension_for_class(ext)
    assert verify(ca, ca.user_cert("bare")).returncode == 0

    direct = ca.user("direct", "--issuer", "root", "--key", "ec-p384")
    proc = openssl("verify", "-CAfile", ca.root, direct)
    assert proc.returncode == 0, proc.stderr
    cert = load(direct)
    assert cert.issuer == load(ca.root).subject
    assert cert.public_key().curve.name == "secp384r1"  # type: ignore[union-attr]
    cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert cdp[0].full_name == [x509.UniformResourceIdentifier(ca.crl_url("root"))]
    # the chain file never carries the root (the trust anchor)
    assert x509.load_pem_x509_certificates(ca.user_chain("direct").read_bytes()) == [cert]
    record = next(r for r in ca.records() if r["file"] == "users/direct.pem")
    assert record["issuer"] == "root"


def test_user_san_options(ca: SampleCA) -> None:
    cert = load(ca.user("carol", "--email", "c@corp.example", "--email", "carol@example.org",
                        "--upn", "carol@corp.example", "--cn", "Carol Example", "--key", "rsa3072"))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Carol Example"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.RFC822Name) == ["c@corp.example", "carol@example.org"]
    upn = [o for o in san.get_values_for_type(x509.OtherName) if o.type_id == UPN_OID]
    assert upn[0].value == b"\x0c\x12carol@corp.example"  # DER UTF8String
    assert cert.public_key().key_size == 3072  # type: ignore[union-attr]
    # --force re-issues the same name with a new key and serial; the old one stays recorded
    old_serial = cert.serial_number
    ca.user("carol", "--force")
    assert load(ca.user_cert("carol")).serial_number != old_serial
    assert sum(r["file"] == "users/carol.pem" for r in ca.records()) == 2


def test_selfsigned(ca: SampleCA) -> None:
    out = ca.run("selfsigned", "solo", "--key", "ec-p256").stdout.strip()
    cert = load(ca.user_cert("solo"))
    assert int(out, 16) == cert.serial_number
    assert cert.issuer == cert.subject
    assert cert.subject.rfc4514_string() == "CN=solo,O=idm demo,C=XX"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    cert.verify_directly_issued_by(cert)
    assert verify(ca, ca.user_cert("solo")).returncode != 0
    proc = ca.run("revoke", ca.user_cert("solo"), check=False)
    assert proc.returncode == 2 and "self-signed" in proc.stderr


# --- issue from a CSR ------------------------------------------------------------------


def make_csr(tmp_path: Path, name: str = "dave") -> Path:
    key, csr = tmp_path / f"{name}.key", tmp_path / f"{name}.csr"
    proc = openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", key, "-out", csr, "-subj", f"/C=XX/O=idm demo/CN={name}",
        "-addext", f"subjectAltName=email:{name}@example.org",
    )
    assert proc.returncode == 0, proc.stderr
    return csr


def test_issue_from_openssl_csr(ca: SampleCA, tmp_path: Path) -> None:
    csr_path = make_csr(tmp_path)
    out = tmp_path / "dave.pem"
    serial = ca.run("issue", "--csr", csr_path, "--out", out, "--eku", "sshClient").stdout
    cert = load(out)
    csr = x509.load_pem_x509_csr(csr_path.read_bytes())
    assert int(serial.strip(), 16) == cert.serial_number
    assert cert.subject == csr.subject
    assert cert.public_key() == csr.public_key()
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.RFC822Name) == ["dave@example.org"]
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        SSH_CLIENT_OID
    ]
    cert.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
    assert verify(ca, out).returncode == 0
    assert ca.serial_of(out) == serial.strip()
    # recorded, so it can be revoked like any other
    ca.revoke(out)
    assert load_crl(ca.crl_intermediate).get_revoked_certificate_by_serial_number(
        cert.serial_number
    ) is not None


def test_issue_refuses_bad_csr(ca: SampleCA, tmp_path: Path) -> None:
    csr_path = make_csr(tmp_path)
    der = bytearray(
        x509.load_pem_x509_csr(csr_path.read_bytes()).public_bytes(serialization.Encoding.DER)
    )
    der[-3] ^= 0x01  # inside the signature value: still parses, no longer verifies
    bad = tmp_path / "bad.csr"
    bad.write_bytes(bytes(der))
    records_before = len(ca.records())
    out = tmp_path / "bad.pem"
    proc = ca.run("issue", "--csr", bad, "--out", out, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"sample_ca: error: CSR {bad} has a bad signature " \
        "(not signed by its own key): refused"
    assert not out.exists()
    assert len(ca.records()) == records_before

    junk = tmp_path / "junk.csr"
    junk.write_text(
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
    )
    proc = ca.run("issue", "--csr", junk, "--out", out, check=False)
    assert proc.returncode == 2 and "is not a PKCS#10 certificate request" in proc.stderr
    proc = ca.run("issue", "--csr", tmp_path / "missing.csr", "--out", out, check=False)
    assert proc.returncode == 2 and "cannot read CSR" in proc.stderr


# --- the HTTP server: CRL and OCSP -----------------------------------------------------


def test_serve_ocsp_good_then_revoked_live(ca: SampleCA) -> None:
    alice = ca.user_cert("alice")
    with serving(ca) as server:
        assert server.port == ca.port
        out = ocsp_query(ca, alice, ca.intermediate, "-VAfile", ca.ocsp)
        assert f"{alice}: good" in out
        out = ocsp_query(ca, alice, ca.intermediate, "-CAfile", ca.root)
        assert f"{alice}: good" in out
        ca.revoke(alice, reason="keyCompromise")  # no restart: the server re-reads state
        out = ocsp_query(ca, alice, ca.intermediate, "-CAfile", ca.root)
        assert f"{alice}: revoked" in out and "Reason: keyCompromise" in out
        out = ocsp_query(ca, ca.user_cert("bob"), ca.intermediate, "-VAfile", ca.ocsp)
        assert "bob.pem: good" in out
        # the intermediate's status comes from the root, signed by the root itself
        out = ocsp_query(ca, ca.intermediate, ca.root, "-CAfile", ca.root)
        assert "intermediate.pem: good" in out


def test_ocsp_response_contents(served_ca: SampleCA) -> None:
    ca = served_ca
    nonce = b"0123456789abcdef"
    status, body = http_post(ca.ocsp_url, ocsp_request(ca.user_cert("bob"), ca.intermediate,
                                                       nonce))
    assert status == 200
    resp = ocsp.load_der_ocsp_response(body)
    assert resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert resp.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert resp.serial_number == load(ca.user_cert("bob")).serial_number
    assert resp.next_update_utc is not None
    assert resp.next_update_utc - resp.this_update_utc == dt.timedelta(hours=1)
    assert resp.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
    responder = load(ca.ocsp)
    assert responder in resp.certificates
    assert resp.responder_key_hash == x509.SubjectKeyIdentifier.from_public_key(
        responder.public_key()
    ).digest
    assert_signed_by(resp, responder)

    # the intermediate: answered by the root directly, no delegated certificate
    _, body = http_post(ca.ocsp_url, ocsp_request(ca.intermediate, ca.root))
    resp = ocsp.load_der_ocsp_response(body)
    assert resp.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert resp.certificates == []
    with pytest.raises(x509.ExtensionNotFound):
        resp.extensions.get_extension_for_class(x509.OCSPNonce)
    root = load(ca.root)
    assert_signed_by(resp, root)



def test_ocsp_get_unknown_and_unauthorized(served_ca: SampleCA, tmp_path: Path) -> None:
    ca = served_ca
    ca.revoke(ca.user_cert("bob"), reason="superseded")
    der = ocsp_request(ca.user_cert("bob"), ca.intermediate)
    # RFC 6960 A.1: base64, then URL-encoded (the '/' and '+' must survive)
    path = urllib.parse.quote(base64.b64encode(der).decode(), safe="")
    status, ctype, body = http_get(f"{ca.ocsp_url}/{path}")
    assert status == 200 and ctype == "application/ocsp-response"
    resp = ocsp.load_der_ocsp_response(body)
    assert resp.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert resp.revocation_reason == x509.ReasonFlags.superseded
    assert resp.revocation_time_utc is not None

    # a serial this CA never issued, under a known issuer: unknown
    stranger = ca.user("stranger")
    ca.state.write_text(
        json.dumps(
            {**json.loads(ca.state.read_text()),
             "certs": [r for r in ca.records() if r["file"] != "users/stranger.pem"]}
        )
    )
    _, body = http_post(ca.ocsp_url, ocsp_request(stranger, ca.intermediate))
    assert ocsp.load_der_ocsp_response(body).certificate_status == ocsp.OCSPCertStatus.UNKNOWN

    # an issuer the server does not serve: unauthorized
    other = make_sample_ca(tmp_path, subdir="other")
    _, body = http_post(ca.ocsp_url, ocsp_request(other.user_cert("alice"), other.intermediate))
    assert ocsp.load_der_ocsp_response(body).response_status == (
        ocsp.OCSPResponseStatus.UNAUTHORIZED
    )


@pytest.mark.parametrize(
    "method, payload",
    [("POST", b""), ("POST", b"garbage"), ("POST", b"\x30\x03\x02\x01\x01"),
     ("GET", "not-base64!"), ("GET", "")],
)
def test_malformed_ocsp_requests(
    shared_ca: SampleCA, shared_server: SampleCAServer, method: str, payload: bytes | str
) -> None:
    if method == "POST":
        assert isinstance(payload, bytes)
        status, body = http_post(shared_server.ocsp_url, payload)
    else:
        assert isinstance(payload, str)
        status, _, body = http_get(f"{shared_server.ocsp_url}/{payload}")
    assert status == 200
    assert ocsp.load_der_ocsp_response(body).response_status == (
        ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    )
    # and the server still answers afterwards
    request = ocsp_request(shared_ca.user_cert("alice"), shared_ca.intermediate)
    _, ok = http_post(shared_server.ocsp_url, request)
    assert ocsp.load_der_ocsp_response(ok).certificate_status == ocsp.OCSPCertStatus.GOOD
    assert shared_server.process.poll() is None


def test_serve_crls_and_ca_certs(served_ca: SampleCA) -> None:
    ca = served_ca
    for name, path in (("root", ca.crl_root), ("intermediate", ca.crl_intermediate)):
        status, ctype, body = http_get(ca.crl_url(name))
        assert (status, ctype) == (200, "application/pkix-crl")
        assert body == path.read_bytes()
    ca.revoke(ca.user_cert("alice"))  # served from disk on each request
    _, _, body = http_get(ca.crl_url("intermediate"))
    assert body == ca.crl_intermediate.read_bytes()
    assert len(x509.load_der_x509_crl(body)) == 1
    status, ctype, body = http_get(f"{ca.base_url}/ca/intermediate.cer")
    assert (status, ctype) == (200, "application/pkix-cert")
    assert x509.load_der_x509_certificate(body) == load(ca.intermediate)
    for bad in ("/crl/../state.json", "/root.key", "/crl/other.crl", "/"):
        assert http_get(ca.base_url + bad)[0] == 404


def test_serve_stops_cleanly_on_sigterm_and_sigint(shared_ca: SampleCA) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        with serving(shared_ca, port=0) as server:
            assert server.port not in (0, shared_ca.port)
            server.process.send_signal(sig)
            assert server.process.wait(timeout=20) == 0


def test_serve_refuses_a_busy_port(served_ca: SampleCA) -> None:
    proc = served_ca.run("serve", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(f"sample_ca: error: cannot listen on 127.0.0.1:"
                                          f"{served_ca.port}")


# --- a real consumer: pyhanko-certvalidator (what idm's validator builds on) -------------


def test_certvalidator_accepts_then_sees_revocation(served_ca: SampleCA) -> None:
    import asyncio

    from asn1crypto import x509 as asn1_x509
    from pyhanko_certvalidator import CertificateValidator, ValidationContext
    from pyhanko_certvalidator.errors import RevokedError
    from pyhanko_certvalidator.fetchers.requests_fetchers import RequestsFetcherBackend
    from pyhanko_certvalidator.policy_decl import (
        CertRevTrustPolicy,
        RevocationCheckingPolicy,
        RevocationCheckingRule,
    )

    ca = served_ca

    def der(path: Path) -> asn1_x509.Certificate:
        return asn1_x509.Certificate.load(load(path).public_bytes(serialization.Encoding.DER))

    async def validate(rule: RevocationCheckingRule) -> None:
        policy = RevocationCheckingPolicy(ee_certificate_rule=rule, intermediate_ca_cert_rule=rule)
        context = ValidationContext(
            trust_roots=[der(ca.root)],
            other_certs=[der(ca.intermediate)],
            allow_fetching=True,
            revinfo_policy=CertRevTrustPolicy(policy),
            time_tolerance=dt.timedelta(0),
            fetcher_backend=RequestsFetcherBackend(),
        )
        validator = CertificateValidator(der(ca.user_cert("bob")), validation_context=context)
        await validator.async_validate_usage({"digital_signature"})

    rules = (RevocationCheckingRule.OCSP_REQUIRED, RevocationCheckingRule.CRL_REQUIRED)
    for rule in rules:
        asyncio.run(validate(rule))  # fetches our CRLs / asks our OCSP responder
    ca.revoke(ca.user_cert("bob"), reason="keyCompromise")
    for rule in rules:
        with pytest.raises(RevokedError, match="compromised key"):
            asyncio.run(validate(rule))
