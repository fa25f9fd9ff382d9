"""The agent server: UNIX sockets, peer checks, and the request handlers.

Connections are served by one loop over non-blocking sockets
(:mod:`idm.identity.agent.loop`); requests that may block (a signature on a token, a
confirmation dialog, a provider, LOCK) run on worker threads, and UNLOCK attempts run
one at a time behind a global delay that grows with each wrong passphrase (0.1 s per
failure, up to 10 s, as OpenSSH's ssh-agent). Every connection is checked with
SO_PEERCRED: only the agent's own uid (and root, as ssh-agent allows) may talk to it.

Library use::

    server = AgentServer(SoftwareKeyring(), sources=[token_source], provider_hook=token_source)
    server.listen(path, SocketKind.STANDARD)
    server.listen(pkix_path, SocketKind.PKIX)      # optional
    server.serve_forever()                          # until server.shutdown()
    server.close()

The protocol can only say FAILURE; every failure with a known cause is logged in words
on the ``idm.agent`` logger (``idm agent -d`` shows it on stderr).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import shutil
import socket
import stat
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature

from idm.identity import sshwire as w
from idm.identity.agent import protocol as p
from idm.identity.agent.agentlog import log
from idm.identity.agent.identities import (
    AgentIdentity,
    IdentityError,
    IdentitySource,
    ProviderHook,
    SocketKind,
    SoftwareKeyring,
)
from idm.identity.agent.loop import ConnectionLoop, Where
from idm.identity.agent.peer import pkixssh_program

MAX_SESSION_BINDS = 16
ASKPASS_TIMEOUT = 120.0
_LOCK_ITERATIONS = 100_000
UNLOCK_DELAY_STEP = 0.1  # seconds added per failed UNLOCK ...
UNLOCK_DELAY_MAX = 10.0  # ... up to this (OpenSSH: 100,000 µs per failure, 100 failures)


class AgentSocketError(Exception):
    """The agent socket cannot be created or used safely (the message says why)."""


# ------------------------------------------------------------------ sockets


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the process at the other end of a UNIX socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def default_socket_dir() -> Path:
    """A private (0700) folder for the agent socket.

    ``platformdirs.user_runtime_dir("idm")`` (e.g. ``/run/user/1000/idm``) when the runtime
    dir exists and only we can use it; otherwise a fresh private temporary folder, as
    ssh-agent does.
    """
    from platformdirs import user_runtime_dir

    runtime = Path(user_runtime_dir("idm"))
    try:
        ensure_private_dir(runtime.parent)
        runtime.mkdir(mode=0o700, exist_ok=True)
        if runtime.lstat().st_uid == os.getuid():
            os.chmod(runtime, 0o700)  # ours, under our private runtime dir: make it private
        ensure_private_dir(runtime)
        return runtime
    except (OSError, AgentSocketError) as exc:
        log.debug("runtime dir %s not usable (%s); using a temporary folder", runtime, exc)
    return Path(tempfile.mkdtemp(prefix="idm-agent-"))


def ensure_private_dir(path: Path) -> None:
    """Raise unless ``path`` is a folder owned by us that no one else can use (no 077 bits)."""
    try:
        st = path.lstat()
    except OSError as exc:
        raise AgentSocketError(f"socket folder {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise AgentSocketError(f"socket folder {path} is not a folder")
    if st.st_uid != os.getuid():
        raise AgentSocketError(f"socket folder {path} belongs to uid {st.st_uid}, not us")
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise AgentSocketError(
            f"socket folder {path} is accessible to others (mode {stat.S_IMODE(st.st_mode):o})"
        )


def bind_agent_socket(path: Path) -> socket.socket:
    """Create, bind (mode 0600) and listen on a UNIX socket at ``path``.

    A stale socket file nobody listens on is replaced; a live one is an error.
    """
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise AgentSocketError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()
        else:
            raise AgentSocketError(f"an agent is already listening on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket is never group/world accessible, not even briefly
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise AgentSocketError(f"cannot create agent socket {path}: {exc.strerror}") from None
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(128)
    return sock


# ------------------------------------------------------------------ confirmation


def askpass_confirm(prompt: str) -> bool:
    """Ask the user through ``$SSH_ASKPASS`` with ``SSH_ASKPASS_PROMPT=confirm``.

    As ssh-agent: allowed when the program exits 0 and prints nothing or "yes".
    """
    program = os.environ.get("SSH_ASKPASS") or shutil.which("ssh-askpass")
    if not program:
        log.warning("confirmation needed but no SSH_ASKPASS program is set: refusing")
        return False
    env = dict(os.environ, SSH_ASKPASS_PROMPT="confirm")
    try:
        proc = subprocess.run(
            [program, prompt], env=env, stdin=subprocess.DEVNULL, capture_output=True,
            timeout=ASKPASS_TIMEOUT, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("confirmation program %s failed: %s", program, exc)
        return False
    answer = proc.stdout.decode("utf-8", "replace").strip()
    return proc.returncode == 0 and answer.lower() in ("", "yes")


# ------------------------------------------------------------------ the server


@dataclass
class ClientState:
    """Per-connection state: who is connected, on which socket, and its session binds.

    ``bind_attempted``: the client sent ``session-bind@openssh.com`` (valid or not). As
    in OpenSSH's ``socket_is_remote()``, such a connection counts as *remote*: ssh
    binds the connections it forwards from another host (and its own authentication
    connections); ``ssh-add`` never binds.
    """

    kind: SocketKind
    pid: int
    uid: int
    bindings: list[p.SessionBind] = field(default_factory=list)
    bind_attempted: bool = False
    # the client was checked for PKIX-SSH: the check reads /proc/PID/exe (maybe scans it),
    # so it runs at most once per connection, not on every listing
    pkix_checked: bool = False

    @property
    def label(self) -> str:
        """How the log names this client."""
        return f"client pid {self.pid} ({self.kind.value} socket)"

    @property
    def remote(self) -> bool:
        """True once the client sent a session bind (see the class docstring)."""
        return self.bind_attempted  # set before any binding is kept

    def __str__(self) -> str:
        return self.label


# Requests answered off the connection loop: they may wait on a token, a dialog, a
# provider or the unlock delay. Everything else is answered on the loop.
_WORKER_REQUESTS = frozenset({
    p.SSH_AGENTC_SIGN_REQUEST, p.SSH_AGENTC_ADD_SMARTCARD_KEY,
    p.SSH_AGENTC_ADD_SMARTCARD_KEY_CONSTRAINED, p.SSH_AGENTC_REMOVE_SMARTCARD_KEY,
    p.SSH_AGENTC_LOCK,
})
WORKERS = 64  # requests in progress at once (a PIN or confirm dialog holds one)


class AgentServer:
    """The ssh-agent protocol over UNIX sockets, serving identities from sources.

    ``keyring`` holds keys added with ssh-add; ``sources`` are further identity sources
    (the token source); ``provider_hook`` handles ``ssh-add -s/-e``; ``confirm`` asks the
    user before a confirm-constrained key signs (default: SSH_ASKPASS);
    ``allow_remote_providers`` lets remote (session-bound) connections load providers.
    """

    def __init__(
        self,
        keyring: SoftwareKeyring | None = None,
        sources: Sequence[IdentitySource] = (),
        provider_hook: ProviderHook | None = None,
        confirm: Callable[[str], bool] = askpass_confirm,
        *,
        allow_remote_providers: bool = False,
    ) -> None:
        self.keyring = keyring if keyring is not None else SoftwareKeyring()
        self.sources: list[IdentitySource] = [self.keyring, *sources]
        self.provider_hook = provider_hook
        self.confirm = confirm
        self.allow_remote_providers = allow_remote_providers
        self._state_lock = threading.Lock()
        self._lock_salt: bytes | None = None
        self._lock_hash: bytes | None = None
        # UNLOCK attempts run one at a time, whichever connection sent them, and a wrong
        # one sleeps while holding this lock: the delay holds off every guess.
        self._unlock_lock = threading.Lock()
        self._unlock_failures = 0
        self._loop = ConnectionLoop(self._admit, self.handle, self._route, WORKERS)

    # -- sockets ---------------------------------------------------------------------

    def listen(self, path: Path, kind: SocketKind = SocketKind.STANDARD) -> Path:
        """Bind a listening socket of ``kind`` at ``path`` (mode 0600).

        The folder is the caller's choice (``-a PATH``, like ssh-agent); the socket's mode
        and the peer uid check protect it. :func:`default_socket_dir` gives a private one.
        """
        path = Path(path).absolute()
        sock = bind_agent_socket(path)
        self._loop.add_listener(sock, path, kind)
        log.info("listening on %s (%s socket)", path, kind.value)
        return path

    @property
    def socket_paths(self) -> list[Path]:
        """Paths of the listening sockets, in the order they were added."""
        return [listener.path for listener in self._loop.listeners]

    def serve_forever(self) -> None:
        """Serve clients until :meth:`shutdown` (see :mod:`idm.identity.agent.loop`)."""
        self._loop.run()

    def shutdown(self) -> None:
        """Stop :meth:`serve_forever` (safe from a signal handler or another thread)."""
        self._loop.stop()

    def close(self) -> None:
        """Close the listening sockets, remove their files, drop connected clients."""
        for listener in self._loop.listeners:
            listener.sock.close()
            try:
                if stat.S_ISSOCK(listener.path.lstat().st_mode):
                    listener.path.unlink()
            except OSError:
                pass
        self._loop.listeners.clear()
        self._loop.close()

    def _admit(self, conn: socket.socket, kind: SocketKind) -> ClientState | None:
        """The state of a new connection, or None to refuse it (logged)."""
        try:
            pid, uid, _gid = peer_credentials(conn)
        except OSError as exc:
            log.warning("refusing a client: cannot read its credentials (%s)", exc)
            return None
        if uid not in (os.getuid(), 0):
            log.warning("refusing client pid %d: uid %d is not the agent's user (uid %d)",
                        pid, uid, os.getuid())
            return None
        state = ClientState(kind, pid, uid)
        log.debug("%s connected", state.label)
        return state

    @staticmethod
    def _route(body: bytes) -> Where:
        if not body:
            return Where.LOOP
        if body[0] == p.SSH_AGENTC_UNLOCK:
            return Where.SERIAL
        return Where.WORKER if body[0] in _WORKER_REQUESTS else Where.LOOP

    # -- requests --------------------------------------------------------------------

    @property
    def locked(self) -> bool:
        """True while the agent is locked with a passphrase."""
        return self._lock_hash is not None

    def handle(self, body: bytes, state: ClientState) -> bytes:
        """Answer one message body; always returns a framed response, never raises."""
        try:
            request = p.parse_request(body)
        except p.AgentProtocolError as exc:
            log.warning("%s: malformed request: %s", state.label, exc)
            return p.Failure().encode()
        try:
            return self._dispatch(request, state).encode()
        except Exception:  # a bug must cost one FAILURE, not the agent
            log.exception("%s: internal error handling %s", state.label, type(request).__name__)
            return p.Failure().encode()

    def _dispatch(self, req: p.Request, state: ClientState) -> p.Response:
        if self.locked and not isinstance(req, p.Unlock):
            if isinstance(req, p.RequestIdentities):
                return p.IdentitiesAnswer([])
            log.warning("%s: %s refused: the agent is locked", state.label, type(req).__name__)
            return p.Failure()
        if isinstance(req, p.RequestIdentities):
            listed = [i for _, i in self._identities(state.kind)]
            if state.kind is SocketKind.STANDARD and not state.pkix_checked:
                self._hint_pkixssh(state, listed)
            return p.IdentitiesAnswer([(i.blob, i.comment) for i in listed])
        if isinstance(req, p.SignRequest):
            return self._sign(req, state)
        if isinstance(req, p.AddIdentity):
            return self._add_identity(req, state)
        if isinstance(req, p.RemoveIdentity):
            removed = False
            for source in self.sources:
                removed = source.remove_identity(req.key_blob) or removed
            if not removed:
                log.warning("%s: remove: no such identity", state.label)
                return p.Failure()
            log.info("%s: removed an identity", state.label)
            return p.Success()
        if isinstance(req, p.RemoveAllIdentities):
            for source in self.sources:
                source.remove_all()
            log.info("%s: removed all identities", state.label)
            return p.Success()
        if isinstance(req, p.AddSmartcardKey | p.RemoveSmartcardKey):
            return self._provider(req, state)
        if isinstance(req, p.Lock):
            return self._lock(req, state)
        if isinstance(req, p.Unlock):
            return self._unlock(req, state)
        if isinstance(req, p.Extension):
            return self._extension(req, state)
        log.warning("%s: unsupported request type %d", state.label,
                    req.msg_type if isinstance(req, p.UnknownRequest) else -1)
        return p.Failure()

    def _hint_pkixssh(self, state: ClientState, listed: Sequence[AgentIdentity]) -> None:
        """Say why a PKIX-SSH client gets nothing from this list (it rejects RFC 6187 blobs
        whole, and its ssh then goes on silently without the agent)."""
        try:
            if not any(i.key.form is w.BlobForm.RFC6187 for i in listed):
                return
        except w.WireFormatError:  # logged where it matters (_find); a hint never fails a list
            return
        state.pkix_checked = True
        program = pkixssh_program(state.pid)
        if program is None:
            return
        pkix = [str(x.path) for x in self._loop.listeners if x.data is SocketKind.PKIX]
        where = (f"SSH_AUTH_SOCK={pkix[0]}" if pkix
                 else "start the agent with --pkix-socket PATH and use that PATH")
        log.warning("%s runs PKIX-SSH (%s), which rejects this socket's list as a whole "
                    "(RFC 6187 identities: 'invalid format'); point it at the PKIX-SSH "
                    "socket: %s", state.label, program, where)

    def _identities(self, kind: SocketKind) -> list[tuple[IdentitySource, AgentIdentity]]:
        out: list[tuple[IdentitySource, AgentIdentity]] = []
        for source in self.sources:
            try:
                out.extend((source, i) for i in source.identities(kind))
            except IdentityError as exc:
                log.warning("identity source %s: %s", type(source).__name__, exc)
        return out

    def _identities_iter(
        self, kind: SocketKind
    ) -> Iterator[tuple[IdentitySource, AgentIdentity]]:
        """As :meth:`_identities`, lazily (a sign request usually matches the first)."""
        for source in self.sources:
            try:
                identities = source.identities(kind)
            except IdentityError as exc:
                log.warning("identity source %s: %s", type(source).__name__, exc)
                continue
            for ident in identities:
                yield source, ident

    def _find(
        self, blob: bytes, kind: SocketKind
    ) -> tuple[w.KeyBlob, tuple[IdentitySource, AgentIdentity] | None]:
        """The request blob parsed, and the identity holding its public key (on this
        socket's list first, then on any other), or None.

        The request is usually one of the blobs the agent listed: an equal blob matches
        at once, with that identity's parse of it (made once per identity). Otherwise the
        request is parsed and matched by plain key blob. Raises ``WireFormatError`` for a
        malformed request blob.
        """
        parsed: w.KeyBlob | None = None
        target = b""
        for k in (kind, *(k for k in SocketKind if k is not kind)):
            for source, ident in self._identities_iter(k):
                if ident.blob == blob:
                    return ident.key, (source, ident)
                if parsed is None:
                    parsed = w.parse_key_blob(blob)
                    target = parsed.plain_blob
                try:
                    if ident.key.plain_blob == target:
                        return parsed, (source, ident)
                except w.WireFormatError as exc:
                    log.warning("identity %r has a malformed blob: %s", ident.comment, exc)
        return (parsed if parsed is not None else w.parse_key_blob(blob)), None

    def _sign(self, req: p.SignRequest, state: ClientState) -> p.Response:
        try:
            key, found = self._find(req.key_blob, state.kind)
        except w.WireFormatError as exc:
            log.warning("%s: sign request with a malformed key: %s", state.label, exc)
            return p.Failure()
        if found is None:
            log.warning("%s: sign request for a key this agent does not hold (%s %s)",
                        state.label, key.algorithm, w.fingerprint_sha256(key.plain_blob))
            return p.Failure()
        source, ident = found
        if ident.confirm:
            prompt = (f"Allow use of key {ident.comment}?\n"
                      f"Key fingerprint {w.fingerprint_sha256(key.plain_blob)}.")
            if not self.confirm(prompt):
                log.warning("%s: use of key %r was not confirmed by the user",
                            state.label, ident.comment)
                return p.Failure()
        try:
            signature = source.sign(ident, key, req.data, req.flags)
        except IdentityError as exc:
            log.warning("%s: cannot sign with %r: %s", state.label, ident.comment, exc)
            return p.Failure()
        if log.isEnabledFor(logging.DEBUG):  # state.label is formatted eagerly otherwise
            log.debug("%s: signed with %r (%s, flags 0x%x)", state.label, ident.comment,
                      key.algorithm, req.flags)
        return p.SignResponse(signature)

    def _add_identity(self, req: p.AddIdentity, state: ClientState) -> p.Response:
        self.keyring.add(req.private_key, req.comment, req.constraints)
        blob = w.public_key_blob(req.private_key.public_key())
        c = req.constraints
        lifetime = c.lifetime if c.lifetime is not None else self.keyring.default_lifetime
        log.info("%s: added %s key %s (%s)%s%s", state.label, w.key_algorithm(
            req.private_key.public_key()), w.fingerprint_sha256(blob), req.comment,
            f", lifetime {lifetime}s" if lifetime is not None else "",
            ", confirm each use" if c.confirm else "")
        return p.Success()

    def _provider(self, req: p.AddSmartcardKey | p.RemoveSmartcardKey,
                  state: ClientState) -> p.Response:
        if self.provider_hook is None:
            log.warning("%s: ssh-add -s/-e %s refused: this agent has no token support "
                        "configured", state.label, req.provider)
            return p.Failure()
        if isinstance(req, p.AddSmartcardKey) and state.remote \
                and not self.allow_remote_providers:
            # CVE-2023-38408: a forwarded agent must not let a remote host's root pick
            # libraries for this machine to load (OpenSSH: -O allow-remote-pkcs11).
            log.warning("%s: ssh-add -s %s refused: the connection is session-bound "
                        "(forwarded or used by ssh), and loading providers from such "
                        "connections is off (idm agent --allow-remote-pkcs11 turns it on)",
                        state.label, req.provider)
            return p.Failure()
        try:
            if isinstance(req, p.AddSmartcardKey):
                self.provider_hook.load_provider(req.provider, req.pin, req.constraints)
                log.info("%s: loaded provider %s", state.label, req.provider)
            else:
                self.provider_hook.unload_provider(req.provider)
                log.info("%s: unloaded provider %s", state.label, req.provider)
        except IdentityError as exc:
            log.warning("%s: provider %s: %s", state.label, req.provider, exc)
            return p.Failure()
        return p.Success()

    @staticmethod
    def _hash_passphrase(salt: bytes, passphrase: bytes) -> bytes:
        return hashlib.pbkdf2_hmac("sha256", passphrase, salt, _LOCK_ITERATIONS)

    def _lock(self, req: p.Lock, state: ClientState) -> p.Response:
        salt = os.urandom(16)
        digest = self._hash_passphrase(salt, req.passphrase)
        with self._state_lock:
            if self._lock_hash is not None:
                return p.Failure()
            self._lock_salt, self._lock_hash = salt, digest
        for source in self.sources:
            source.on_lock()
        log.info("%s: agent locked", state.label)
        return p.Success()

    def _unlock(self, req: p.Unlock, state: ClientState) -> p.Response:
        # One attempt at a time from every connection; a wrong passphrase sleeps while
        # holding the lock, so the delay holds off every other guess too (ssh-agent gets
        # the same from its single thread). Success answers at once and resets the count.
        with self._unlock_lock:
            with self._state_lock:
                salt, expected = self._lock_salt, self._lock_hash
            if salt is None or expected is None:
                log.warning("%s: unlock refused: the agent is not locked", state.label)
                return p.Failure()
            if hmac.compare_digest(self._hash_passphrase(salt, req.passphrase), expected):
                with self._state_lock:
                    self._lock_salt = self._lock_hash = None
                self._unlock_failures = 0
                log.info("%s: agent unlocked", state.label)
                return p.Success()
            self._unlock_failures += 1
            delay = min(UNLOCK_DELAY_STEP * self._unlock_failures, UNLOCK_DELAY_MAX)
            log.warning("%s: unlock refused: wrong passphrase (failure %d; every unlock "
                        "waits %.1f s)", state.label, self._unlock_failures, delay)
            time.sleep(delay)
        return p.Failure()

    def _extension(self, req: p.Extension, state: ClientState) -> p.Response:
        if req.name != p.SESSION_BIND:
            log.info("%s: extension %s is not supported", state.label, req.name)
            return p.Failure()
        state.bind_attempted = True  # remote from now on, even if the bind fails
        try:
            bind = req.session_bind()
            w.verify_signature(bind.host_key, bind.session_id, bind.signature)
        except (p.AgentProtocolError, w.WireFormatError) as exc:
            log.warning("%s: %s refused: %s", state.label, p.SESSION_BIND, exc)
            return p.ExtensionFailure()
        except InvalidSignature:
            log.warning("%s: %s refused: the host key signature does not verify",
                        state.label, p.SESSION_BIND)
            return p.ExtensionFailure()
        if len(state.bindings) >= MAX_SESSION_BINDS:
            log.warning("%s: too many session binds on one connection", state.label)
            return p.ExtensionFailure()
        state.bindings.append(bind)
        log.debug("%s: bound to host key %s%s", state.label,
                  w.fingerprint_sha256(bind.host_key), " (forwarded)" if bind.forwarding else "")
        return p.Success()

