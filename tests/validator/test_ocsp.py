"""OCSP: good and revoked answers, and every way a responder can fail, under each policy."""

from __future__ import annotations

import datetime as dt
import socket

import pytest
from cryptography import x509
from cryptography.x509 import ocsp as cocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from idm.validator.api import validate
from idm.validator.policy import Policy
from idm.validator.revocation.fetch import Fetcher
from idm.validator.revocation.ocsp import OcspError, build_request, check_response
from idm.validator.revocation.store import MemoryRevocationStore
from tests.validator.pki import (
    DAY,
    NOW,
    make_cert,
    ocsp_responder_cert,
    ocsp_response,
    unsuccessful_ocsp,
)
from tests.validator.responders import Reply, responder

FAST = Fetcher(connect_timeout=0.5, read_timeout=0.3)


def _pki(url: str):
    root = make_cert("OCSP Root", None, ca=True)
    inter = make_cert("OCSP Intermediate", root, ca=True)
    leaf = make_cert("erin", inter, eku=[ExtendedKeyUsageOID.CLIENT_AUTH], ocsp_url=url)
    return root, inter, leaf


def _run(leaf, root, inter, mode, store=None):
    return validate(
        leaf.cert,
        anchors=[root.cert],
        intermediates=[inter.cert],
        policy=Policy(revocation=mode),
        fetcher=FAST,
        store=store,
    )


def _ocsp_reply(body: bytes) -> Reply:
    return Reply(200, body, {"Content-Type": "application/ocsp-response"})


def test_good_and_revoked_and_cached():
    with responder(lambda p, b: Reply(500)) as srv:
        root, inter, leaf = _pki(srv.url + "/ocsp")
        srv.set_reply(lambda p, b: _ocsp_reply(ocsp_response(leaf.cert, inter)))
        store = MemoryRevocationStore()
        v = _run(leaf, root, inter, "hard-fail", store)
        assert v.status == "valid", v.reason
        assert [(e.source, e.status) for e in v.revocation] == [("ocsp", "good")]
        assert v.fresh_until is not None and v.fresh_until <= NOW + DAY
        method, _, body = srv.requests[0]
        assert method == "POST"
        req = cocsp.load_der_ocsp_request(body)
        assert req.serial_number == leaf.cert.serial_number
        assert req.extensions.get_extension_for_class(x509.OCSPNonce)
        # the answer is cached: no second request
        assert _run(leaf, root, inter, "hard-fail", store).status == "valid"
        assert len(srv.requests) == 1
        srv.set_reply(lambda p, b: _ocsp_reply(ocsp_response(leaf.cert, inter, status="revoked")))
        v = _run(leaf, root, inter, "soft-fail")
        assert v.status == "revoked" and "OCSP" in v.reason


def test_delegated_responder():
    with responder(lambda p, b: Reply(500)) as srv:
        root, inter, leaf = _pki(srv.url)
        good = ocsp_responder_cert(inter)
        srv.set_reply(lambda p, b: _ocsp_reply(ocsp_response(leaf.cert, inter, signer=good)))
        assert _run(leaf, root, inter, "hard-fail").status == "valid"
        bad = ocsp_responder_cert(inter, eku=False)
        srv.set_reply(lambda p, b: _ocsp_reply(ocsp_response(leaf.cert, inter, signer=bad)))
        v = _run(leaf, root, inter, "hard-fail")
        assert v.status == "revocation-unknown" and "OCSPSigning" in v.reason
        # a responder certified by another CA, even with the right EKU
        other = ocsp_responder_cert(make_cert("Other CA", None, ca=True))
        srv.set_reply(lambda p, b: _ocsp_reply(ocsp_response(leaf.cert, inter, signer=other)))
        assert _run(leaf, root, inter, "hard-fail").status == "revocation-unknown"


def _flip_last_byte(data: bytes) -> bytes:
    # The last byte belongs to the signature: the response still parses, but no longer
    # verifies under the issuer's key (as if signed by another key).
    return data[:-1] + bytes([data[-1] ^ 0x01])


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


