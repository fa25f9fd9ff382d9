"""The ssh-agent message codec (draft-miller-ssh-agent, OpenSSH PROTOCOL.agent).

A message on the wire is ``uint32 length, byte type, payload``; :func:`frame` adds the
length. :func:`parse_request` turns one message body (type byte and payload, without the
length) into a request object, and every response object has ``encode()`` giving the
framed bytes. Requests have ``encode()`` too, so clients and tests speak the same codec.

Anything that does not parse raises :class:`AgentProtocolError`; the server answers it
with ``SSH_AGENT_FAILURE`` and goes on. Messages over :data:`MAX_MESSAGE_SIZE` (256 KiB,
OpenSSH's cap) are refused before they are read.

Passphrases and PINs in requests are kept out of ``repr()`` so they never reach a log.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from idm.identity import sshwire as w

MAX_MESSAGE_SIZE = 256 * 1024

# Message numbers.
SSH_AGENT_FAILURE = 5
SSH_AGENT_SUCCESS = 6
SSH_AGENTC_REQUEST_IDENTITIES = 11
SSH_AGENT_IDENTITIES_ANSWER = 12
SSH_AGENTC_SIGN_REQUEST = 13
SSH_AGENT_SIGN_RESPONSE = 14
SSH_AGENTC_ADD_IDENTITY = 17
SSH_AGENTC_REMOVE_IDENTITY = 18
SSH_AGENTC_REMOVE_ALL_IDENTITIES = 19
SSH_AGENTC_ADD_SMARTCARD_KEY = 20
SSH_AGENTC_REMOVE_SMARTCARD_KEY = 21
SSH_AGENTC_LOCK = 22
SSH_AGENTC_UNLOCK = 23
SSH_AGENTC_ADD_ID_CONSTRAINED = 25
SSH_AGENTC_ADD_SMARTCARD_KEY_CONSTRAINED = 26
SSH_AGENTC_EXTENSION = 27
SSH_AGENT_EXTENSION_FAILURE = 28

# Constraint identifiers.
SSH_AGENT_CONSTRAIN_LIFETIME = 1
SSH_AGENT_CONSTRAIN_CONFIRM = 2
SSH_AGENT_CONSTRAIN_MAXSIGN = 3
SSH_AGENT_CONSTRAIN_EXTENSION = 255

SESSION_BIND = "session-bind@openssh.com"


class AgentProtocolError(ValueError):
    """A message that does not parse or is not allowed; answered with FAILURE."""


def frame(body: bytes) -> bytes:
    """Prefix a message body (type byte + payload) with its uint32 length."""
    if len(body) > MAX_MESSAGE_SIZE:
        raise AgentProtocolError(f"message of {len(body)} bytes exceeds {MAX_MESSAGE_SIZE}")
    return w.pack_uint32(len(body)) + body


# ------------------------------------------------------------------ constraints


@dataclass(frozen=True)
class Constraints:
    """Key constraints of ADD_ID_CONSTRAINED / ADD_SMARTCARD_KEY_CONSTRAINED.

    ``lifetime`` in seconds (None: no limit); ``confirm``: ask before each use;
    ``max_signatures`` (OpenSSH's maxsign); unknown extensions are refused while parsing
    because their contents cannot be skipped safely.
    """

    lifetime: int | None = None
    confirm: bool = False
    max_signatures: int | None = None

    def encode(self) -> bytes:
        """The constraint bytes that follow the key in an *_CONSTRAINED message."""
        out = b""
        if self.lifetime is not None:
            out += w.pack_byte(SSH_AGENT_CONSTRAIN_LIFETIME) + w.pack_uint32(self.lifetime)
        if self.confirm:
            out += w.pack_byte(SSH_AGENT_CONSTRAIN_CONFIRM)
        if self.max_signatures is not None:
            out += w.pack_byte(SSH_AGENT_CONSTRAIN_MAXSIGN) + w.pack_uint32(self.max_signatures)
        return out

    @property
    def empty(self) -> bool:
        """True when no constraint is set."""
        return self == Constraints()


def parse_constraints(reader: w.WireReader) -> Constraints:
    """Read constraints until the end of the message; each kind at most once."""
    lifetime: int | None = None
    confirm = False
    max_signatures: int | None = None
    seen: set[int] = set()
    while not reader.at_end():
        kind = reader.read_byte("constraint type")
        if kind in seen:
            raise AgentProtocolError(f"constraint {kind} given twice")
        seen.add(kind)
        if kind == SSH_AGENT_CONSTRAIN_LIFETIME:
            lifetime = reader.read_uint32("lifetime")
        elif kind == SSH_AGENT_CONSTRAIN_CONFIRM:
            confirm = True
        elif kind == SSH_AGENT_CONSTRAIN_MAXSIGN:
            max_signatures = reader.read_uint32("maxsign")
        elif kind == SSH_AGENT_CONSTRAIN_EXTENSION:
            name = reader.read_name("constraint extension name")
            raise AgentProtocolError(f"unsupported key constraint extension {name}")
        else:
            raise AgentProtocolError(f"unknown key constraint {kind}")
    return Constraints(lifetime, confirm, max_signatures)


# ------------------------------------------------------------------ requests


@dataclass(frozen=True)
class RequestIdentities:
    """SSH_AGENTC_REQUEST_IDENTITIES."""

    def encode(self) -> bytes:
        """Framed message."""
        return frame(w.pack_byte(SSH_AGENTC_REQUEST_IDENTITIES))


@dataclass(frozen=True)
class SignRequest:
    """SSH_AGENTC_SIGN_REQUEST: the key blob (any of the three forms), data and flags."""

    key_blob: bytes
    data: bytes
    flags: int = 0

    def encode(self) -> bytes:
        """Framed message."""
        return frame(
            w.pack_byte(SSH_AGENTC_SIGN_REQUEST) + w.pack_string(self.key_blob)
            + w.pack_string(self.data) + w.pack_uint32(self.flags)
        )


@dataclass(frozen=True)
class AddIdentity:
    """SSH_AGENTC_ADD_IDENTITY / ADD_ID_CONSTRAINED with a software private key."""

    private_key: w.PrivateKey = field(repr=False)
    comment: str
    constraints: Constraints = Constraints()

    def encode(self) -> bytes:
        """Framed message (constrained if any constraint is set)."""
        msg_type = (
            SSH_AGENTC_ADD_IDENTITY if self.constraints.empty else SSH_AGENTC_ADD_ID_CONSTRAINED
        )
        return frame(
            w.pack_byte(msg_type) + w.pack_private_key(self.private_key)
            + w.pack_string(self.comment) + self.constraints.encode()
        )


@dataclass(frozen=True)
class RemoveIdentity:
    """SSH_AGENTC_REMOVE_IDENTITY."""

    key_blob: bytes

    def encode(self) -> bytes:
        """Framed message."""
        return frame(w.pack_byte(SSH_AGENTC_REMOVE_IDENTITY) + w.pack_string(self.key_blob))


@dataclass(frozen=True)
class RemoveAllIdentities:
    """SSH_AGENTC_REMOVE_ALL_IDENTITIES."""

    def encode(self) -> bytes:
        """Framed message."""
        return frame(w.pack_byte(SSH_AGENTC_REMOVE_ALL_IDENTITIES))


@dataclass(frozen=True)
class AddSmartcardKey:
    """SSH_AGENTC_ADD_SMARTCARD_KEY(_CONSTRAINED): ``ssh-add -s PROVIDER``."""

    provider: str
    pin: str = field(repr=False)
    constraints: Constraints = Constraints()

    def encode(self) -> bytes:
        """Framed message."""
        msg_type = (
            SSH_AGENTC_ADD_SMARTCARD_KEY
            if self.constraints.empty
            else SSH_AGENTC_ADD_SMARTCARD_KEY_CONSTRAINED
        )
        return frame(
            w.pack_byte(msg_type) + w.pack_string(self.provider) + w.pack_string(self.pin)
            + self.constraints.encode()
        )


@dataclass(frozen=True)
class RemoveSmartcardKey:
    """SSH_AGENTC_REMOVE_SMARTCARD_KEY: ``ssh-add -e PROVIDER``."""

    provider: str
    pin: str = field(default="", repr=False)

    def encode(self) -> bytes:
        """Framed message."""
        return frame(
            w.pack_byte(SSH_AGENTC_REMOVE_SMARTCARD_KEY) + w.pack_string(self.provider)
            + w.pack_string(self.pin)
        )


@dataclass(frozen=True)
class Lock:
    """SSH_AGENTC_LOCK."""

    passphrase: bytes = field(repr=False)

    def encode(self) -> bytes:
        """Framed message."""
        return frame(w.pack_byte(SSH_AGENTC_LOCK) + w.pack_string(self.passphrase))


@dataclass(frozen=True)
class Unlock:
    """SSH_AGENTC_UNLOCK."""

    passphrase: bytes = field(repr=False)

    def encode(self) -> bytes:
        """Framed message."""
        return frame(w.pack_byte(SSH_AGENTC_UNLOCK) + w.pack_string(self.passphrase))


@dataclass(frozen=True)
class SessionBind:
    """The ``session-bind@openssh.com`` extension: which host key and session a
    connection belongs to, signed by that host key over the session identifier."""

    host_key: bytes
    session_id: bytes
    signature: bytes
    forwarding: bool

    def encode_contents(self) -> bytes:
        """The extension-specific contents after the name."""
        return (
            w.pack_string(self.host_key) + w.pack_string(self.session_id)
            + w.pack_string(self.signature) + w.pack_bool(self.forwarding)
        )


@dataclass(frozen=True)
class Extension:
    """SSH_AGENTC_EXTENSION: a name and extension-specific contents (unparsed)."""

    name: str
    contents: bytes = b""

    def encode(self) -> bytes:
        """Framed message."""
        return frame(w.pack_byte(SSH_AGENTC_EXTENSION) + w.pack_string(self.name) + self.contents)

    def session_bind(self) -> SessionBind:
        """Parse the contents of a ``session-bind@openssh.com`` extension."""
        if self.name != SESSION_BIND:
            raise AgentProtocolError(f"extension {self.name} is not {SESSION_BIND}")
        reader = w.WireReader(self.contents)
        try:
            bind = SessionBind(
                reader.read_string("host key"),
                reader.read_string("session identifier"),
                reader.read_string("host key signature"),
                reader.read_bool("forwarding flag"),
            )
            reader.expect_end(SESSION_BIND)
        except w.WireFormatError as exc:
            raise AgentProtocolError(f"malformed {SESSION_BIND}: {exc}") from None
        return bind


@dataclass(frozen=True)
class UnknownRequest:
    """A request type this agent does not implement (answered with FAILURE)."""

    msg_type: int


Request = (
    RequestIdentities | SignRequest | AddIdentity | RemoveIdentity | RemoveAllIdentities
    | AddSmartcardKey | RemoveSmartcardKey | Lock | Unlock | Extension | UnknownRequest
)


def _parse_add_identity(reader: w.WireReader, constrained: bool) -> AddIdentity:
    key = w.read_private_key(reader)
    comment = reader.read_text("comment")
    constraints = parse_constraints(reader) if constrained else Constraints()
    return AddIdentity(key, comment, constraints)


_UINT32 = struct.Struct(">I")


def _quick_sign_request(body: bytes) -> SignRequest | None:
    """A well-formed SIGN_REQUEST read directly (the agent's most frequent message).

    None for anything that does not fit exactly; the general parser then reads it and
    says what is wrong.
    """
    size = len(body)
    if size < 13 or body[0] != SSH_AGENTC_SIGN_REQUEST:
        return None
    key_end = 5 + _UINT32.unpack_from(body, 1)[0]
    if key_end + 4 > size:
        return None
    data_end = key_end + 4 + _UINT32.unpack_from(body, key_end)[0]
    if data_end + 4 != size:
        return None
    return SignRequest(
        bytes(body[5:key_end]), bytes(body[key_end + 4 : data_end]),
        _UINT32.unpack_from(body, data_end)[0],
    )


def parse_request(body: bytes) -> Request:
    """Parse one message body (type byte + payload, the length already removed)."""
    if len(body) > MAX_MESSAGE_SIZE:
        raise AgentProtocolError(f"message of {len(body)} bytes exceeds {MAX_MESSAGE_SIZE}")
    quick = _quick_sign_request(body)
    if quick is not None:
        return quick
    reader = w.WireReader(body)
    try:
        msg_type = reader.read_byte("message type")
        req: Request
        if msg_type == SSH_AGENTC_REQUEST_IDENTITIES:
            req = RequestIdentities()
        elif msg_type == SSH_AGENTC_SIGN_REQUEST:
            req = SignRequest(
                reader.read_string("key blob"), reader.read_string("data"),
                reader.read_uint32("flags"),
            )
        elif msg_type in (SSH_AGENTC_ADD_IDENTITY, SSH_AGENTC_ADD_ID_CONSTRAINED):
            req = _parse_add_identity(reader, msg_type == SSH_AGENTC_ADD_ID_CONSTRAINED)
        elif msg_type == SSH_AGENTC_REMOVE_IDENTITY:
            req = RemoveIdentity(reader.read_string("key blob"))
        elif msg_type == SSH_AGENTC_REMOVE_ALL_IDENTITIES:
            req = RemoveAllIdentities()
        elif msg_type in (SSH_AGENTC_ADD_SMARTCARD_KEY, SSH_AGENTC_ADD_SMARTCARD_KEY_CONSTRAINED):
            provider = reader.read_text("provider")
            pin = reader.read_text("PIN")
            constraints = (
                parse_constraints(reader)
                if msg_type == SSH_AGENTC_ADD_SMARTCARD_KEY_CONSTRAINED
                else Constraints()
            )
            req = AddSmartcardKey(provider, pin, constraints)
        elif msg_type == SSH_AGENTC_REMOVE_SMARTCARD_KEY:
            req = RemoveSmartcardKey(reader.read_text("provider"), reader.read_text("PIN"))
        elif msg_type == SSH_AGENTC_LOCK:
            req = Lock(reader.read_string("passphrase"))
        elif msg_type == SSH_AGENTC_UNLOCK:
            req = Unlock(reader.read_string("passphrase"))
        elif msg_type == SSH_AGENTC_EXTENSION:
            name = reader.read_name("extension name")
            return Extension(name, reader.read_rest())
        else:
            return UnknownRequest(msg_type)
        reader.expect_end(type(req).__name__)
        return req
    except w.WireFormatError as exc:
        raise AgentProtocolError(str(exc)) from None


# ------------------------------------------------------------------ responses


@dataclass(frozen=True)
class Failure:
    """SSH_AGENT_FAILURE."""

    def encode(self) -> bytes:
        """Framed message."""
        return frame(w.pack_byte(SSH_AGENT_FAILURE))


@dataclass(frozen=True)
class Success:
    """SSH_AGENT_SUCCESS."""

    def encode(self) -> bytes:
        """Framed message."""
        return frame(w.pack_byte(SSH_AGENT_SUCCESS))


@dataclass(frozen=True)
class ExtensionFailure:
    """SSH_AGENT_EXTENSION_FAILURE: a supported extension failed."""

    def encode(self) -> bytes:
        """Framed message."""
        return frame(w.pack_byte(SSH_AGENT_EXTENSION_FAILURE))


@dataclass(frozen=True)
class IdentitiesAnswer:
    """SSH_AGENT_IDENTITIES_ANSWER: ``(blob, comment)`` pairs."""

    identities: Sequence[tuple[bytes, str]]

    def encode(self) -> bytes:
        """Framed message."""
        parts = [w.pack_byte(SSH_AGENT_IDENTITIES_ANSWER), w.pack_uint32(len(self.identities))]
        for blob, comment in self.identities:
            parts.append(w.pack_string(blob))
            parts.append(w.pack_string(comment))
        return frame(b"".join(parts))


@dataclass(frozen=True)
class SignResponse:
    """SSH_AGENT_SIGN_RESPONSE: one signature blob."""

    signature: bytes

    def encode(self) -> bytes:
        """Framed message."""
        return frame(w.pack_byte(SSH_AGENT_SIGN_RESPONSE) + w.pack_string(self.signature))


Response = Failure | Success | ExtensionFailure | IdentitiesAnswer | SignResponse


def parse_response(body: bytes) -> Response:
    """Parse a response body (for clients and tests)."""
    reader = w.WireReader(body)
    try:
        msg_type = reader.read_byte("message type")
        resp: Response
        if msg_type == SSH_AGENT_FAILURE:
            resp = Failure()
        elif msg_type == SSH_AGENT_SUCCESS:
            resp = Success()
        elif msg_type == SSH_AGENT_EXTENSION_FAILURE:
            resp = ExtensionFailure()
        elif msg_type == SSH_AGENT_IDENTITIES_ANSWER:
            count = reader.read_uint32("identity count")
            if count > reader.remaining // 8:
                raise AgentProtocolError(f"identity count {count} exceeds the message")
            resp = IdentitiesAnswer(
                [(reader.read_string("key blob"), reader.read_text("comment"))
                 for _ in range(count)]
            )
        elif msg_type == SSH_AGENT_SIGN_RESPONSE:
            resp = SignResponse(reader.read_string("signature"))
        else:
            raise AgentProtocolError(f"unexpected response type {msg_type}")
        reader.expect_end("response")
        return resp
    except w.WireFormatError as exc:
        raise AgentProtocolError(str(exc)) from None
