"""The token layer against real SoftHSM2 tokens (and OpenSC's pkcs11-tool / pkcs11-spy)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from idm.identity.tokens.errors import (
    PinIncorrect,
    PinUnavailable,
    TokenNotFound,
    TokenNotPresent,
    TokenOperationError,
)
from idm.identity.tokens.pin import UriPin
from idm.identity.tokens.session import ProviderSet, TokenSession, verify_signature
from idm.identity.tokens.uri import Pkcs11Uri
from tests.softhsm import SOFTHSM_MODULE, SPY_MODULE, CountingPin, SoftHSM, softhsm, softhsm_second

__all__ = ["softhsm", "softhsm_second"]  # fixtures used below

pytestmark = pytest.mark.softhsm


def _session(providers: ProviderSet, uri: str, pin: str) -> tuple[TokenSession, CountingPin]:
    counter = CountingPin(pin)
    return providers.open(Pkcs11Uri.parse(uri), counter), counter


def test_two_tokens_and_two_module_paths_at_once(
    softhsm: SoftHSM, softhsm_second: SoftHSM, tmp_path: Path
) -> None:
    a = softhsm.init_token("card-a", pin="1111")
    b = softhsm.init_token("card-b", pin="2222")
    c = softhsm_second.init_token("card-c", pin="3333")
    providers = ProviderSet([SOFTHSM_MODULE, softhsm_second.module])

    # tokens were created after the module was initialized: SoftHSM2 needs a rescan
    listed = {t.label: t for t in providers.tokens(rescan=True)}
    assert set(listed) == {"card-a", "card-b", "card-c"}
    assert listed["card-a"].module.path == SOFTHSM_MODULE
    assert listed["card-c"].module.path == softhsm_second.module
    assert listed["card-a"].pin_state.short == "ok"

    # each token gets its own key and signs with its own PIN, all sessions open together
    sessions = {}
    for tok in (a, b, c):
        session, counter = _session(providers, tok.uri, tok.pin)
        key = session.generate_key_pair("ec-p256", label=f"key-{tok.label}")
        sig = session.sign(key, b"data", "sha256")
        assert verify_signature(key.public_key, sig, b"data", "sha256")
        assert [r.token.label for r in counter.requests] == [tok.label]
        sessions[tok.label] = (session, key)
    for label, (session, _key) in sessions.items():
        assert [k.label for k in session.keys("private")] == [f"key-{label}"]

    # a symlink to a loaded module is the same module: its tokens are not listed twice
    link = tmp_path / "libsofthsm2-link.so"
    link.symlink_to(SOFTHSM_MODULE)
    assert len(ProviderSet([SOFTHSM_MODULE, str(link)]).tokens()) == 2

    # module-path in a URI selects the module (and loads it if needed)
    only_second = Pkcs11Uri.parse(f"pkcs11:?module-path={softhsm_second.module}")
    assert [t.label for t in ProviderSet().find_tokens(only_second)] == ["card-c"]


def test_a_uri_pin_never_reaches_another_token(softhsm: SoftHSM) -> None:
    a = softhsm.init_token("card-a", pin="1111")
    softhsm.init_token("card-b", pin="2222")
    providers = ProviderSet([SOFTHSM_MODULE])
    pin_for_a = UriPin(Pkcs11Uri.parse(a.uri_with_pin))
    session_b = providers.open(Pkcs11Uri(token="card-b"), pin_for_a)
    with pytest.raises(PinUnavailable, match="another token"):
        session_b.login()
    assert "count-low" not in session_b.pin_state().short  # no C_Login was attempted
    # an ambiguous URI is refused before any PIN is asked
    with pytest.raises(Exception, match="matches 2 tokens"):
        providers.open(Pkcs11Uri(), pin_for_a)


def test_removed_token_is_found_again_after_its_slot_changed(softhsm: SoftHSM) -> None:
    providers = ProviderSet([SOFTHSM_MODULE])
    for n in range(3):
        softhsm.init_token(f"card-{n}", pin="1111")
    # SoftHSM2 2.6 derives a slot's id from the token serial and lists slots in id
    # order: take the card that is listed last, so cards added later can come before it.
    last = providers.tokens(rescan=True)[-1]
    a = next(t for t in softhsm._tokens.values() if t.serial == last.identity.serial)
    softhsm.generate_key(a, "rsa2048", key_id=b"\x0a", label="a-key")
    session, counter = _session(providers, a.uri, a.pin)
    key = session.keys("private", login=True)[0]
    index_before = [t.identity for t in providers.tokens()].index(session.identity)
    slot_before = session.info.slot_id

    softhsm.remove(a)
    with pytest.raises(TokenNotPresent, match=f"{a.label}.*insert it"):
        session.sign(key, b"x")
    with pytest.raises(TokenNotFound, match="no token matching"):
        providers.find_token(Pkcs11Uri.parse(a.uri))

    # other cards are inserted while it is out, until one is listed before it
    for n in range(40):
        new = softhsm.init_token(f"new-{n}", pin="2222")
        if int(new.serial[-8:], 16) & 0x7FFFFFFF < slot_before:
            break
    softhsm.reinsert(a)

    signature = session.sign(key, b"x")  # the same session object follows the token
    assert verify_signature(key.public_key, signature, b"x", "sha256")
    index_after = [t.identity for t in providers.tokens()].index(session.identity)
    assert index_after > index_before  # its slot (position in the slot list) changed
    assert len(counter.requests) == 2  # a re-opened session asks for the PIN again
    found = providers.find_token(Pkcs11Uri.parse(a.uri))
    assert found.identity == session.identity

    # the object URI still names the same key
    objects = providers.open(found).find_objects(key.uri, login=True)
    assert [o.id for o in objects] == [b"\x0a"]


def test_token_moved_to_another_module_is_followed(
    softhsm: SoftHSM, softhsm_second: SoftHSM
) -> None:
    a = softhsm.init_token("roaming", pin="1111")
    softhsm.generate_key(a, "ec-p256", key_id=b"\x01", label="k")
    providers = ProviderSet([SOFTHSM_MODULE, softhsm_second.module])
    session, _ = _session(providers, a.uri, a.pin)
    key = session.keys("private", login=True)[0]
    assert session.info.module.path == SOFTHSM_MODULE

    softhsm.remove(a)
    softhsm.reinsert(a, into=softhsm_second)  # the card goes into another reader
    sig = session.sign(key, b"moved")
    assert verify_signature(key.public_key, sig, b"moved", "sha256")
    assert session.info.module.path == softhsm_second.module


def test_wrong_pin_is_tried_once_and_explained(softhsm: SoftHSM, tmp_path: Path) -> None:
    if SPY_MODULE is None:
        pytest.skip("OpenSC pkcs11-spy is not installed")
    a = softhsm.init_token("card-a", pin="1111")
    log = tmp_path / "spy.log"
    # A separate process loads the token through pkcs11-spy, which logs every PKCS#11
    # call: the log shows how many times C_Login was really called.
    script = f"""
