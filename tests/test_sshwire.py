"""idm.identity.sshwire against OpenSSH (ssh-keygen) and asyncssh, plus property tests."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import shutil
import subprocess
from pathlib import Path

import asyncssh
import pytest
from asyncssh import public_key as apk
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idm.identity import sshwire as w

SSH_KEYGEN = shutil.which("ssh-keygen")
needs_keygen = pytest.mark.skipif(SSH_KEYGEN is None, reason="ssh-keygen not installed")

_KEYS: dict[str, w.PrivateKey] = {}


def make_key(kind: str) -> w.PrivateKey:
    """A cached private key of the given kind (key generation is the slow part)."""
    if kind not in _KEYS:
        if kind == "rsa2048":
            _KEYS[kind] = rsa.generate_private_key(65537, 2048)
        elif kind == "rsa1024":
            _KEYS[kind] = rsa.generate_private_key(65537, 1024)
        elif kind == "p256":
            _KEYS[kind] = ec.generate_private_key(ec.SECP256R1())
        elif kind == "p384":
            _KEYS[kind] = ec.generate_private_key(ec.SECP384R1())
        elif kind == "p521":
            _KEYS[kind] = ec.generate_private_key(ec.SECP521R1())
        elif kind == "ed25519":
            _KEYS[kind] = ed25519.Ed25519PrivateKey.generate()
        else:
            raise AssertionError(kind)
    return _KEYS[kind]


ALL_KINDS = ["rsa2048", "rsa1024", "p256", "p384", "p521", "ed25519"]
X509_KINDS = ["rsa2048", "rsa1024", "p256", "p384", "p521"]


def make_cert(
    key: w.PrivateKey, cn: str = "alice", issuer_key: w.PrivateKey | None = None
) -> x509.Certificate:
    """A certificate for ``key``, self-signed unless ``issuer_key`` is given."""
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ca")]) if issuer_key else name
    signer = issuer_key or key
    algo = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(signer, algo)
    )


def keygen(*args: str, stdin: bytes | None = None) -> str:
    assert SSH_KEYGEN is not None
    proc = subprocess.run(
        [SSH_KEYGEN, *args], input=stdin, capture_output=True, check=False, timeout=30
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


def write_openssh_private(key: w.PrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


# ------------------------------------------------------------------ primitives


def test_mpint_vectors_from_rfc4251() -> None:
    assert w.pack_mpint(0) == bytes.fromhex("00000000")
    assert w.pack_mpint(0x9A378F9B2E332A7) == bytes.fromhex("0000000809a378f9b2e332a7")
    assert w.pack_mpint(0x80) == bytes.fromhex("000000020080")
    assert w.pack_mpint(-0x1234) == bytes.fromhex("00000002edcc")
    assert w.pack_mpint(-0xDEADBEEF) == bytes.fromhex("00000005ff21524111")


@given(st.integers(min_value=-(2**600), max_value=2**600))
def test_mpint_round_trip(value: int) -> None:
    r = w.WireReader(w.pack_mpint(value))
    assert r.read_mpint(allow_negative=True) == value
    r.expect_end()


def test_non_minimal_mpint_rejected() -> None:
    with pytest.raises(w.WireFormatError, match="minimal"):
        w.WireReader(w.pack_string(b"\x00\x01")).read_mpint()
    with pytest.raises(w.WireFormatError, match="negative"):
        w.WireReader(w.pack_string(b"\x80")).read_mpint()


@given(st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz@.-0123456789", min_size=1)))
def test_name_list_round_trip(names: list[str]) -> None:
    assert w.WireReader(w.pack_name_list(names)).read_name_list() == names


@given(st.binary(max_size=300), st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1))
def test_string_and_ints_round_trip(data: bytes, u32: int, u64: int) -> None:
    r = w.WireReader(w.pack_string(data) + w.pack_uint32(u32) + w.pack_uint64(u64)
                     + w.pack_bool(True) + w.pack_byte(7))
    assert r.read_string() == data
    assert r.read_uint32() == u32
    assert r.read_uint64() == u64
    assert r.read_bool() is True
    assert r.read_byte() == 7
    r.expect_end()


def test_truncation_is_a_wire_format_error() -> None:
    with pytest.raises(w.WireFormatError, match="truncated"):
        w.WireReader(b"\x00\x00\x00\x05abc").read_string("comment")
    with pytest.raises(w.WireFormatError, match="truncated"):
        w.WireReader(b"\x00\x01").read_uint32()
    with pytest.raises(w.WireFormatError, match="trailing"):
        w.WireReader(b"x").expect_end()


# ------------------------------------------------------------------ public keys vs OpenSSH


@needs_keygen
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_public_line_and_fingerprint_match_ssh_keygen(kind: str, tmp_path: Path) -> None:
    key = make_key(kind)
    path = write_openssh_private(key, tmp_path / "id")
    theirs = keygen("-y", "-f", str(path)).split()
    blob = w.KeyBlob.plain(key.public_key())
    ours = w.public_key_line(blob, "me@host")
    assert ours.split()[:2] == theirs[:2]
    (tmp_path / "id.pub").write_text(ours + "\n")
    listed = keygen("-l", "-f", str(tmp_path / "id.pub")).split()
    assert listed[1] == w.fingerprint_sha256(blob.blob) == blob.fingerprint
    assert listed[2] == "me@host"
    # and back: ssh-keygen's blob parses to the same key
    parsed = w.parse_key_blob(base64.b64decode(theirs[1]))
    assert parsed.form is w.BlobForm.PLAIN and parsed.blob == blob.blob
    assert w.public_key_from_blob(parsed.blob) == key.public_key()


@needs_keygen
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_openssh_generated_keys_parse(kind: str, tmp_path: Path) -> None:
    args = {
        "rsa2048": ["-t", "rsa", "-b", "2048"], "rsa1024": ["-t", "rsa", "-b", "1024"],
        "p256": ["-t", "ecdsa", "-b", "256"], "p384": ["-t", "ecdsa", "-b", "384"],
        "p521": ["-t", "ecdsa", "-b", "521"], "ed25519": ["-t", "ed25519"],
    }[kind]
    keygen("-q", *args, "-N", "", "-C", "c", "-f", str(tmp_path / "k"))
    line = w.parse_public_key_line((tmp_path / "k.pub").read_text())
    assert line.comment == "c"
    fp = keygen("-l", "-f", str(tmp_path / "k.pub")).split()[1]
    assert line.key.fingerprint == fp
    # private key loaded by cryptography -> agent wire form -> back, same public blob
    priv = serialization.load_ssh_private_key((tmp_path / "k").read_bytes(), None)
    r = w.WireReader(w.pack_private_key(priv))  # type: ignore[arg-type]
    again = w.read_private_key(r)
    r.expect_end()
    assert w.public_key_blob(again.public_key()) == line.key.blob


# ------------------------------------------------------------------ X.509 blobs


@pytest.mark.parametrize("kind", X509_KINDS)
def test_rfc6187_blob_matches_asyncssh(kind: str) -> None:
    key = make_key(kind)
    ca_key = make_key("p384")
    leaf = make_cert(key, issuer_key=ca_key)
    ca = make_cert(ca_key, "ca")
    blob = w.x509_rfc6187_blob([leaf, ca])
    parsed = w.parse_key_blob(blob)
    assert parsed.form is w.BlobForm.RFC6187
    assert parsed.algorithm == w.x509_algorithm(key.public_key())
    assert parsed.chain == (leaf.public_bytes(serialization.Encoding.DER),
                            ca.public_bytes(serialization.Encoding.DER))
    assert parsed.plain_blob == w.public_key_blob(key.public_key())
    assert parsed.certificate == leaf
    # asyncssh builds the same bytes for the same algorithm name
    certs = [asyncssh.import_certificate(c.public_bytes(serialization.Encoding.DER))
             for c in (leaf, ca)]
    chain = apk.SSHX509CertificateChain.construct_from_certs(certs)
    assert chain.public_data == w.x509_rfc6187_blob([leaf, ca], chain.algorithm.decode())


def test_rsa_x509_algorithm_depends_on_size() -> None:
    assert w.x509_algorithm(make_key("rsa2048").public_key()) == "x509v3-rsa2048-sha256"
    assert w.x509_algorithm(make_key("rsa1024").public_key()) == "x509v3-ssh-rsa"
    with pytest.raises(w.WireFormatError, match="2048"):
        w.x509_rfc6187_blob([make_cert(make_key("rsa1024"))], "x509v3-rsa2048-sha256")
    with pytest.raises(w.WireFormatError, match="does not match"):
        w.x509_rfc6187_blob([make_cert(make_key("p256"))], "x509v3-ecdsa-sha2-nistp384")


def test_raw_der_blob_and_text_line_matches_asyncssh() -> None:
    key = make_key("rsa2048")
    cert = make_cert(key)
    der = cert.public_bytes(serialization.Encoding.DER)
    assert w.x509_raw_der_blob(cert) == der
    parsed = w.parse_key_blob(der)
    assert parsed.form is w.BlobForm.RAW_DER
    assert parsed.algorithm == "x509v3-sign-rsa"
    assert parsed.plain_blob == w.public_key_blob(key.public_key())
    # PKIX-SSH's agent lists EC certificates as raw DER too, named by their curve
    for kind, curve in (("p256", "nistp256"), ("p384", "nistp384"), ("p521", "nistp521")):
        ec_key = make_key(kind)
        ec_der = w.x509_raw_der_blob(make_cert(ec_key))
        ec_blob = w.parse_key_blob(ec_der)
        assert ec_blob.form is w.BlobForm.RAW_DER
        assert ec_blob.algorithm == f"x509v3-ecdsa-sha2-{curve}"
        assert ec_blob.plain_blob == w.public_key_blob(ec_key.public_key())
    with pytest.raises(w.WireFormatError, match="Ed25519"):
        w.x509_raw_der_blob(make_cert(make_key("ed25519")))
    # text form of an X.509 key is the raw DER under its name (asyncssh and PKIX-SSH)
    theirs = asyncssh.import_certificate(der).export_certificate("openssh").decode().split()
    rfc = w.KeyBlob.rfc6187([cert], "x509v3-ssh-rsa")
    assert w.public_key_line(rfc).split() == theirs[:2]
    line = w.parse_public_key_line(w.public_key_line(rfc, "alice"))
    assert line.key == rfc and line.comment == "alice"
    legacy_line = w.parse_public_key_line(w.public_key_line(parsed))
    assert legacy_line.key == parsed


def test_ocsp_responses_round_trip() -> None:
    cert = make_cert(make_key("p256"))
    blob = w.x509_rfc6187_blob([cert], ocsp_responses=[b"\x30\x03abc"])
    assert w.parse_key_blob(blob).ocsp_responses == (b"\x30\x03abc",)


def test_rfc6187_blob_without_certificates_rejected() -> None:
    blob = w.pack_string("x509v3-ssh-rsa") + w.pack_uint32(0) + w.pack_uint32(0)
    with pytest.raises(w.WireFormatError, match="no certificate"):
        w.parse_key_blob(blob)


# ------------------------------------------------------------------ signatures


def sshsig_armor(key: w.PrivateKey, message: bytes, namespace: str = "file") -> str:
    """An SSHSIG (PROTOCOL.sshsig) built with sshwire's signature encoders."""
    pub = w.KeyBlob.plain(key.public_key())
    to_sign = (b"SSHSIG" + w.pack_string(namespace) + w.pack_string(b"")
               + w.pack_string("sha512") + w.pack_string(hashlib.sha512(message).digest()))
    scheme = w.signature_scheme(pub, w.SIGN_RSA_SHA2_512)
    sig = w.sign_with_private_key(key, scheme, to_sign)
    blob = (b"SSHSIG" + w.pack_uint32(1) + w.pack_string(pub.blob) + w.pack_string(namespace)
            + w.pack_string(b"") + w.pack_string("sha512") + w.pack_string(sig))
    b64 = base64.b64encode(blob).decode()
    body = "\n".join(b64[i:i + 70] for i in range(0, len(b64), 70))
    return f"-----BEGIN SSH SIGNATURE-----\n{body}\n-----END SSH SIGNATURE-----\n"


