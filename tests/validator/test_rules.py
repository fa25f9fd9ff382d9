"""One scenario per RFC 5280 rule idm enforces beyond path validation itself (CRL
authority and scope, trust anchor constraints, the key policy, hostile extensions, order
independence, deadlines, the authenticated path cache), built with `cryptography`.
docs/validation.md's rule table points here."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from idm.validator.api import validate
from idm.validator.policy import Policy
from idm.validator.revocation.fetch import Fetcher
from tests.validator.pki import CA, DAY, NOW, der, make_cert, make_pki, name, pem

CLIENT = [ExtendedKeyUsageOID.CLIENT_AUTH]
UTF8 = x509.name._ASN1Type.UTF8String


def _builder(subject: x509.Name, issuer: CA, key: object) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())  # type: ignore[attr-defined]
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + 30 * DAY)
    )


def _crl(
    ca: CA,
    entries: list[tuple[int, x509.ReasonFlags | None]] = (),  # type: ignore[assignment]
    *,
    number: int | None = 1,
    number_critical: bool = False,
    extensions: list[tuple[x509.ExtensionType, bool]] = (),  # type: ignore[assignment]
    key: object = None,
    issuer: x509.Name | None = None,
) -> bytes:
    b = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer or ca.cert.subject)
        .last_update(NOW - dt.timedelta(minutes=5))
        .next_update(NOW + DAY)
    )
    if number is not None:
        b = b.add_extension(x509.CRLNumber(number), critical=number_critical)
    for ext, critical in extensions:
        b = b.add_extension(ext, critical=critical)
    for serial, reason in entries:
        e = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(NOW - DAY)
        if reason is not None:
            e = e.add_extension(x509.CRLReason(reason), critical=False)
        b = b.add_revoked_certificate(e.build())
    return der(b.sign(key or ca.key, hashes.SHA256()))


def _check(leaf: CA, root: CA, inter: CA, crls: list[bytes], **policy: object) -> object:
    return validate(leaf.cert, anchors=[root.cert], intermediates=[inter.cert],
                    crls=crls, policy=Policy(**policy))  # type: ignore[arg-type]


# -- CRL authority (RFC 5280 §6.3.3 (f), §4.2.1.3) ------------------------------------------


def test_crl_signed_by_a_ca_without_crl_sign_does_not_count():
    root = make_cert("Root", None, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    b = (
        _builder(name("No CRL Sign CA"), root, key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, False, False, False),
                       True)
    )
    inter = CA(b.sign(root.key, hashes.SHA256()), key)
    leaf = make_cert("alice", inter, eku=CLIENT)
    v = _check(leaf, root, inter, [_crl(inter), _crl(root)])
    assert v.status == "revocation-unknown"
    assert "keyUsage does not allow cRLSign" in v.reason


def _crl_signer(ca: CA, issuer: CA) -> CA:
    """A separate CRL-signing key of `ca` (its name, keyUsage cRLSign only), certified by
    `issuer`."""
    key = ec.generate_private_key(ec.SECP256R1())
    b = (
        _builder(ca.cert.subject, issuer, key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, False, True, False, False),
                       True)
    )
    return CA(b.sign(issuer.key, hashes.SHA256()), key)


def test_separate_crl_key_counts_only_when_its_certificate_validates():
    root, inter, leaf = make_pki()
    crl_signer = _crl_signer(inter, root)
    listed = _crl(inter, [(leaf.cert.serial_number, x509.ReasonFlags.key_compromise)],
                  key=crl_signer.key)
    v = validate(leaf.cert, anchors=[root.cert], intermediates=[inter.cert, crl_signer.cert],
                 crls=[listed, _crl(root)])
    assert v.status == "revoked", v.reason
    # The same CRL key, but its certificate revoked by the root: the CRL does not count.
    revoked_signer = _crl(root, [(crl_signer.cert.serial_number, None)])
    v = validate(leaf.cert, anchors=[root.cert], intermediates=[inter.cert, crl_signer.cert],
                 crls=[listed, revoked_signer])
    assert v.status == "revocation-unknown" and "not authorised" in v.reason


def test_unusable_crl_at_hand_also_decides_a_crl_signers_status():
    """The separate CRL key's certificate is issued by another sub-CA whose CRL at hand is
    unusable: the signer's status is unknown, so its CRL cannot clear the leaf."""
    root, inter, leaf = make_pki()
    sub2 = make_cert("Sub CA 2", root, ca=True)
    crl_signer = _crl_signer(inter, sub2)
    critical = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.3.4"), b"\x05\x00")
    crls = [_crl(inter, key=crl_signer.key), _crl(root),
            _crl(sub2, [(crl_signer.cert.serial_number, None)], extensions=[(critical, True)])]
    pool = [inter.cert, sub2.cert, crl_signer.cert]
    v = validate(leaf.cert, anchors=[root.cert], intermediates=pool, crls=crls)
    assert v.status == "revocation-unknown" and "unknown critical extension" in v.reason, v.reason
    crls[2] = _crl(sub2)  # the same sub-CA's usable CRL, which lists nothing
    v = validate(leaf.cert, anchors=[root.cert], intermediates=pool, crls=crls)
    assert v.valid, v.reason


