"""The PKCS#11 helper process: one client-requested provider, loaded outside the agent.

``ssh-add -s PROVIDER`` makes the agent load a library a client named. As OpenSSH's
ssh-pkcs11-helper, idm loads it in a separate process: the module's code (its
constructors first of all) never runs in the agent's process, and a module that crashes
takes only its helper down. The agent starts one helper per provider::

    python -m idm.identity.agent.pkcs11_helper SOCKET_FD MODULE_FD PATH

``MODULE_FD`` is the module file the agent opened and checked
(:mod:`idm.identity.tokens.module_file`); the helper loads ``/proc/self/fd/MODULE_FD``,
so it loads exactly that file. It is made non-dumpable and dies with its parent before
it loads anything, then speaks this protocol on ``SOCKET_FD`` (one end of a socketpair):

Framing
    ``uint32 length`` + a JSON object (UTF-8), at most :data:`MAX_MESSAGE` bytes. Bytes
    travel as base64 strings, CKA_IDs as hex.
Start
    The helper sends ``{"ok": true, "module": {manufacturer, description, version}}``,
    or ``{"ok": false, "error": NAME, "message": TEXT}`` and exits.
Requests (agent → helper), one at a time, each answered by one reply
    ``{"op": "tokens"}`` → ``{"ok": true, "tokens": [token info…]}``;
    ``{"op": "rescan"}`` re-initializes the module (cards inserted since show);
    ``{"op": OP, "token": identity, …}`` for OP in ``certificates``, ``keys``
    (``key_class``, ``login``), ``login``, ``logout``, ``sign`` (``key``, ``digest``,
    ``hash``): the reply carries the result and ``"session": {logged_in, login_time}``.
PIN
    While a request runs, the helper may send ``{"pin_request": {token, flags,
    context_specific, key_label}}``; the agent answers ``{"pin": TEXT}`` or
    ``{"pin_error": NAME, "message": TEXT}`` (no PIN: cancelled, unavailable). The PIN
    goes to the one login that asked, and is never written anywhere else.
Errors
    ``{"ok": false, "error": NAME, "message": TEXT}``, NAME one of the classes of
    :mod:`idm.identity.tokens.errors`; the agent raises the same class.

End: EOF on the socket (the agent closed it, or exited), or SIGTERM/SIGKILL from the
agent (``ssh-add -e``, the provider's lifetime, the agent's exit).
"""

from __future__ import annotations

import base64
import json
import socket
import struct
import sys
import time
from typing import Any

from idm.identity.tokens import errors as token_errors
from idm.identity.tokens.pin import PinRequest
from idm.identity.tokens.uri import TokenIdentity

MAX_MESSAGE = 1 << 20  # a reply listing a card's certificates fits many times over
_LENGTH = struct.Struct(">I")


class HelperProtocolError(Exception):
    """The other end broke the protocol, closed, or did not answer in time."""


# ------------------------------------------------------------------ framing


