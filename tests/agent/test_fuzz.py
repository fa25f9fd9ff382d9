"""Fuzzing the agent's message handling: no crash, no hang, bounded memory, still serving."""

from __future__ import annotations

import struct
import tracemalloc
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idm.identity import sshwire as w
from idm.identity.agent import protocol as p
from idm.identity.agent.identities import SocketKind
from idm.identity.agent.server import AgentServer, ClientState
from tests.agent.client import AgentClient
from tests.agent.conftest import IdmAgent

_RSA = rsa.generate_private_key(65537, 1024)
_EC = ec.generate_private_key(ec.SECP256R1())
_ED = ed25519.Ed25519PrivateKey.generate()

VALID_MESSAGES = [
    p.RequestIdentities().encode(),
    p.SignRequest(w.public_key_blob(_EC.public_key()), b"data", 0).encode(),
    p.SignRequest(w.public_key_blob(_RSA.public_key()), b"data", 2).encode(),
    p.AddIdentity(_RSA, "rsa", p.Constraints(lifetime=60, confirm=True)).encode(),
    p.AddIdentity(_EC, "ec").encode(),
    p.AddIdentity(_ED, "ed").encode(),
    p.RemoveIdentity(w.public_key_blob(_ED.public_key())).encode(),
    p.RemoveAllIdentities().encode(),
    p.AddSmartcardKey("/nonexistent.so", "0000").encode(),
    p.RemoveSmartcardKey("/nonexistent.so").encode(),
    p.Extension(p.SESSION_BIND, b"\0\0\0\0").encode(),
    p.Extension("query").encode(),
]


@st.composite
def mutated_bodies(draw: st.DrawFn) -> bytes:
    """A valid message body with bytes flipped, cut or inserted."""
    body = bytearray(draw(st.sampled_from(VALID_MESSAGES))[4:])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = draw(st.integers(0, max(len(body) - 1, 0)))
        if op == "flip" and body:
            body[pos] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del body[pos:]
        else:
            body[pos:pos] = draw(st.binary(min_size=1, max_size=8))
    return bytes(body)


BODIES = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda t, rest: bytes([t]) + rest, st.integers(0, 255), st.binary(max_size=200)),
    mutated_bodies(),
)


def _never_confirm(prompt: str) -> bool:
    return False


@pytest.fixture
def server() -> Iterator[AgentServer]:
    s = AgentServer(confirm=_never_confirm)
    yield s
    s.close()


@settings(max_examples=500, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODIES)
def test_handle_never_raises_and_keeps_answering(server: AgentServer, body: bytes) -> None:
    state = ClientState(SocketKind.STANDARD, 0, 0)
    out = server.handle(body, state)
    (length,) = struct.unpack(">I", out[:4])
    assert length == len(out) - 4
    p.parse_response(out[4:])  # always a well-formed response
    if server.locked:  # garbage that happened to be a valid LOCK: start over
        server._lock_hash = server._lock_salt = None
    answer = p.parse_response(server.handle(p.RequestIdentities().encode()[4:], state)[4:])
    assert isinstance(answer, p.IdentitiesAnswer)


def test_handling_a_maximal_message_uses_bounded_memory(server: AgentServer) -> None:
    state = ClientState(SocketKind.STANDARD, 0, 0)
    body = bytes([p.SSH_AGENTC_SIGN_REQUEST]) + w.pack_string(b"\x00" * (p.MAX_MESSAGE_SIZE - 9))
    tracemalloc.start()
    try:
        server.handle(body, state)
        server.handle(bytes([p.SSH_AGENTC_ADD_ID_CONSTRAINED]) + b"\xff" * 1000, state)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * p.MAX_MESSAGE_SIZE


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(BODIES.filter(lambda b: len(b) > 0), min_size=1, max_size=4),
       tail=st.binary(max_size=64))
def test_agent_process_survives_garbage(idm_agent: IdmAgent, frames: list[bytes],
                                        tail: bytes) -> None:
    with AgentClient(idm_agent.sock) as c:
        for body in frames:
            c.send_raw(p.frame(body))
            answer = c.recv_body()
            assert answer is not None
            p.parse_response(answer)
        resp = c.request(p.RequestIdentities())
        assert isinstance(resp, p.IdentitiesAnswer)
        if any(isinstance(_try_parse(b), p.Lock) for b in frames):
            c.request(p.Unlock(_try_parse_lock(frames)))
        # unframed garbage, then hang up: the agent must drop this connection only
        c.send_raw(tail)
    with AgentClient(idm_agent.sock) as c:
        assert isinstance(c.request(p.RequestIdentities()), p.IdentitiesAnswer)


def _try_parse(body: bytes) -> p.Request | None:
    try:
        return p.parse_request(body)
    except p.AgentProtocolError:
        return None


def _try_parse_lock(frames: list[bytes]) -> bytes:
    for body in frames:
        req = _try_parse(body)
        if isinstance(req, p.Lock):
            return req.passphrase
    raise AssertionError("no lock")


def test_oversize_message_is_refused_without_reading_it(idm_agent: IdmAgent) -> None:
    with AgentClient(idm_agent.sock) as c:
        c.send_raw(struct.pack(">I", 0xFFFFFFFF) + b"\x0b")
        body = c.recv_body()
        assert body is not None and isinstance(p.parse_response(body), p.Failure)
        assert c.recv_body() is None  # connection closed: the stream cannot be resynced
    with AgentClient(idm_agent.sock) as c:
        c.send_raw(struct.pack(">I", p.MAX_MESSAGE_SIZE + 1))
        body = c.recv_body()
        assert body is not None and isinstance(p.parse_response(body), p.Failure)
    with AgentClient(idm_agent.sock) as c:
        # exactly at the limit is read and answered; the connection stays usable
        big = bytes([p.SSH_AGENTC_SIGN_REQUEST]) + w.pack_string(
            w.public_key_blob(_EC.public_key())) + w.pack_string(
            b"x" * (p.MAX_MESSAGE_SIZE - 1 - 4 - 104 - 4 - 4)) + w.pack_uint32(0)
        assert len(big) == p.MAX_MESSAGE_SIZE
        c.send_raw(p.frame(big))
        assert isinstance(c.recv(), p.Failure)  # unknown key
        assert c.identities() == []
    log = idm_agent.log()
    assert "4294967295-byte message" in log
    assert "does not hold" in log