# -- usable CRLs (RFC 5280 §5.2, §5.3) ---------------------------------------------------


@pytest.mark.parametrize(
    "kind, words",
    [
        ("no-number", "no cRLNumber"),
        ("critical-number", "cRLNumber is marked critical"),
        ("unknown-critical", "unknown critical extension 1.2.3.4"),
        ("unknown-critical-entry", "unknown critical extension 1.2.3.5"),
    ],
)
def test_unusable_crl_at_hand_fails_closed(kind, words):
    root, inter, leaf = make_pki()
    kw: dict[str, object] = {}
    if kind == "no-number":
        kw["number"] = None
    elif kind == "critical-number":
        kw["number_critical"] = True
    elif kind == "unknown-critical":
        kw["extensions"] = [(x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.3.4"),
                                                        b"\x05\x00"), True)]
    data = _crl(inter, **kw)  # type: ignore[arg-type]
    if kind == "unknown-critical-entry":
        entry = (
            x509.RevokedCertificateBuilder().serial_number(12345).revocation_date(NOW - DAY)
            .add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.3.5"),
                                                      b"\x05\x00"), critical=True)
            .build()
        )
        data = der(
            x509.CertificateRevocationListBuilder().issuer_name(inter.cert.subject)
            .last_update(NOW - DAY).next_update(NOW + DAY)
            .add_extension(x509.CRLNumber(1), False).add_revoked_certificate(entry)
            .sign(inter.key, hashes.SHA256())
        )
    v = _check(leaf, root, inter, [data, _crl(root)])
    assert v.status == "revocation-unknown" and words in v.reason, v.reason
    assert _check(leaf, root, inter, [data, _crl(inter, number=2), _crl(root)]).valid


# -- scope (§5.2.5) and order independence ----------------------------------------------------


def _idp(**kw: object) -> x509.IssuingDistributionPoint:
    args = dict(full_name=None, relative_name=None, only_contains_user_certs=False,
                only_contains_ca_certs=False, only_some_reasons=None, indirect_crl=False,
                only_contains_attribute_certs=False)
    args.update(kw)
    return x509.IssuingDistributionPoint(**args)  # type: ignore[arg-type]


def test_crl_scoped_to_ca_certificates_does_not_cover_a_user_certificate():
    root, inter, leaf = make_pki()
    ca_only = _crl(inter, extensions=[(_idp(only_contains_ca_certs=True), True)])
    v = _check(leaf, root, inter, [ca_only, _crl(root)])
    assert v.status == "revocation-unknown" and "only CA certificates" in v.reason


def test_partitioned_crls_must_cover_every_reason():
    root, inter, leaf = make_pki()
    compromise = frozenset({x509.ReasonFlags.key_compromise, x509.ReasonFlags.ca_compromise})
    others = frozenset(x509.ReasonFlags) - compromise - {
        x509.ReasonFlags.unspecified, x509.ReasonFlags.remove_from_crl}
    first = _crl(inter, extensions=[(_idp(only_some_reasons=compromise), True)])
    second = _crl(inter, extensions=[(_idp(only_some_reasons=others), True)])
    v = _check(leaf, root, inter, [first, _crl(root)])
    assert v.status == "revocation-unknown" and "do not cover the reasons" in v.reason
    assert _check(leaf, root, inter, [first, second, _crl(root)]).valid