import sys
from idm.identity.tokens.session import ProviderSet
from idm.identity.tokens.uri import Pkcs11Uri
from idm.identity.tokens.errors import PinIncorrect
asked = []
def wrong(request):
    asked.append(request)
    return "9999"
providers = ProviderSet([{SPY_MODULE!r}])
session = providers.open(Pkcs11Uri.parse({a.uri!r}), wrong)
try:
    session.keys("private", login=True)
except PinIncorrect as exc:
    print(exc)
# a later call must not replay the PIN either: it asks again (and we refuse here)
print("asked", len(asked))
"""
    env = softhsm.env | {
        "PKCS11SPY": SOFTHSM_MODULE,
        "PKCS11SPY_OUTPUT": str(log),
    }
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    message, asked = done.stdout.strip().splitlines()
    assert message.startswith("wrong PIN for token 'card-a'")
    assert "not tried again" in message
    assert "a wrong PIN was entered since the last good login" in message  # PIN state
    assert "9999" not in message
    assert asked == "asked 1"
    spy_calls = [line.split()[-1] for line in log.read_text().splitlines() if ": C_" in line]
    assert "C_OpenSession" in spy_calls  # the spy saw the conversation
    assert spy_calls.count("C_Login") == 1

    # the token itself records the failed try
    providers = ProviderSet([SOFTHSM_MODULE])
    assert providers.find_token(Pkcs11Uri.parse(a.uri)).pin_state.short == "count-low"


def test_wrong_pin_in_process_raises_and_does_not_retry(softhsm: SoftHSM) -> None:
    a = softhsm.init_token("card-a", pin="1111")
    providers = ProviderSet([SOFTHSM_MODULE])
    session, counter = _session(providers, a.uri, "0000")
    with pytest.raises(PinIncorrect, match="not tried again.*PIN state now"):
        session.login()
    assert len(counter.requests) == 1
    assert session.pin_state().count_low
    counter.pin = a.pin  # the person types the right PIN next time
    session.login()
    assert session.logged_in and len(counter.requests) == 2
    assert not session.pin_state().count_low


@pytest.mark.parametrize("kind", ["rsa2048", "ec-p256", "ec-p384"])
def test_signatures_verify_with_the_public_key(softhsm: SoftHSM, kind: str) -> None:
    a = softhsm.init_token("card-a", pin="1111")
    providers = ProviderSet([SOFTHSM_MODULE])
    session, _ = _session(providers, a.uri, a.pin)
    key = session.generate_key_pair(kind, label="k", key_id=b"\x42")
    hashes = ["sha1", "sha256", "sha512"] if kind.startswith("rsa") else ["sha256", "sha384"]
    for hash_name in hashes:
        sig = session.sign(key, b"message to sign", hash_name)
        assert verify_signature(key.public_key, sig, b"message to sign", hash_name)
        assert not verify_signature(key.public_key, sig, b"another message", hash_name)
    if kind.startswith("ec"):
        assert isinstance(key.public_key, ec.EllipticCurvePublicKey)
        assert len(session.sign(key, b"m")) == 2 * ((key.bits + 7) // 8)  # raw r||s
    else:
        assert isinstance(key.public_key, rsa.RSAPublicKey) and key.bits == 2048


def test_generated_key_is_sensitive_and_never_extractable(softhsm: SoftHSM) -> None:
    a = softhsm.init_token("card-a", pin="1111")
    session, _ = _session(ProviderSet([SOFTHSM_MODULE]), a.uri, a.pin)
    session.generate_key_pair("rsa2048", label="k", key_id=b"\x01")
    listing = softhsm.pkcs11_tool("--list-objects", "--type", "privkey", token=a, login=True)
    assert "never extractable" in listing.stdout and "sensitive" in listing.stdout
    assert "ID:         01" in listing.stdout


def test_a_key_id_held_by_a_lone_public_key_is_refused_and_the_key_kept(
    softhsm: SoftHSM,
) -> None:
    # a failed generation deletes the key objects of its id: the id must be unused
    a = softhsm.init_token("card-a", pin="1111")
    softhsm.generate_key(a, "ec-p256", key_id=b"\x07", label="older")
    softhsm.pkcs11_tool("--delete-object", "--type", "privkey", "--id", "07", token=a,
                        login=True)
    session, _ = _session(ProviderSet([SOFTHSM_MODULE]), a.uri, a.pin)
    with pytest.raises(TokenOperationError, match="already has a key with id 07"):
        session.generate_key_pair("ec-p256", label="new", key_id=b"\x07")
    assert [(k.label, k.id) for k in session.keys("public")] == [("older", b"\x07")]
    assert session.keys("private", login=True) == []


def test_keys_made_by_pkcs11_tool_are_listed_and_sign(softhsm: SoftHSM) -> None:
    a = softhsm.init_token("card-a", pin="1111")
    softhsm.generate_key(a, "rsa3072", key_id=b"\x01\x02", label="tool-rsa")
    softhsm.generate_key(a, "ec-p384", key_id=b"\x03", label="tool-ec")
    session, _ = _session(ProviderSet([SOFTHSM_MODULE]), a.uri, a.pin)
    keys = {k.label: k for k in session.keys("private", login=True)}
    assert keys["tool-rsa"].description == "RSA 3072"
    assert keys["tool-ec"].description == "EC P-384"
    assert str(keys["tool-rsa"].uri) == (
        f"{session.identity.uri()};object=tool-rsa;type=private;id=%01%02"
    )
    for key in keys.values():
        assert verify_signature(key.public_key, session.sign(key, b"z"), b"z", "sha256")


def test_always_authenticate_key_asks_for_the_pin_per_signature(softhsm: SoftHSM) -> None:
    a = softhsm.init_token("card-a", pin="1111")
    softhsm.pkcs11_tool(
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--id",
        "9c",
        "--label",
        "sig",
        "--always-auth",
        "--usage-sign",
        token=a,
        login=True,
    )
    session, counter = _session(ProviderSet([SOFTHSM_MODULE]), a.uri, a.pin)
    key = session.keys("private", login=True)[0]
    assert key.always_authenticate
    for _ in range(2):
        sig = session.sign(key, b"m")
        assert verify_signature(key.public_key, sig, b"m", "sha256")
    kinds = [r.context_specific for r in counter.requests]
    assert kinds == [False, True, True]  # one login, then one PIN per signature
    counter.pin = "0000"
    with pytest.raises(PinIncorrect, match="key 'sig'.*not tried again"):
        session.sign(key, b"m")
    assert len(counter.requests) == 4


def _issue(sample_ca, csr: x509.CertificateSigningRequest, tmp_path: Path) -> x509.Certificate:
    csr_path = tmp_path / "req.pem"
    csr_path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    out = tmp_path / "issued.pem"
    sample_ca.run("issue", "--csr", str(csr_path), "--out", str(out))
    return x509.load_pem_x509_certificate(out.read_bytes())


@pytest.mark.parametrize("kind", ["rsa2048", "ec-p256", "ec-p384"])
def test_csr_verifies_and_issued_certificate_pairs_with_the_key(
    softhsm: SoftHSM, tmp_path: Path, kind: str
) -> None:
    from tests.sample_ca_fixture import make_sample_ca

    a = softhsm.init_token("card-a", pin="1111")
    session, _ = _session(ProviderSet([SOFTHSM_MODULE]), a.uri, a.pin)
    key = session.generate_key_pair(kind, label="login", key_id=b"\x01")
    subject = x509.Name.from_rfc4514_string("CN=Alice Example,O=idm demo,C=XX")
    csr = session.make_csr(key, subject)
    pem = tmp_path / "alice.csr"
    pem.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    verified = subprocess.run(
        ["openssl", "req", "-verify", "-noout", "-in", str(pem)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr
    assert "verify OK" in verified.stderr + verified.stdout
    assert csr.subject == subject

    ca = make_sample_ca(tmp_path)
    cert = _issue(ca, csr, tmp_path)
    stored = session.store_certificate(cert)  # finds the key by its public key
    assert stored.id == b"\x01"
    assert session.store_certificate(cert) == stored  # idempotent

    (pair,) = session.pairs(login=True)
    assert pair.certificate is not None and pair.private_key is not None
    assert pair.paired_by == "id"
    assert pair.certificate.der == stored.der and pair.private_key.id == b"\x01"
    assert not pair.certificate.self_signed
    # the issued certificate's key signs: the pair really belongs together
    sig = session.sign(pair.private_key, b"proof")
    assert verify_signature(pair.certificate.public_key, sig, b"proof", "sha256")


def test_pairing_falls_back_to_equal_public_keys(softhsm: SoftHSM, tmp_path: Path) -> None:
    from tests.sample_ca_fixture import make_sample_ca

    a = softhsm.init_token("card-a", pin="1111")
    ca = make_sample_ca(tmp_path)
    # bob's key (EC) under one id, his certificate under another
    softhsm.import_private_key(a, ca.user_key("bob"), key_id=b"\x01", label="bob-key")
    softhsm.import_certificate(a, ca.user_cert("bob"), key_id=b"\x99", label="bob-cert")
    # alice's certificate under bob's key id: same id, different key -> not paired
    softhsm.import_certificate(a, ca.user_cert("alice"), key_id=b"\x01", label="stale")
    session, _ = _session(ProviderSet([SOFTHSM_MODULE]), a.uri, a.pin)
    pairs = {p.certificate.label: p for p in session.pairs(login=True) if p.certificate}
    assert pairs["bob-cert"].paired_by == "public-key"
    assert pairs["bob-cert"].private_key.label == "bob-key"
    assert pairs["stale"].private_key is None


def test_certificates_are_listed_without_login(softhsm: SoftHSM, tmp_path: Path) -> None:
    from tests.sample_ca_fixture import make_sample_ca

    a = softhsm.init_token("card-a", pin="1111")
    ca = make_sample_ca(tmp_path)
    softhsm.import_certificate(a, ca.user_cert("alice"), key_id=b"\x05", label="alice")
    providers = ProviderSet([SOFTHSM_MODULE])
    session = providers.open(Pkcs11Uri.parse(a.uri))  # no PIN provider at all
    (cert,) = session.certificates()
    assert cert.subject.startswith("CN=alice")
    assert str(cert.uri) == f"{session.identity.uri()};object=alice;type=cert;id=%05"
    assert (
        hashlib.sha256(cert.der).hexdigest()
        == hashlib.sha256(
            x509.load_pem_x509_certificate(ca.user_cert("alice").read_bytes()).public_bytes(
                serialization.Encoding.DER
            )
        ).hexdigest()
    )
    with pytest.raises(PinUnavailable, match="needs a PIN"):
        session.keys("private", login=True)


def test_bad_provider_is_named(tmp_path: Path) -> None:
    from idm.identity.tokens.errors import ProviderError

    with pytest.raises(ProviderError, match="no-such.so"):
        ProviderSet([str(tmp_path / "no-such.so")])
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"not a library")
    with pytest.raises(ProviderError, match="cannot load PKCS#11 provider"):
        ProviderSet([str(junk)])
    assert os.path.exists(SOFTHSM_MODULE)
