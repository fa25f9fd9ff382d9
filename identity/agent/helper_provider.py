"""The agent's side of a PKCS#11 helper process (:mod:`idm.identity.agent.pkcs11_helper`).

:class:`HelperProvider` starts one helper for one checked module file and talks to it;
:class:`HelperSession` stands for one card in that provider and offers the calls the
token source makes on an in-process :class:`~idm.identity.tokens.session.TokenSession`
(``certificates``, ``keys``, ``login``, ``logout``, ``sign_digest``, ``logged_in``,
``login_time``, ``pin_provider``), each one request to the helper.

Requests to one helper run one at a time. Every reply must come within
:data:`REPLY_TIMEOUT` seconds (a PIN prompt in between does not count: the helper is
then waiting for the agent); a helper that does not answer, answers garbage or exits is
killed, and its provider's cards are reported missing. Replies are checked like any
other input: the helper runs code the agent does not trust.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from idm.identity.agent.agentlog import log
from idm.identity.agent.pkcs11_helper import (
    ERRORS,
    HelperProtocolError,
    b64,
    identity_dict,
    identity_from,
    recv_message,
    send_message,
    unb64,
)
from idm.identity.tokens.errors import PinError, PinUnavailable, ProviderError, TokenError
from idm.identity.tokens.module_file import ModuleFile
from idm.identity.tokens.pin import PinProvider, PinRequest, PinState
from idm.identity.tokens.session import CertificateObject, KeyObject, ModuleInfo, TokenInfo
from idm.identity.tokens.uri import TokenIdentity

START_TIMEOUT = 30.0  # the helper loads the module and says hello
REPLY_TIMEOUT = 60.0  # one token operation (a slow card signs in a few seconds)
# PIN requests the helper may make for one operation: a login, then a context-specific
# login for a CKA_ALWAYS_AUTHENTICATE key, once more after a card was re-inserted
MAX_PIN_REQUESTS = 3
STOP_WAIT = 2.0


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise HelperProtocolError(f"{what}: expected text")
    return value


def _int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise HelperProtocolError(f"{what}: expected an integer")
    return value


class HelperProvider:
    """One client-requested PKCS#11 module, loaded in its own helper process.

    ``module`` is the checked, open module file; the helper gets its descriptor and the
    agent closes its own copy once the helper has started.
    """

    def __init__(self, module: ModuleFile) -> None:
        self.path = module.path
        self._lock = threading.Lock()
        self._sessions: dict[TokenIdentity, HelperSession] = {}
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # -I (isolated): `-m` would put the working folder (say /tmp) first on
            # sys.path, and PYTHON* variables or the user's site folder could add more;
            # the helper receives PINs, so it imports only from the installation.
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-m", "idm.identity.agent.pkcs11_helper",
                 str(theirs.fileno()), str(module.fd), module.path],
                pass_fds=(theirs.fileno(), module.fd), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, close_fds=True, cwd="/",
            )
        except OSError as exc:
            ours.close()
            raise ProviderError(f"cannot start the PKCS#11 helper for {self.path}: "
                                f"{exc.strerror or exc}") from None
        finally:
            theirs.close()
            module.close()
        self._sock = ours
        try:
            hello = recv_message(ours, time.monotonic() + START_TIMEOUT)
            if hello.get("ok") is not True:
                raise self._error(hello)
            module_info = hello.get("module")
            if not isinstance(module_info, dict):
                raise HelperProtocolError("no module information")
            self.info = ModuleInfo(
                self.path, _text(module_info.get("manufacturer"), "manufacturer"),
                _text(module_info.get("description"), "description"),
                _text(module_info.get("version"), "version"))
        except (HelperProtocolError, TokenError) as exc:
            self.close()
            raise ProviderError(f"PKCS#11 provider {self.path} (in its helper process): "
                                f"{exc}") from None
        log.info("provider %s loaded in helper process %d", self.path, self.proc.pid)

    # -- requests ----------------------------------------------------------------------

    def call(self, request: dict[str, Any], pin: PinProvider | None = None) -> dict[str, Any]:
        """Send one request and return its reply, answering PIN requests with ``pin``.

        Raises the token error the helper reported, or :class:`ProviderError` when the
        helper broke the protocol, timed out or exited (it is then stopped).
        """
        with self._lock:
            if self.proc.poll() is not None:
                raise ProviderError(f"the PKCS#11 helper for {self.path} has exited "
                                    f"(status {self.proc.returncode}); ssh-add -e and -s "
                                    "load it again")
            try:
                send_message(self._sock, request)
                asked_times = 0
                while True:
                    reply = recv_message(self._sock, time.monotonic() + REPLY_TIMEOUT)
                    asked = reply.get("pin_request")
                    if asked is None:
                        break
                    asked_times += 1
                    if asked_times > MAX_PIN_REQUESTS:  # each one a PIN dialog: stop it
                        raise HelperProtocolError(f"more than {MAX_PIN_REQUESTS} PIN "
                                                  "requests for one operation")
                    send_message(self._sock, self._answer_pin(asked, pin))
            except HelperProtocolError as exc:
                self._stop()
                raise ProviderError(f"the PKCS#11 helper for {self.path} failed ({exc}): "
                                    "stopped") from None
        if reply.get("ok") is not True:
            raise self._error(reply)
        return reply

    def _answer_pin(self, asked: object, pin: PinProvider | None) -> dict[str, Any]:
        if not isinstance(asked, dict):
            raise HelperProtocolError("malformed PIN request")
        request = PinRequest(
            identity_from(asked.get("token")), PinState(_int(asked.get("flags"), "flags")),
            context_specific=bool(asked.get("context_specific")),
            key_label=asked.get("key_label") if isinstance(asked.get("key_label"), str) else None,
        )
        try:
            if pin is None:
                raise PinUnavailable(f"no PIN source for token {request.token}")
            return {"pin": pin(request)}
        except PinError as exc:
            return {"pin_error": type(exc).__name__, "message": str(exc)}

    @staticmethod
    def _error(reply: dict[str, Any]) -> TokenError:
        cls = ERRORS.get(str(reply.get("error")), ProviderError)
        return cls(str(reply.get("message") or "the PKCS#11 helper reported an error"))

    def tokens(self) -> list[TokenInfo]:
        """Present, initialized tokens of this provider."""
        entries = self.call({"op": "tokens"}).get("tokens")
        if not isinstance(entries, list):
            raise ProviderError(f"the PKCS#11 helper for {self.path} sent no token list")
        out = []
        for entry in entries:
            if not isinstance(entry, dict):
                raise ProviderError(f"the PKCS#11 helper for {self.path} sent a bad token")
            try:
                out.append(TokenInfo(
                    identity_from(entry.get("token")), self.info,
                    _int(entry.get("slot_id"), "slot"),
                    _text(entry.get("slot_description"), "slot description"),
                    _text(entry.get("slot_manufacturer"), "slot manufacturer"),
                    _int(entry.get("flags"), "flags"),
                ))
            except HelperProtocolError as exc:
                raise ProviderError(f"the PKCS#11 helper for {self.path}: {exc}") from None
        return out

    def open(self, info: TokenInfo, pin: PinProvider | None = None) -> HelperSession:
        """The session of one of this provider's tokens (one per token)."""
        with self._lock:
            session = self._sessions.get(info.identity)
            if session is None or session.closed:
                session = HelperSession(self, info, pin)
                self._sessions[info.identity] = session
            elif pin is not None:
                session.pin_provider = pin
        return session

    def reinitialize(self) -> None:
        """Re-initialize the module in the helper (newly inserted cards show)."""
        self.call({"op": "rescan"})
        for session in list(self._sessions.values()):
            session.logged_in = False  # re-initializing ends every session of the module

    # -- life cycle --------------------------------------------------------------------

    def _stop(self) -> None:
        self._sock.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close(self) -> None:
        """Stop the helper (its logins end with it)."""
        with self._lock:
            for session in self._sessions.values():
                session.closed = True
                session.logged_in = False
            self._stop()
        log.info("provider %s: helper process %d stopped", self.path, self.proc.pid)