def test_verdict_does_not_depend_on_the_order_of_crls():
    """Two CRLs of one issuer with the same number but other scopes are two CRLs (the
    revoked entry is in the second): every order gives the same answer."""
    root, inter, leaf = make_pki()
    compromise = frozenset({x509.ReasonFlags.key_compromise, x509.ReasonFlags.ca_compromise})
    others = frozenset(x509.ReasonFlags) - compromise - {
        x509.ReasonFlags.unspecified, x509.ReasonFlags.remove_from_crl}
    first = _crl(inter, extensions=[(_idp(only_some_reasons=compromise), True)])
    second = _crl(inter, [(leaf.cert.serial_number, x509.ReasonFlags.superseded)],
                  extensions=[(_idp(only_some_reasons=others), True)])
    seen = set()
    for order in itertools.permutations([first, second, _crl(root)]):
        v = _check(leaf, root, inter, list(order))
        seen.add((v.status, "(superseded), listed in CRL number 1" in v.reason))
    assert seen == {("revoked", True)}


def test_delta_crl_releases_a_hold_and_revokes_on_top_of_its_base():
    root, inter, leaf = make_pki()
    other = make_cert("bob", inter, eku=CLIENT)
    base = _crl(inter, [(leaf.cert.serial_number, x509.ReasonFlags.certificate_hold)], number=1)
    delta = _crl(inter, [(leaf.cert.serial_number, x509.ReasonFlags.remove_from_crl),
                         (other.cert.serial_number, x509.ReasonFlags.key_compromise)],
                 number=2, extensions=[(x509.DeltaCRLIndicator(1), True)])
    assert _check(leaf, root, inter, [base, _crl(root)]).status == "revoked"  # on hold
    assert _check(leaf, root, inter, [base, delta, _crl(root)]).valid
    assert _check(other, root, inter, [base, delta, _crl(root)]).status == "revoked"
    # A delta CRL alone is not a complete CRL.
    v = _check(other, root, inter, [delta, _crl(root)], revocation="require")
    assert v.status != "valid"


# -- names (§7.1) ----------------------------------------------------------------------------


def test_issuer_names_match_after_preparation():
    root = make_cert("Root", None, ca=True)
    inter = make_cert("Prep CA", root, ca=True, subject_name=x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example  Corp"),
        x509.NameAttribute(NameOID.COMMON_NAME, "Prep CA"),
    ]))
    key = ec.generate_private_key(ec.SECP256R1())
    written = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, " example corp ", UTF8),
        x509.NameAttribute(NameOID.COMMON_NAME, "PREP   CA", UTF8),
    ])
    b = (
        x509.CertificateBuilder().subject_name(name("alice")).issuer_name(written)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY).not_valid_after(NOW + DAY)
        .add_extension(x509.ExtendedKeyUsage(CLIENT), False)
    )
    leaf = CA(b.sign(inter.key, hashes.SHA256()), key)
    v = _check(leaf, root, inter, [_crl(inter, issuer=written), _crl(root)])
    assert v.valid, v.reason


# -- trust anchor constraints ------------------------------------------------------------------


def test_name_constraints_of_the_trust_anchor_apply(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "XX"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Partner")])
    permitted = x509.NameConstraints(permitted_subtrees=[x509.DirectoryName(subject)],
                                     excluded_subtrees=None)
    root_cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(NOW - DAY).not_valid_after(NOW + 365 * DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .add_extension(permitted, True)
        .sign(key, hashes.SHA256())
    )
    root = CA(root_cert, key)
    outside = make_cert("mallory", root, eku=CLIENT, subject_name=x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "XX"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Elsewhere"),
        x509.NameAttribute(NameOID.COMMON_NAME, "mallory")]))
    inside = make_cert("alice", root, eku=CLIENT, subject_name=x509.Name([
        *subject, x509.NameAttribute(NameOID.COMMON_NAME, "alice")]))
    off = Policy(revocation="off")
    assert validate(inside.cert, anchors=[root.cert], policy=off).valid
    v = validate(outside.cert, anchors=[root.cert], policy=off)
    assert v.status == "invalid-path" and "permitted" in v.reason, v.reason
    # The same through the CLI, as an SSH client certificate, and openssl agrees.
    (tmp_path / "root.pem").write_bytes(pem(root.cert))
    (tmp_path / "mallory.pem").write_bytes(pem(outside.cert))
    out = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "root.pem"),
                          str(tmp_path / "mallory.pem")], capture_output=True, text=True)
    assert out.returncode != 0 and "subtree" in (out.stdout + out.stderr)


# -- the key policy ----------------------------------------------------------------------------