@needs_keygen
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_our_signatures_verify_with_ssh_keygen(kind: str, tmp_path: Path) -> None:
    key = make_key(kind)
    message = b"hello from idm\n"
    (tmp_path / "msg").write_bytes(message)
    (tmp_path / "msg.sig").write_text(sshsig_armor(key, message))
    line = w.public_key_line(w.KeyBlob.plain(key.public_key()))
    (tmp_path / "allowed").write_text(f"alice@example {line}\n")
    keygen("-Y", "verify", "-f", str(tmp_path / "allowed"), "-I", "alice@example",
           "-n", "file", "-s", str(tmp_path / "msg.sig"), stdin=message)
    # a tampered message must fail: the check above can fail
    proc = subprocess.run(
        [SSH_KEYGEN or "ssh-keygen", "-Y", "verify", "-f", str(tmp_path / "allowed"), "-I",
         "alice@example", "-n", "file", "-s", str(tmp_path / "msg.sig")],
        input=b"tampered", capture_output=True, check=False, timeout=30,
    )
    assert proc.returncode != 0


@needs_keygen
@pytest.mark.parametrize("kind", ["rsa2048", "p256", "p521", "ed25519"])
def test_ssh_keygen_signatures_verify_with_us(kind: str, tmp_path: Path) -> None:
    key = make_key(kind)
    path = write_openssh_private(key, tmp_path / "id")
    message = b"signed by ssh-keygen"
    (tmp_path / "m").write_bytes(message)
    keygen("-Y", "sign", "-f", str(path), "-n", "file", str(tmp_path / "m"))
    armored = (tmp_path / "m.sig").read_text().splitlines()
    blob = base64.b64decode("".join(armored[1:-1]))
    r = w.WireReader(blob)
    assert r.read_bytes(6) == b"SSHSIG" and r.read_uint32() == 1
    pub = w.parse_key_blob(r.read_string())
    namespace, reserved, hash_alg = r.read_string(), r.read_string(), r.read_text()
    signature = r.read_string()
    r.expect_end()
    signed = (b"SSHSIG" + w.pack_string(namespace) + w.pack_string(reserved)
              + w.pack_string(hash_alg) + w.pack_string(hashlib.new(hash_alg, message).digest()))
    w.verify_signature(pub, signed, signature)
    with pytest.raises(InvalidSignature):
        w.verify_signature(pub, signed + b"x", signature)