def encode_message(message: dict[str, Any]) -> bytes:
    """One JSON message, framed; :class:`HelperProtocolError` if it is too long."""
    data = json.dumps(message, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE:
        raise HelperProtocolError(f"a {len(data)}-byte message exceeds {MAX_MESSAGE}")
    return _LENGTH.pack(len(data)) + data


def send_message(sock: socket.socket, message: dict[str, Any]) -> None:
    """Frame and send one JSON message; a failed send is a :class:`HelperProtocolError`
    (callers handle protocol errors, not raw socket errors)."""
    send_frame(sock, encode_message(message))


def send_frame(sock: socket.socket, frame: bytes) -> None:
    """Send an encoded message (see :func:`send_message`)."""
    try:
        sock.sendall(frame)
    except OSError as exc:  # the other end is gone (EPIPE), or a timeout left by a receive
        raise HelperProtocolError(f"connection failed: {exc.strerror or exc}") from None


def recv_message(sock: socket.socket, deadline: float | None = None) -> dict[str, Any]:
    """Receive one JSON object; ``deadline`` is a ``time.monotonic()`` limit (None: wait)."""
    (length,) = _LENGTH.unpack(_recv_exact(sock, 4, deadline))
    if length > MAX_MESSAGE:
        raise HelperProtocolError(f"a {length}-byte message exceeds {MAX_MESSAGE}")
    try:
        message = json.loads(_recv_exact(sock, length, deadline))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HelperProtocolError(f"not a JSON message: {exc}") from None
    if not isinstance(message, dict):
        raise HelperProtocolError("not a JSON object")
    return message


def _recv_exact(sock: socket.socket, n: int, deadline: float | None) -> bytes:
    chunks: list[bytes] = []
    while n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise HelperProtocolError("no answer in time")
            sock.settimeout(left)
        else:
            sock.settimeout(None)
        try:
            chunk = sock.recv(min(n, 65536))
        except TimeoutError:
            raise HelperProtocolError("no answer in time") from None
        except OSError as exc:
            raise HelperProtocolError(f"connection failed: {exc.strerror or exc}") from None
        if not chunk:
            raise HelperProtocolError("the other end closed the connection")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


# ------------------------------------------------------------------ values


def b64(data: bytes) -> str:
    """Bytes as base64 text."""
    return base64.b64encode(data).decode()


def unb64(value: object, what: str) -> bytes:
    """Base64 text back to bytes; HelperProtocolError if it is not."""
    if not isinstance(value, str):
        raise HelperProtocolError(f"{what}: expected base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise HelperProtocolError(f"{what}: not base64") from None


def identity_dict(identity: TokenIdentity) -> dict[str, str]:
    """A token identity as a JSON object."""
    return {"manufacturer": identity.manufacturer, "model": identity.model,
            "serial": identity.serial, "label": identity.label}


def identity_from(value: object) -> TokenIdentity:
    """A token identity from its JSON object; HelperProtocolError if malformed."""
    if not isinstance(value, dict) or not all(
        isinstance(value.get(k), str) for k in ("manufacturer", "model", "serial", "label")
    ):
        raise HelperProtocolError("malformed token identity")
    return TokenIdentity(value["manufacturer"], value["model"], value["serial"],
                         value["label"])


ERRORS: dict[str, type[token_errors.TokenError]] = {
    cls.__name__: cls for cls in vars(token_errors).values()
    if isinstance(cls, type) and issubclass(cls, token_errors.TokenError)
}


def error_reply(exc: BaseException) -> dict[str, Any]:
    """The error reply for an exception (its class name if it is a token error)."""
    name = type(exc).__name__ if type(exc).__name__ in ERRORS else "TokenOperationError"
    return {"ok": False, "error": name, "message": str(exc) or type(exc).__name__}


# ------------------------------------------------------------------ the helper process


class _Helper:
    """The serving side: one loaded module, its sessions, one request at a time."""

    def __init__(self, sock: socket.socket, load_path: str) -> None:
        from idm.identity.tokens.session import ProviderSet

        self.sock = sock
        self.providers = ProviderSet([load_path], rescan_on_miss=False)
        self.sessions: dict[TokenIdentity, Any] = {}

    def module_info(self) -> dict[str, str]:
        info = self.providers.modules[0]
        return {"manufacturer": info.manufacturer, "description": info.description,
                "version": info.version}

    def ask_pin(self, request: PinRequest) -> str:
        send_message(self.sock, {"pin_request": {
            "token": identity_dict(request.token), "flags": request.state.flags,
            "context_specific": request.context_specific, "key_label": request.key_label,
        }})
        answer = recv_message(self.sock)
        pin = answer.get("pin")
        if isinstance(pin, str):
            return pin
        cls = ERRORS.get(str(answer.get("pin_error")), token_errors.PinUnavailable)
        raise cls(str(answer.get("message") or "no PIN"))

    def session(self, token: object) -> Any:
        identity = identity_from(token)
        session = self.sessions.get(identity)
        if session is None or session.closed:
            info = next((i for i in self.providers.tokens() if i.identity == identity), None)
            if info is None:
                raise token_errors.TokenNotPresent(f"token {identity} is not present")
            session = self.providers.open(info, self.ask_pin)
            self.sessions[identity] = session
        return session

    def serve(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "tokens":
            return {"ok": True, "tokens": [_token_info_dict(i) for i in self.providers.tokens()]}
        if op == "rescan":
            self.providers.rescan()
            return {"ok": True}
        session = self.session(request.get("token"))
        reply: dict[str, Any] = {"ok": True}
        if op == "certificates":
            reply["certificates"] = [
                {"label": c.label, "id": c.id.hex(), "der": b64(c.der)}
                for c in session.certificates()
            ]
        elif op == "keys":
            reply["keys"] = [_key_dict(k) for k in session.keys(
                str(request.get("key_class", "private")), login=bool(request.get("login")))]
        elif op == "login":
            session.login()
        elif op == "logout":
            session.logout()
        elif op == "sign":
            key = _key_from(request.get("key"), session.identity)
            digest = unb64(request.get("digest"), "digest")
            reply["signature"] = b64(session.sign_digest(key, digest, str(request.get("hash"))))
        else:
            raise HelperProtocolError(f"unknown request {op!r}")
        reply["session"] = {"logged_in": bool(session.logged_in),
                            "login_time": session.login_time}
        return reply


def _token_info_dict(info: Any) -> dict[str, Any]:
    return {"token": identity_dict(info.identity), "slot_id": info.slot_id,
            "slot_description": info.slot_description,
            "slot_manufacturer": info.slot_manufacturer, "flags": info.flags}


def _key_dict(key: Any) -> dict[str, Any]:
    from cryptography.hazmat.primitives import serialization

    public = None if key.public_key is None else b64(key.public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
    return {"label": key.label, "id": key.id.hex(), "key_class": key.key_class,
            "key_type": key.key_type, "bits": key.bits, "public": public,
            "always_authenticate": key.always_authenticate, "curve": key.curve}


def _key_from(value: object, token: TokenIdentity) -> Any:
    from idm.identity.tokens.session import KeyObject

    if not isinstance(value, dict):
        raise HelperProtocolError("malformed key")
    try:
        return KeyObject(token, str(value["label"]), bytes.fromhex(str(value["id"])),
                         str(value["key_class"]), str(value["key_type"]),
                         None, None, bool(value.get("always_authenticate")),
                         value.get("curve") if isinstance(value.get("curve"), str) else None)
    except (KeyError, ValueError):
        raise HelperProtocolError("malformed key") from None


def main(argv: list[str]) -> int:
    """Run the helper (see the module docstring); returns the exit status."""
    from idm.identity.agent.hardening import die_with_parent, disable_tracing

    if len(argv) != 3:
        print("usage: python -m idm.identity.agent.pkcs11_helper SOCKET_FD MODULE_FD PATH",
              file=sys.stderr)
        return 2
    # Before the module's code runs: no PIN or session in a dumpable process.
    disable_tracing()
    die_with_parent()
    sock = socket.socket(fileno=int(argv[0]))
    try:
        try:
            helper = _Helper(sock, f"/proc/self/fd/{int(argv[1])}")
        except token_errors.TokenError as exc:
            send_message(sock, error_reply(exc))
            return 1
        send_message(sock, {"ok": True, "module": helper.module_info()})
        while True:
            request = recv_message(sock)
            try:
                reply = helper.serve(request)
            except Exception as exc:  # noqa: BLE001 - a module's surprise costs one request
                reply = error_reply(exc)
            try:
                frame = encode_message(reply)
            except HelperProtocolError as exc:  # e.g. a card with huge objects: one error
                frame = encode_message(error_reply(token_errors.ProviderError(
                    f"the helper's reply is too long ({exc})")))
            send_frame(sock, frame)
    except HelperProtocolError:
        return 0  # the agent closed the connection: done


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