def test_key_policy_refuses_small_rsa_and_unlisted_curves_and_says_so():
    root = make_cert("Root", None, ca=True)
    weak = rsa.generate_private_key(65537, 1024)
    leaf = make_cert("alice", root, eku=CLIENT, key=weak)  # type: ignore[arg-type]
    v = validate(leaf.cert, anchors=[root.cert], policy=Policy(revocation="off"))
    assert v.status == "invalid-path" and "RSA key of 1024 bits" in v.reason
    assert validate(leaf.cert, anchors=[root.cert],
                    policy=Policy(revocation="off", min_rsa_bits=1024)).valid
    k1 = ec.generate_private_key(ec.SECP256K1())
    leaf = make_cert("bob", root, eku=CLIENT, key=k1)  # type: ignore[arg-type]
    v = validate(leaf.cert, anchors=[root.cert], policy=Policy(revocation="off"))
    assert v.status == "invalid-path" and "secp256k1" in v.reason


def _openssl(tmp_path, *args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, cwd=tmp_path)


def test_sha1_signatures_are_refused_with_a_reason_that_says_sha1(tmp_path):
    """`cryptography` no longer signs with SHA-1; openssl still does."""
    _openssl(tmp_path, "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
             "ca.key", "-subj", "/CN=Root", "-days", "3", "-out", "ca.pem")
    _openssl(tmp_path, "openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout",
             "leaf.key", "-subj", "/CN=alice", "-out", "leaf.csr")
    _openssl(tmp_path, "openssl", "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey",
             "ca.key", "-set_serial", "5", "-days", "2", "-sha1", "-out", "leaf.pem")
    root = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    leaf = x509.load_pem_x509_certificate((tmp_path / "leaf.pem").read_bytes())
    v = validate(leaf, anchors=[root], policy=Policy(revocation="off", purpose="any"))
    assert v.status == "invalid-path" and "SHA-1" in v.reason, v.reason
    allowed = Policy(revocation="off", purpose="any", allow_sha1=True)
    assert validate(leaf, anchors=[root], policy=allowed).status != "invalid-path" or \
        "SHA-1" not in validate(leaf, anchors=[root], policy=allowed).reason


def test_explicit_curve_parameters_are_refused(tmp_path):
    """openssl makes a key on P-256 with explicit parameters; `cryptography` cannot use it."""
    root = make_cert("Root", None, ca=True)
    (tmp_path / "root.pem").write_bytes(pem(root.cert))
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
    )

    (tmp_path / "root.key").write_bytes(root.key.private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    run = lambda *a: _openssl(tmp_path, *a)  # noqa: E731
    run("openssl", "ecparam", "-name", "prime256v1", "-param_enc", "explicit", "-genkey",
        "-out", "leaf.key")
    run("openssl", "req", "-new", "-key", "leaf.key", "-subj", "/CN=alice", "-out", "leaf.csr")
    run("openssl", "x509", "-req", "-in", "leaf.csr", "-CA", "root.pem", "-CAkey", "root.key",
        "-set_serial", "7", "-days", "3", "-sha256", "-out", "leaf.pem")
    leaf = x509.load_pem_x509_certificate((tmp_path / "leaf.pem").read_bytes())
    v = validate(leaf, anchors=[root.cert], policy=Policy(revocation="off"))
    assert v.status in ("invalid-path", "malformed") and "explicit" in v.reason, v.reason


# -- hostile input: always a verdict -----------------------------------------------------------


def _leaf_with(extensions: list[tuple[x509.ExtensionType, bool]], inter: CA) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    b = _builder(name("alice"), inter, key)
    for ext, critical in extensions:
        b = b.add_extension(ext, critical)
    return der(b.sign(inter.key, hashes.SHA256()))


def test_duplicate_extension_is_a_verdict(tmp_path):
    root, inter, _ = make_pki()
    data = bytearray(_leaf_with([(x509.SubjectAlternativeName([x509.DNSName("a.example")]),
                                  False)], inter))
    # Two SAN extensions in one certificate cannot be built: write a copy of the one by hand
    # (the signature then fails too, but the parser trips first).
    san = bytes(data).find(bytes.fromhex("0603551d11"))
    assert san > 0
    start = san - 2
    length = data[start + 1] + 2
    ext = bytes(data[start:start + length])
    data[start:start] = ext
    v = validate(bytes(data), anchors=[root.cert], intermediates=[inter.cert])
    assert v.status in ("malformed", "invalid-path") and "\n" not in v.reason


def test_other_name_constraint_is_a_verdict():
    root = make_cert("Root", None, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    upn = x509.OtherName(x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3"),
                         b"\x0c\x0bexample.com")
    b = (
        _builder(name("Constrained CA"), root, key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .add_extension(x509.NameConstraints(permitted_subtrees=[upn], excluded_subtrees=None),
                       True)
    )
    inter = CA(b.sign(root.key, hashes.SHA256()), key)
    leaf = make_cert("alice", inter, eku=CLIENT)
    v = validate(leaf.cert, anchors=[root.cert], intermediates=[inter.cert],
                 policy=Policy(revocation="off"))
    assert v.status in ("valid", "invalid-path", "malformed") and v.reason


# -- negative serials (PKITS 4.4.14/15) in a CRL big enough to be indexed later ---------------


def test_negative_serial_in_a_deferred_crl_gives_one_verdict(tmp_path, monkeypatch):
    """PKITS 4.4.15's certificate (serial -1) against its CRL, which `idm verify` first
    answers from the DER and later from the index (as for a CRL of over 20,000 entries):
    revoked every time, and no library warning on the terminal."""
    import cryptography_vectors

    data = Path(cryptography_vectors.__file__).parent / "x509" / "PKITS_data"
    code = (
        "import idm.cli.verify as v; v.DEFER_INDEXING_ABOVE = 0\n"
        "from idm.cli.entry import main\n"
        "main()\n"
    )
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "config"))
    env.pop("IDM_CONFIG", None)
    env.pop("PYTHONWARNINGS", None)
    args = ["--db", f"sqlite:///{tmp_path / 'inv.sqlite'}", "verify", "--json",
            "--at", "2022-05-01T00:00:00Z", "--purpose", "any",
            "--ca", str(data / "certs" / "TrustAnchorRootCertificate.crt"),
            "--untrusted", str(data / "certs" / "NegativeSerialNumberCACert.crt"),
            "--crl", str(data / "crls" / "TrustAnchorRootCRL.crl"),
            "--crl", str(data / "crls" / "NegativeSerialNumberCACRL.crl"),
            str(data / "certs" / "InvalidNegativeSerialNumberTest15EE.crt")]
    answers = []
    for _ in range(3):
        r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                           env=env, timeout=120)
        assert "Warning" not in r.stderr, r.stderr
        answers.append(json.loads(r.stdout)["status"])
        time.sleep(0.5)  # let the background indexer of the first run finish
    assert answers == ["revoked"] * 3