SCHEME_TABLE = [
    # (key kind, blob form, flags, sig-name, hash)
    ("rsa2048", "plain", 0, "ssh-rsa", "sha1"),
    ("rsa2048", "plain", w.SIGN_RSA_SHA2_256, "rsa-sha2-256", "sha256"),
    ("rsa2048", "plain", w.SIGN_RSA_SHA2_512, "rsa-sha2-512", "sha512"),
    ("rsa2048", "raw-der", w.SIGN_RSA_SHA2_256, "x509v3-sign-rsa", "sha1"),
    ("rsa1024", "rfc6187", w.SIGN_RSA_SHA2_256, "ssh-rsa", "sha1"),
    ("rsa2048", "rfc6187", w.SIGN_RSA_SHA2_256, "rsa2048-sha256", "sha256"),
    ("p256", "plain", 0, "ecdsa-sha2-nistp256", "sha256"),
    ("p256", "rfc6187", 0, "ecdsa-sha2-nistp256", "sha256"),
    ("p256", "raw-der", 0, "ecdsa-sha2-nistp256", "sha256"),
    ("p384", "raw-der", w.SIGN_ECDSA_DER, "ecdsa-sha2-nistp384", "sha384"),
    ("p384", "rfc6187", 0, "ecdsa-sha2-nistp384", "sha384"),
    ("p521", "plain", 0, "ecdsa-sha2-nistp521", "sha512"),
    ("ed25519", "plain", w.SIGN_RSA_SHA2_256, "ssh-ed25519", None),
]