FAILURES = {
    "http-500": (lambda leaf, inter: Reply(500, b"oops"), "HTTP status 500"),
    "garbage": (lambda leaf, inter: _ocsp_reply(b"\x30\x82garbage"), "malformed OCSP"),
    "slow": (lambda leaf, inter: Reply(200, b"", delay=3.0), "read timed out"),
    "wrong-key": (
        lambda leaf, inter: _ocsp_reply(_flip_last_byte(ocsp_response(leaf.cert, inter))),
        "signature does not verify",
    ),
    "impostor-responder": (
        lambda leaf, inter: _ocsp_reply(
            ocsp_response(leaf.cert, inter, signer=make_cert("OCSP Intermediate", None))
        ),
        "not signed by the issuing CA",
    ),
    "stale": (
        lambda leaf, inter: _ocsp_reply(
            ocsp_response(leaf.cert, inter, this_update=NOW - 3 * DAY, next_update=NOW - 2 * DAY)
        ),
        "stale",
    ),
    "unauthorized": (
        lambda leaf, inter: _ocsp_reply(unsuccessful_ocsp(cocsp.OCSPResponseStatus.UNAUTHORIZED)),
        "unauthorized",
    ),
}


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_responder_failures_follow_the_policy(failure):
    make_reply, words = FAILURES[failure]
    with responder(lambda p, b: Reply(500)) as srv:
        root, inter, leaf = _pki(srv.url)
        srv.set_reply(lambda p, b: make_reply(leaf, inter))
        hard = _run(leaf, root, inter, "hard-fail")
        assert hard.status == "revocation-unknown", hard.reason
        assert words in hard.reason
        assert [(e.source, e.status) for e in hard.revocation] == [("ocsp", "unknown")]
        soft = _run(leaf, root, inter, "soft-fail")
        assert soft.status == "valid" and any(words in w for w in soft.warnings)
        assert _run(leaf, root, inter, "off").status == "valid"


def test_responder_down():
    root, inter, leaf = _pki(f"http://127.0.0.1:{_closed_port()}/ocsp")
    hard = _run(leaf, root, inter, "hard-fail")
    assert hard.status == "revocation-unknown" and "connection refused" in hard.reason
    assert _run(leaf, root, inter, "soft-fail").status == "valid"


def test_offline_never_touches_the_network():
    with responder(lambda p, b: Reply(500)) as srv:
        root, inter, leaf = _pki(srv.url)
        v = validate(
            leaf.cert,
            anchors=[root.cert],
            intermediates=[inter.cert],
            policy=Policy(offline=True),
            fetcher=FAST,
        )
        assert v.status == "revocation-unknown" and "offline" in v.reason
        assert srv.requests == []


def test_nonce_mismatch_and_wrong_certificate():
    root = make_cert("R", None, ca=True)
    inter = make_cert("I", root, ca=True)
    leaf = make_cert("frank", inter)
    other = make_cert("grace", inter)
    request, nonce = build_request(leaf.cert, inter.cert)
    assert nonce
    ok = ocsp_response(leaf.cert, inter, nonce=nonce)
    st = check_response(ok, leaf.cert, inter.cert, nonce=nonce, at=NOW, max_age=86400)
    assert st.status == "good"
    bad_nonce = ocsp_response(leaf.cert, inter, nonce=b"x" * 16)
    with pytest.raises(OcspError, match="nonce"):
        check_response(bad_nonce, leaf.cert, inter.cert, nonce=nonce, at=NOW, max_age=86400)
    with pytest.raises(OcspError, match="does not cover"):
        check_response(ok, other.cert, inter.cert, nonce=None, at=NOW, max_age=86400)
    old = ocsp_response(leaf.cert, inter, this_update=NOW - dt.timedelta(hours=3))
    with pytest.raises(OcspError, match="maximum age"):
        check_response(old, leaf.cert, inter.cert, nonce=None, at=NOW, max_age=3600)