class HelperSession:
    """One card of a helper's provider, used like a ``TokenSession``."""

    def __init__(self, provider: HelperProvider, info: TokenInfo,
                 pin: PinProvider | None) -> None:
        self.provider = provider
        self.identity = info.identity
        self.info = info
        self.pin_provider = pin
        self.closed = False
        self.logged_in = False
        self.login_time: float | None = None  # time.monotonic() of the login (same clock)

    def _call(self, op: str, **args: Any) -> dict[str, Any]:
        reply = self.provider.call({"op": op, "token": identity_dict(self.identity), **args},
                                   self.pin_provider)
        state = reply.get("session")
        if isinstance(state, dict):
            self.logged_in = state.get("logged_in") is True
            when = state.get("login_time")
            self.login_time = float(when) if isinstance(when, int | float) else None
        return reply

    def login(self) -> None:
        """Log in (asks ``pin_provider`` through the helper's PIN request)."""
        self._call("login")

    def logout(self) -> None:
        """End the login. Never raises, like ``TokenSession.logout``: a helper that is
        gone holds no login any more."""
        if self.closed:
            return
        try:
            self._call("logout")
        except TokenError as exc:
            log.debug("card %r: logout through the helper failed (%s)", self.identity.label,
                      exc)
            self.logged_in = False
            self.login_time = None

    def certificates(self) -> list[CertificateObject]:
        """The card's X.509 certificates."""
        out = []
        for c in self._list(self._call("certificates"), "certificates"):
            try:
                out.append(CertificateObject(self.identity, _text(c.get("label"), "label"),
                                             bytes.fromhex(_text(c.get("id"), "id")),
                                             unb64(c.get("der"), "certificate")))
            except (HelperProtocolError, ValueError) as exc:
                raise ProviderError(f"the PKCS#11 helper for {self.provider.path}: {exc}") \
                    from None
        return out

    def keys(self, key_class: str = "private", *, login: bool = False) -> list[KeyObject]:
        """The card's keys of ``key_class`` (logging in first with ``login``)."""
        out = []
        for k in self._list(self._call("keys", key_class=key_class, login=login), "keys"):
            try:
                public = None
                if k.get("public") is not None:
                    loaded = serialization.load_der_public_key(unb64(k.get("public"), "key"))
                    if isinstance(loaded, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
                        public = loaded
                bits = k.get("bits")
                curve = k.get("curve")
                out.append(KeyObject(
                    self.identity, _text(k.get("label"), "label"),
                    bytes.fromhex(_text(k.get("id"), "id")),
                    _text(k.get("key_class"), "key class"), _text(k.get("key_type"), "type"),
                    bits if isinstance(bits, int) else None, public,
                    k.get("always_authenticate") is True,
                    curve if isinstance(curve, str) else None,
                ))
            except (HelperProtocolError, ValueError) as exc:
                raise ProviderError(f"the PKCS#11 helper for {self.provider.path}: {exc}") \
                    from None
        return out

    def sign_digest(self, key: KeyObject, digest: bytes, hash_name: str) -> bytes:
        """Sign a digest on the card (see ``TokenSession.sign_digest``)."""
        reply = self._call("sign", digest=b64(digest), hash=hash_name, key={
            "label": key.label, "id": key.id.hex(), "key_class": key.key_class,
            "key_type": key.key_type, "always_authenticate": key.always_authenticate,
            "curve": key.curve,
        })
        try:
            return unb64(reply.get("signature"), "signature")
        except HelperProtocolError as exc:
            raise ProviderError(f"the PKCS#11 helper for {self.provider.path}: {exc}") \
                from None

    def _list(self, reply: dict[str, Any], name: str) -> list[dict[str, Any]]:
        items = reply.get(name)
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise ProviderError(f"the PKCS#11 helper for {self.provider.path} sent no {name}")
        return items