# -- one deadline per fetch and per validation --------------------------------------------------


class _Drip(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        try:
            for _ in range(1000):
                self.wfile.write(b"0")
                self.wfile.flush()
                threading.Event().wait(0.3)
        except OSError:
            pass

    def log_message(self, *a: object) -> None:
        pass


def test_slow_drip_crl_ends_at_the_deadline():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Drip)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/slow.crl"
        root, inter, leaf = make_pki(cdp=url)
        start = time.monotonic()
        v = validate(leaf.cert, anchors=[root.cert], intermediates=[inter.cert],
                     crls=[_crl(root)], fetcher=Fetcher(read_timeout=1.0),
                     policy=Policy(time_limit=2.0))
        took = time.monotonic() - start
        assert v.status == "revocation-unknown" and "within" in v.reason, v.reason
        assert took < 10, took  # the drip alone would take 300 s
        start = time.monotonic()
        with pytest.raises(Exception, match="within 1 s"):
            Fetcher(read_timeout=1.0, fetch_timeout=1.0).get_crl(url)
        assert time.monotonic() - start < 5
    finally:
        server.shutdown()


# -- the path cache is a hint, never proof ----------------------------------------------------


def test_planted_path_record_is_not_trusted(tmp_path, monkeypatch):
    """A validated-path row written by someone else (another writer of a shared inventory)
    for a certificate signed by an unrelated key: ignored, the path is validated again."""
    from idm.identity.inventory.store import open_inventory
    from idm.validator.memo import path_key, record_for
    from idm.validator.revocation.check import CertFacts

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    root, inter, _ = make_pki()
    stranger = make_cert("Stranger CA", None, ca=True)
    # A leaf naming `inter` as its issuer, signed by an unrelated key.
    key = ec.generate_private_key(ec.SECP256R1())
    fake = (
        _builder(name("alice"), inter, key).add_extension(x509.ExtendedKeyUsage(CLIENT), False)
        .sign(stranger.key, hashes.SHA256())
    )
    inv = open_inventory(f"sqlite:///{tmp_path / 'inv.sqlite'}")
    store = inv.revocation_store()
    policy = Policy(revocation="off")
    sha = lambda c: c.fingerprint(hashes.SHA256()).hex()  # noqa: E731
    key_ = path_key(sha(fake), [sha(root.cert)], [sha(inter.cert)], policy)
    chain = [fake, inter.cert, root.cert]
    facts = [CertFacts("CN=alice", fake.serial_number, "00", (), ())]
    record = record_for(chain, facts, "x509", ())
    with store._tx(write=True) as cur:  # what a hostile writer can do with SQL access
        cur.execute(
            "INSERT INTO validated_paths (key, valid_from, valid_until, record, mac, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (key_, "2000-01-01 00:00:00.000000", "2099-01-01 00:00:00.000000",
             record.to_json(), "00" * 32, "2000-01-01 00:00:00.000000"),
        )
    v = validate(fake, anchors=[root.cert], intermediates=[inter.cert], policy=policy,
                 store=store)
    assert not v.valid and v.status in ("untrusted", "invalid-path"), v.reason
    inv.close()


