"""The signing fast path of TokenSession against real SoftHSM2 tokens.

A signature reuses the key object (and its CKA_ALWAYS_AUTHENTICATE flag) found earlier
on the same session and does not ask the slot first; these tests pin down that nothing a
user relies on is lost by that: a pulled card is still reported as not present, a key
replaced on the card is found again, context-specific logins still happen per signature
and a wrong PIN is still never retried. pkcs11-spy shows the calls really made.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from idm.identity.tokens.errors import PinIncorrect, TokenNotPresent
from idm.identity.tokens.session import KeyObject, ProviderSet, verify_signature
from idm.identity.tokens.uri import Pkcs11Uri
from tests.softhsm import SOFTHSM_MODULE, SPY_MODULE, CountingPin, SoftHSM, softhsm

__all__ = ["softhsm"]  # fixture used below

pytestmark = pytest.mark.softhsm


def _bare(key: KeyObject) -> KeyObject:
    """The key as the agent knows it: CKA_ID and public key from the certificate, no
    label and no CKA_ALWAYS_AUTHENTICATE (only the token can say)."""
    return KeyObject(key.token, "", key.id, "private", key.key_type, key.bits, key.public_key,
                     curve=key.curve)


def test_repeated_signatures_make_only_sign_calls(softhsm: SoftHSM, tmp_path: Path) -> None:
    if SPY_MODULE is None:
        pytest.skip("OpenSC pkcs11-spy is not installed")
    a = softhsm.init_token("card-a", pin="1111")
    softhsm.generate_key(a, "rsa2048", key_id=b"\x01", label="k")
    log = tmp_path / "spy.log"
    marker = tmp_path / "marker"
    script = f"""
from pathlib import Path
from idm.identity.tokens.session import ProviderSet, verify_signature
from idm.identity.tokens.uri import Pkcs11Uri
session = ProviderSet([{SPY_MODULE!r}]).open(Pkcs11Uri.parse({a.uri!r}), lambda r: "1111")
key = session.keys("private", login=True)[0]
session.sign(key, b"first")
Path({str(marker)!r}).write_text(str(Path({str(log)!r}).stat().st_size))
for n in range(3):
    assert verify_signature(key.public_key, session.sign(key, b"m%d" % n), b"m%d" % n, "sha256")
"""
    env = softhsm.env | {"PKCS11SPY": SOFTHSM_MODULE, "PKCS11SPY_OUTPUT": str(log)}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True)
    after_first = log.read_bytes()[int(marker.read_text()):].decode("utf-8", "replace")
    calls = [line.split()[-1] for line in after_first.splitlines() if ": C_" in line]
    if calls[-1:] == ["C_Finalize"]:  # the process ending
        calls.pop()
    # no find, no attribute read, no slot check: C_SignInit, then C_Sign (python-pkcs11
    # asks the length with a first C_Sign without buffer)
    assert set(calls) == {"C_SignInit", "C_Sign"} and calls.count("C_SignInit") == 3, calls


def test_pulled_card_is_reported_not_present_and_followed_back(softhsm: SoftHSM) -> None:
    a = softhsm.init_token("card-a", pin="1111")
    softhsm.generate_key(a, "rsa2048", key_id=b"\x01", label="k")
    counter = CountingPin(a.pin)
    session = ProviderSet([SOFTHSM_MODULE]).open(Pkcs11Uri.parse(a.uri), counter)
    key = _bare(session.keys("private", login=True)[0])
    for _ in range(2):  # the key object is remembered now
        assert verify_signature(key.public_key, session.sign(key, b"x"), b"x", "sha256")

    softhsm.remove(a)
    with pytest.raises(TokenNotPresent, match="card-a.*insert it"):
        session.sign(key, b"x")
    softhsm.reinsert(a)
    assert verify_signature(key.public_key, session.sign(key, b"y"), b"y", "sha256")
    assert len(counter.requests) == 2  # the re-opened session logged in again


def test_key_replaced_on_the_card_is_found_again(softhsm: SoftHSM) -> None:
    a = softhsm.init_token("card-a", pin="1111")
    softhsm.generate_key(a, "ec-p256", key_id=b"\x07", label="old")
    counter = CountingPin(a.pin)
    session = ProviderSet([SOFTHSM_MODULE]).open(Pkcs11Uri.parse(a.uri), counter)
    old = session.keys("private", login=True)[0]
    session.sign(_bare(old), b"x")

    # another program replaces the key under the same CKA_ID
    softhsm.pkcs11_tool("--delete-object", "--type", "privkey", "--id", "07", token=a,
                        login=True)
    softhsm.generate_key(a, "ec-p256", key_id=b"\x07", label="new")
    new = next(k for k in session.keys("private") if k.label == "new")
    signature = session.sign(_bare(old), b"z")  # same reference: CKA_ID 07
    assert verify_signature(new.public_key, signature, b"z", "sha256")
    assert not verify_signature(old.public_key, signature, b"z", "sha256")
    assert len(counter.requests) == 1  # no PIN was asked for the second look-up


def test_always_authenticate_flag_is_read_from_the_token(softhsm: SoftHSM) -> None:
    a = softhsm.init_token("card-a", pin="1111")
    softhsm.pkcs11_tool("--keypairgen", "--key-type", "EC:prime256v1", "--id", "9c",
                        "--label", "sig", "--always-auth", "--usage-sign", token=a, login=True)
    counter = CountingPin(a.pin)
    session = ProviderSet([SOFTHSM_MODULE]).open(Pkcs11Uri.parse(a.uri), counter)
    key = _bare(session.keys("private", login=True)[0])
    assert not key.always_authenticate  # what the caller knows; the token knows better
    for n in range(3):
        sig = session.sign(key, b"m%d" % n)
        assert verify_signature(key.public_key, sig, b"m%d" % n, "sha256")
    assert [r.context_specific for r in counter.requests] == [False, True, True, True]

    counter.pin = "0000"
    with pytest.raises(PinIncorrect, match="not tried again"):
        session.sign(key, b"m")
    assert len(counter.requests) == 5  # the wrong PIN was sent once
    counter.pin = a.pin
    session.sign(key, b"m")  # the card is not stuck: the next signature asks and works
    # (SoftHSM2 keeps the failed operation on its session, so that session is closed and
    # the card logs in again first; a token that ends the operation asks only once)
    later = counter.requests[5:]
    assert later[-1].context_specific and len(later) in (1, 2)