def blob_in_form(key: w.PrivateKey, form: str) -> w.KeyBlob:
    if form == "plain":
        return w.KeyBlob.plain(key.public_key())
    if form == "raw-der":
        return w.KeyBlob.raw_der(make_cert(key))
    return w.KeyBlob.rfc6187([make_cert(key)])


@pytest.mark.parametrize(("kind", "form", "flags", "name", "hash_name"), SCHEME_TABLE)
def test_signature_table(kind: str, form: str, flags: int, name: str,
                         hash_name: str | None) -> None:
    key = make_key(kind)
    blob = blob_in_form(key, form)
    scheme = w.signature_scheme(blob, flags)
    assert (scheme.name, scheme.hash) == (name, hash_name)
    sig = w.sign_with_private_key(key, scheme, b"data")
    assert w.parse_signature_blob(sig)[0] == name
    w.verify_signature(blob, b"data", sig, flags)


@pytest.mark.parametrize("kind", ["p256", "p384", "p521"])
def test_asyncssh_verifies_ecdsa_from_raw_r_s(kind: str) -> None:
    key = make_key(kind)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    scheme = w.signature_scheme(w.KeyBlob.plain(key.public_key()))
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    r, s = decode_dss_signature(key.sign(b"m", ec.ECDSA(getattr(hashes, scheme.hash.upper())())))
    size = (key.curve.key_size + 7) // 8
    raw = r.to_bytes(size, "big") + s.to_bytes(size, "big")  # what PKCS#11 CKM_ECDSA returns
    sig = w.ecdsa_signature_from_raw(scheme.name, raw)
    pub = asyncssh.import_public_key(w.public_key_line(w.KeyBlob.plain(key.public_key())))
    assert pub.verify(b"m", sig)
    assert not pub.verify(b"n", sig)


