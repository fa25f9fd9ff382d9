"""What the agent serves: identities, the sources they come from, and software keys.

The server knows nothing of tokens or certificates. It asks each :class:`IdentitySource`
for the identities of a socket kind and hands sign requests back to the source that
listed the key. The token-backed source (inventory ∩ tokens present, gated by the
validator) implements the same protocol; :class:`SoftwareKeyring` is the source for keys
added with ``ssh-add`` (ADD_IDENTITY).

Plugging in a source::

    class TokenSource(BaseIdentitySource):
        def identities(self, kind): ...   # per SocketKind: which blobs to offer
        def sign(self, identity, request, data, flags): ...   # -> SSH signature blob

    server = AgentServer([keyring, TokenSource(...)], provider_hook=token_source)

A source decides the list per socket kind (reference/ssh-x509-wire.md): on
``SocketKind.STANDARD`` the plain key and the RFC 6187 blob, on ``SocketKind.PKIX`` the
raw-DER blob (``x509v3-sign-rsa``, ``x509v3-ecdsa-sha2-*``) and the plain key, a
self-signed certificate as the plain key only. Sign requests arrive in whichever of the
three blob forms the client picked; the server finds the identity by public key
(:attr:`sshwire.KeyBlob.plain_blob`), and ``sign`` must answer with
:func:`sshwire.signature_scheme` of the *request* blob.

Errors: raise :class:`IdentityError` with a one-line reason in words ("card not present
in any slot", "PIN locked", "certificate revoked"); the server logs it and answers
FAILURE, which is all the protocol can carry.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol, runtime_checkable

from idm.identity import sshwire as w
from idm.identity.agent.protocol import Constraints
from idm.identity.display import printable


class SocketKind(enum.Enum):
    """Which client family a listening socket serves (decides the identity list)."""

    STANDARD = "standard"  # OpenSSH, asyncssh: plain + RFC 6187 blobs
    PKIX = "pkix"  # PKIX-SSH: raw-DER certificate + plain blobs


class IdentityError(Exception):
    """A sign or load that failed for a known reason (the message says which)."""


@dataclass(frozen=True)
class AgentIdentity:
    """One entry of an identities answer.

    ``blob`` in the form to offer; ``comment`` shown by ``ssh-add -l``; ``confirm`` asks
    the user (SSH_ASKPASS) before each signature; ``handle`` is the source's own reference
    to the key (a token object URI, a software key...), opaque to the server.

    The comment is stored through :func:`idm.identity.display.printable`, whatever the
    source passed: ``ssh-add -L`` prints it after the key on the same line, so a newline
    in a certificate subject would otherwise print a second, attacker-chosen key line.
    """

    blob: bytes
    comment: str
    confirm: bool = False
    handle: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "comment", printable(self.comment))

    @cached_property
    def key(self) -> w.KeyBlob:
        """The parsed blob (parsed once per identity object)."""
        return w.parse_key_blob(self.blob)


@runtime_checkable
class IdentitySource(Protocol):
    """A supplier of identities and signatures to the agent server.

    Methods may be called from several connection threads at once: implementations lock
    what they share, and should not hold a lock while a slow token signs if that would
    stall listing.
    """

    def identities(self, kind: SocketKind) -> Sequence[AgentIdentity]:
        """The identities to list on a socket of ``kind``, now (expired ones gone).

        Called for every list and sign request: keep it cheap, and hand out the same
        :class:`AgentIdentity` objects while nothing changed (each caches its parsed blob).
        """
        ...

    def sign(self, identity: AgentIdentity, request: w.KeyBlob, data: bytes, flags: int) -> bytes:
        """Sign ``data`` with ``identity``'s key; return an SSH signature blob.

        ``request`` is the blob the client sent (any form, same public key); the
        signature name and hash are ``sshwire.signature_scheme(request, flags)``.
        Raise :class:`IdentityError` with a reason when it cannot sign.
        """
        ...

    def remove_identity(self, blob: bytes) -> bool:
        """``ssh-add -d``: forget the identity with this blob (any form); True if found."""
        ...

    def remove_all(self) -> None:
        """``ssh-add -D``: forget every identity this source lets a client remove."""
        ...

    def on_lock(self) -> None:
        """The agent was locked: drop cached PINs and sessions that can sign unasked."""
        ...


@runtime_checkable
class ProviderHook(Protocol):
    """``ssh-add -s PROVIDER`` / ``-e PROVIDER``: load or unload a PKCS#11 module's tokens.

    The PIN goes to that provider's token only; never log it.
    """

    def load_provider(self, path: str, pin: str, constraints: Constraints) -> None:
        """Open the module at ``path`` and log in with ``pin``; raise IdentityError."""
        ...

    def unload_provider(self, path: str) -> None:
        """Withdraw the identities that came from ``path``; raise IdentityError."""
        ...


class BaseIdentitySource:
    """Defaults for the optional parts of :class:`IdentitySource`."""

    def identities(self, kind: SocketKind) -> Sequence[AgentIdentity]:
        """No identities."""
        return ()

    def sign(self, identity: AgentIdentity, request: w.KeyBlob, data: bytes, flags: int) -> bytes:
        """Refuse: subclasses that list identities sign them."""
        raise IdentityError(f"{type(self).__name__} cannot sign")

    def remove_identity(self, blob: bytes) -> bool:
        """Nothing removable."""
        return False

    def remove_all(self) -> None:
        """Nothing removable."""

    def on_lock(self) -> None:
        """Nothing cached."""


@dataclass
class _SoftwareKey:
    private_key: w.PrivateKey = field(repr=False)
    identity: AgentIdentity
    expires_at: float | None  # time.monotonic() deadline
    signatures_left: int | None


class SoftwareKeyring(BaseIdentitySource):
    """Keys added by ssh-add (ADD_IDENTITY): RSA, ECDSA, Ed25519, held in memory.

    Served as plain blobs on every socket kind. Lifetime (``-t``, or the agent's default
    ``default_lifetime``) and confirm (``-c``) constraints apply per key; an expired key
    disappears on the next access.
    """

    def __init__(self, default_lifetime: int | None = None) -> None:
        self.default_lifetime = default_lifetime
        self._keys: dict[bytes, _SoftwareKey] = {}
        self._lock = threading.Lock()

    def add(self, private_key: w.PrivateKey, comment: str, constraints: Constraints) -> None:
        """Add or replace a key (same public key: new comment and constraints win)."""
        blob = w.public_key_blob(private_key.public_key())
        lifetime = constraints.lifetime
        if lifetime is None:
            lifetime = self.default_lifetime
        expires = time.monotonic() + lifetime if lifetime is not None else None
        entry = _SoftwareKey(
            private_key,
            AgentIdentity(blob, comment, constraints.confirm, handle=blob),
            expires,
            constraints.max_signatures,
        )
        with self._lock:
            self._keys[blob] = entry

    def _expire(self) -> None:
        now = time.monotonic()
        for blob in [b for b, k in self._keys.items() if k.expires_at is not None
                     and k.expires_at <= now]:
            del self._keys[blob]

    def next_expiry(self) -> float | None:
        """Seconds until the next key expires (None: no key has a lifetime)."""
        with self._lock:
            deadlines = [k.expires_at for k in self._keys.values() if k.expires_at is not None]
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def identities(self, kind: SocketKind) -> Sequence[AgentIdentity]:
        """Every live key, plain blob, on any socket kind."""
        with self._lock:
            self._expire()
            return [k.identity for k in self._keys.values()]

    def sign(self, identity: AgentIdentity, request: w.KeyBlob, data: bytes, flags: int) -> bytes:
        """Sign in software with the scheme the request blob and flags ask for."""
        with self._lock:
            self._expire()
            entry = self._keys.get(identity.blob)
            if entry is None:
                raise IdentityError("the key was removed or its lifetime ended")
            if entry.signatures_left is not None:
                if entry.signatures_left <= 0:
                    raise IdentityError("the key's maximum number of signatures is used up")
                entry.signatures_left -= 1
            key = entry.private_key
        try:
            scheme = w.signature_scheme(request, flags)
            return w.sign_with_private_key(key, scheme, data)
        except w.WireFormatError as exc:
            raise IdentityError(str(exc)) from None

    def remove_identity(self, blob: bytes) -> bool:
        """Remove the key whose public key the blob (any form) holds."""
        try:
            plain = w.parse_key_blob(blob).plain_blob
        except w.WireFormatError:
            return False
        with self._lock:
            return self._keys.pop(plain, None) is not None

    def remove_all(self) -> None:
        """Forget every software key."""
        with self._lock:
            self._keys.clear()
