"""The agent <-> PKCS#11 helper protocol at its edges: a helper that is gone, a reply too
long to send (a real helper process with SoftHSM2), a helper that asks for PINs on and on."""

from __future__ import annotations

import datetime
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier

from idm.identity.agent.helper_provider import MAX_PIN_REQUESTS, HelperProvider
from idm.identity.agent.pkcs11_helper import (
    MAX_MESSAGE,
    HelperProtocolError,
    recv_message,
    send_message,
)
from idm.identity.tokens.errors import ProviderError
from idm.identity.tokens.module_file import open_module_file
from tests.softhsm import SOFTHSM_MODULE, SoftHSM, SoftHSMToken

# pkcs11-tool --write-object takes at most a few KB: store the certificate with
# python-pkcs11, in a process of its own (this one keeps no module loaded).
_STORE = """
import sys, pkcs11
from cryptography import x509
from pkcs11 import Attribute, ObjectClass
module, label, pin, key_id, path = sys.argv[1:]
der = open(path, "rb").read()
token = pkcs11.lib(module).get_token(token_label=label)
with token.open(user_pin=pin, rw=True) as s:
    s.create_object({Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.TOKEN: True,
                     Attribute.CERTIFICATE_TYPE: pkcs11.CertificateType.X_509,
                     Attribute.ID: bytes.fromhex(key_id), Attribute.LABEL: "bulky",
                     Attribute.SUBJECT: x509.load_der_x509_certificate(der).subject.public_bytes(),
                     Attribute.VALUE: der})
"""


def test_sending_to_a_closed_peer_is_a_protocol_error() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    theirs.close()
    with ours, pytest.raises(HelperProtocolError, match="connection failed"):
        send_message(ours, {"op": "tokens"})


def test_a_helper_asking_for_pins_on_and_on_is_stopped() -> None:
    """A hostile module's helper answers every request with another PIN request (each a PIN
    dialog for the user): the agent answers a few, then stops the helper."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    token = {"manufacturer": "m", "model": "x", "serial": "1", "label": "card"}

    def hostile() -> None:
        with theirs:
            recv_message(theirs)
            try:
                for _ in range(20):  # then it gives up (an agent without a limit returns)
                    send_message(theirs, {"pin_request": {"token": token, "flags": 0}})
                    recv_message(theirs)
                send_message(theirs, {"ok": True})
            except HelperProtocolError:
                return  # the agent hung up

    # The provider's process is a stand-in (the hostile side is the thread above).
    provider = object.__new__(HelperProvider)
    provider.path = "/usr/lib/hostile.so"
    provider._lock = threading.Lock()
    provider._sessions = {}
    provider._sock = ours
    provider.proc = subprocess.Popen(["sleep", "60"])
    asked: list[object] = []
    worker = threading.Thread(target=hostile, daemon=True)
    worker.start()
    with pytest.raises(ProviderError, match=f"more than {MAX_PIN_REQUESTS} PIN requests"):
        provider.call({"op": "login"}, lambda request: asked.append(request) or "1111")
    assert len(asked) == MAX_PIN_REQUESTS
    assert provider.proc.poll() is not None  # stopped
    worker.join(10)
    assert not worker.is_alive()


def _bulky_certificate(n: int) -> x509.Certificate:
    """A self-signed certificate carrying about MAX_MESSAGE/2 bytes in an extension."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"bulky {n}")])
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.99999.1"),
                                                      b"x" * (MAX_MESSAGE // 2)),
                           critical=False)
            .sign(key, hashes.SHA256()))


def _store(softhsm: SoftHSM, card: SoftHSMToken, cert: x509.Certificate, key_id: bytes,
           tmp_path: Path) -> None:
    der = tmp_path / "cert.der"
    der.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    subprocess.run([sys.executable, "-c", _STORE, SOFTHSM_MODULE, card.label, card.pin,
                    key_id.hex(), str(der)], env=softhsm.env, check=True, timeout=60)


@pytest.mark.softhsm
def test_a_reply_too_long_is_an_error_and_the_helper_goes_on(softhsm: SoftHSM,
                                                             tmp_path: Path) -> None:
    card = softhsm.init_token("bulky-card")
    for n in (1, 2):  # base64 in JSON: together well over MAX_MESSAGE
        _store(softhsm, card, _bulky_certificate(n), bytes([n]), tmp_path)
    real = os.path.realpath(SOFTHSM_MODULE)
    helper = HelperProvider(open_module_file(real, [os.path.dirname(real)]))
    try:
        (info,) = helper.tokens()
        session = helper.open(info)
        with pytest.raises(ProviderError, match=f"exceeds {MAX_MESSAGE}"):
            session.certificates()
        assert helper.proc.poll() is None  # the helper still serves
        assert [t.identity for t in helper.tokens()] == [info.identity]
    finally:
        helper.close()