def test_asyncssh_verifies_rsa_sha2_256() -> None:
    key = make_key("rsa2048")
    blob = w.KeyBlob.plain(key.public_key())
    sig = w.sign_with_private_key(key, w.signature_scheme(blob, w.SIGN_RSA_SHA2_256), b"m")
    pub = asyncssh.import_public_key(w.public_key_line(blob))
    assert pub.verify(b"m", sig)


def test_digest_info_is_what_pkcs1_signs() -> None:
    key = make_key("rsa2048")
    assert isinstance(key, rsa.RSAPrivateKey)
    for name, algo in (("sha1", hashes.SHA1()), ("sha256", hashes.SHA256()),
                       ("sha512", hashes.SHA512())):
        sig = key.sign(b"data", padding.PKCS1v15(), algo)
        # recover the signed block with the public key: 00 01 ff.. 00 DigestInfo||hash
        n = key.public_key().public_numbers()
        block = pow(int.from_bytes(sig, "big"), n.e, n.n).to_bytes(256, "big")
        assert block.endswith(w.digest_info(name, b"data"))
    assert w.DIGEST_INFO_PREFIXES["sha256"].hex() == "3031300d060960864801650304020105000420"


def test_ecdsa_der_flag() -> None:
    key = make_key("p256")
    blob = w.KeyBlob.rfc6187([make_cert(key)])
    scheme = w.signature_scheme(blob, w.SIGN_ECDSA_DER)
    assert scheme.ecdsa_der
    name, sig = w.parse_signature_blob(w.sign_with_private_key(key, scheme, b"d"))
    assert name == "ecdsa-sha2-nistp256" and sig[0] == 0x30
    key.public_key().verify(sig, b"d", ec.ECDSA(hashes.SHA256()))