def test_planted_record_with_good_signatures_is_not_trusted(tmp_path, monkeypatch):
    """Every signature of the planted path verifies, but its middle certificate is no CA:
    only the record's authentication (HMAC) can tell it was never validated."""
    from idm.identity.inventory.store import open_inventory
    from idm.validator.memo import path_key, record_for
    from idm.validator.revocation.check import CertFacts

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    root = make_cert("Test Root", None, ca=True)
    not_ca = make_cert("Not a CA", root, ca=False)
    leaf = make_cert("bob", not_ca, eku=CLIENT)
    inv = open_inventory(f"sqlite:///{tmp_path / 'inv.sqlite'}")
    store = inv.revocation_store()
    policy = Policy(revocation="off")
    sha = lambda c: c.fingerprint(hashes.SHA256()).hex()  # noqa: E731
    key_ = path_key(sha(leaf.cert), [sha(root.cert)], [sha(not_ca.cert)], policy)
    facts = [CertFacts("CN=bob", leaf.cert.serial_number, "00", (), ())]
    record = record_for([leaf.cert, not_ca.cert, root.cert], facts, "x509", ())
    with store._tx(write=True) as cur:
        cur.execute(
            "INSERT INTO validated_paths (key, valid_from, valid_until, record, mac, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (key_, "2000-01-01 00:00:00.000000", "2099-01-01 00:00:00.000000",
             record.to_json(), "00" * 32, "2000-01-01 00:00:00.000000"),
        )
    v = validate(leaf.cert, anchors=[root.cert], intermediates=[not_ca.cert], policy=policy,
                 store=store)
    assert not v.valid, v.reason
    inv.close()


def test_a_path_remembered_under_one_key_policy_is_not_valid_under_a_stricter_one(
    tmp_path, monkeypatch
):
    from idm.identity.inventory.store import open_inventory

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    root, inter, leaf = make_pki()  # P-256 keys
    inv = open_inventory(f"sqlite:///{tmp_path / 'inv.sqlite'}")
    store = inv.revocation_store()
    args = dict(anchors=[root.cert], intermediates=[inter.cert], store=store)
    assert validate(leaf.cert, policy=Policy(revocation="off"), **args).valid  # remembered
    strict = Policy(revocation="off", curves=("secp384r1",))
    v = validate(leaf.cert, policy=strict, **args)
    assert v.status == "invalid-path" and "secp256r1" in v.reason, v.reason
    inv.close()


def test_a_pool_certificate_with_an_unknown_key_type_is_passed_over():
    """A same-name certificate whose key `cryptography` cannot load, before the real
    intermediate in the pool: it signs nothing, and the path through the real one holds."""
    from asn1crypto import x509 as ax509
    from cryptography.hazmat.primitives.asymmetric import ec as ec_

    root, inter, leaf = make_pki()
    twin = make_cert(inter.cert.subject.rfc4514_string(), root, ca=True,
                     subject_name=inter.cert.subject)
    cert = ax509.Certificate.load(der(twin.cert))
    tbs = cert["tbs_certificate"]
    tbs["subject_public_key_info"]["algorithm"]["algorithm"] = "1.2.840.10045.2.9"
    tbs_der = tbs.dump(force=True)
    cert["signature_value"] = root.key.sign(tbs_der, ec_.ECDSA(hashes.SHA256()))
    odd = x509.load_der_x509_certificate(cert.dump(force=True))
    v = validate(leaf.cert, anchors=[root.cert], intermediates=[odd, inter.cert],
                 crls=[_crl(inter), _crl(root)])
    assert v.valid, v.reason