# ------------------------------------------------------------------ text lines


def test_authorized_keys_line_with_expiry(tmp_path: Path) -> None:
    blob = w.KeyBlob.plain(make_key("ed25519").public_key())
    when = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    opt = w.expiry_time_option(when)
    assert opt == 'expiry-time="20300102030405Z"'
    line = w.authorized_keys_line(blob, "alice", [opt, "restrict"])
    parsed = w.parse_public_key_line(line)
    assert parsed.options == (opt, "restrict")
    assert parsed.key == blob and parsed.comment == "alice"
    with pytest.raises(w.WireFormatError, match="timezone"):
        w.expiry_time_option(dt.datetime(2030, 1, 1))
    with pytest.raises(w.WireFormatError):
        w.public_key_line(blob, "two\nlines")


@needs_keygen
def test_sshd_accepts_our_expiry_option(tmp_path: Path) -> None:
    """ssh-keygen -lf parses authorized_keys lines with options the same way sshd does."""
    blob = w.KeyBlob.plain(make_key("p256").public_key())
    when = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    ak = tmp_path / "authorized_keys"
    ak.write_text(w.authorized_keys_line(blob, "c", [w.expiry_time_option(when)]) + "\n")
    assert keygen("-l", "-f", str(ak)).split()[1] == blob.fingerprint


# ------------------------------------------------------------------ garbage


def _mutations() -> st.SearchStrategy[bytes]:
    cert_blob = w.x509_rfc6187_blob([make_cert(make_key("p256"))])
    seeds = [
        w.public_key_blob(make_key(k).public_key()) for k in ("rsa1024", "p256", "ed25519")
    ] + [cert_blob]
    seed = st.sampled_from(seeds)

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(seed))
        for _ in range(draw(st.integers(1, 4))):
            op = draw(st.sampled_from(["flip", "cut", "insert"]))
            pos = draw(st.integers(0, max(len(data) - 1, 0)))
            if op == "flip" and data:
                data[pos] ^= draw(st.integers(1, 255))
            elif op == "cut":
                del data[pos:]
            else:
                data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        return bytes(data)

    return st.one_of(st.binary(max_size=200), mutate())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutations())
def test_garbage_only_raises_wire_format_error(data: bytes) -> None:
    for parse in (w.parse_key_blob, w.public_key_from_blob, w.parse_signature_blob):
        try:
            parse(data)
        except w.WireFormatError:
            pass
    try:
        w.read_private_key(w.WireReader(data))
    except w.WireFormatError:
        pass
    try:
        w.parse_public_key_line("ssh-rsa " + base64.b64encode(data).decode())
    except w.WireFormatError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=120))
def test_garbage_lines_only_raise_wire_format_error(text: str) -> None:
    try:
        w.parse_public_key_line(text)
    except w.WireFormatError:
        pass


@settings(max_examples=50, deadline=None)
@given(st.sampled_from(ALL_KINDS), st.text(alphabet=st.characters(codec="utf-8",
       exclude_characters="\r\n"), max_size=30))
def test_public_key_line_round_trip(kind: str, comment: str) -> None:
    blob = w.KeyBlob.plain(make_key(kind).public_key())
    comment = comment.strip() or None  # type: ignore[assignment]
    parsed = w.parse_public_key_line(w.public_key_line(blob, comment))
    assert parsed.key == blob
    assert parsed.comment == (comment.strip() if comment else None)


def test_unknown_key_type_is_named() -> None:
    with pytest.raises(w.WireFormatError, match="ssh-dss"):
        w.parse_key_blob(w.pack_string("ssh-dss") + w.pack_mpint(1))


def test_unsupported_public_key_types_raise_wire_format_error() -> None:
    from cryptography.hazmat.primitives.asymmetric import x25519

    other = x25519.X25519PrivateKey.generate().public_key()
    for fn in (w.key_algorithm, w.public_key_blob, w.x509_algorithm):
        with pytest.raises(w.WireFormatError, match="X25519"):
            fn(other)
