"""The one place that opens PKCS#11 tokens.

* **Providers.** Any number of PKCS#11 modules are loaded at once. python-pkcs11 0.10
  keeps a separate function list per loaded library, so several `pkcs11.lib()` objects
  coexist in one process. A module may only be C_Initialize'd once per process, so
  modules live in a process-wide registry keyed by the library file's (device, inode):
  two paths naming the same file (a symlink) share one module instance; a *copy* of a
  library is a separate instance with its own state. `ProviderSet` is a cheap view over
  that registry (the configured list plus `--provider`).
* **Token identity.** A token is (manufacturer, model, serial, label) — `TokenIdentity` —
  never a slot. Every operation re-checks that the slot still holds that token; when it
  does not (CKR_DEVICE_REMOVED, CKR_SESSION_HANDLE_INVALID, CKR_TOKEN_NOT_PRESENT, or a
  different token answering), the token is found again by identity, in any slot of any
  loaded module, and the session re-opened (which asks for the PIN again).
* **Signing fast path.** A signature is the hot path of the agent, so it does not check
  the slot first: it signs on the open session with the key object (and its
  CKA_ALWAYS_AUTHENTICATE flag) found on that session earlier. Any error then drops what
  was remembered and checks the slot: a removed card (which a real reader reports as
  CKR_DEVICE_REMOVED or CKR_SESSION_HANDLE_INVALID, and SoftHSM2 as
  CKR_OBJECT_HANDLE_INVALID / CKR_GENERAL_ERROR) is looked for again as above, and
  reported as not present; a key object that went stale on a present card is looked up
  once more, unless a PIN was used for that signature (a PIN is never sent twice).
* **Rescan.** Some modules (SoftHSM2 among them) only notice inserted or removed tokens
  after C_Finalize/C_Initialize, and do not implement C_WaitForSlotEvent. When a token is
  looked for and not found, every loaded module is re-initialized once and the search
  repeated (`ProviderSet.rescan`). That ends the module's other sessions too; they are
  re-opened on next use, asking for their PIN again.
* **PIN safety.** Exactly one C_Login per PIN obtained; a wrong PIN raises `PinIncorrect`
  with the token's PIN state in words and is never retried; a locked PIN is not tried at
  all; a PIN request always names a single token. Keys with CKA_ALWAYS_AUTHENTICATE get a
  context-specific login (a fresh PIN request) for every signature.

Values returned (`TokenInfo`, `CertificateObject`, `KeyObject`, `TokenPair`) hold no
handles: they stay valid across removal and re-insertion and carry their `pkcs11:` URIs.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import pkcs11
import pkcs11.exceptions as p11x
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.constants import CertificateType, MechanismFlag
from pkcs11.types import PROTECTED_AUTH

from idm.identity.sshwire import DIGEST_INFO_PREFIXES
from idm.identity.tokens.csr import build_csr
from idm.identity.tokens.errors import (
    AmbiguousToken,
    ObjectNotFound,
    PinError,
    PinIncorrect,
    PinLocked,
    PinUnavailable,
    ProviderError,
    TokenError,
    TokenNotFound,
    TokenNotPresent,
    TokenOperationError,
)
from idm.identity.tokens.pin import PinProvider, PinRequest, PinState
from idm.identity.tokens.uri import Pkcs11Uri, TokenIdentity
from idm.validator.signatures import is_self_signed

CKF_WRITE_PROTECTED = 0x00000002
CKF_TOKEN_INITIALIZED = 0x00000400

# Errors that mean "this session/slot no longer reaches the token": re-find it.
_GONE = (
    p11x.DeviceRemoved,
    p11x.SessionHandleInvalid,
    p11x.SessionClosed,
    p11x.TokenNotPresent,
    p11x.TokenNotRecognised,
)

KEY_KINDS: dict[str, tuple[str, int | str]] = {
    "rsa2048": ("rsa", 2048),
    "rsa3072": ("rsa", 3072),
    "ec-p256": ("ec", "secp256r1"),
    "ec-p384": ("ec", "secp384r1"),
}

_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "secp256r1": ec.SECP256R1,
    "secp384r1": ec.SECP384R1,
    "secp521r1": ec.SECP521R1,
}
# DER of the namedCurve OID, as CKA_EC_PARAMS holds it.
_CURVE_PARAMS: dict[str, bytes] = {
    "secp256r1": bytes.fromhex("06082a8648ce3d030107"),
    "secp384r1": bytes.fromhex("06052b81040022"),
    "secp521r1": bytes.fromhex("06052b81040023"),
}

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
T = TypeVar("T")


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value).rstrip(" \x00")


# -- loaded modules (process-wide) -------------------------------------------------------


class _Module:
    """One loaded PKCS#11 library, shared by every ProviderSet in the process."""

    def __init__(self, path: str, key: tuple[int, int]) -> None:
        self.path = path
        self.key = key
        self.lock = threading.RLock()
        # Bumped by reinitialize(): sessions opened under an older generation are dead.
        self.generation = 0
        try:
            self.lib = pkcs11.lib(path)
        except p11x.PKCS11Error as exc:
            raise ProviderError(
                f"cannot load PKCS#11 provider {path}: {exc or type(exc).__name__}"
            ) from None
        self.manufacturer = _text(self.lib.manufacturer_id)
        self.description = _text(self.lib.library_description)
        major, minor = self.lib.library_version
        self.version = f"{major}.{minor}"

    @property
    def info(self) -> ModuleInfo:
        return ModuleInfo(self.path, self.manufacturer, self.description, self.version)

    def reinitialize(self) -> None:
        with self.lock:
            try:
                self.lib.reinitialize()
            except p11x.PKCS11Error as exc:
                raise ProviderError(
                    f"cannot re-initialize PKCS#11 provider {self.path}: {type(exc).__name__}"
                ) from None
            self.generation += 1


_REGISTRY: dict[tuple[int, int], _Module] = {}
_REGISTRY_LOCK = threading.Lock()


def load_module(path: str | os.PathLike[str]) -> _Module:
    """Load (once per process) the PKCS#11 module at `path`."""
    text = os.fspath(path)
    try:
        st = os.stat(text)
    except OSError as exc:
        raise ProviderError(f"PKCS#11 provider {text}: {exc.strerror}") from None
    key = (st.st_dev, st.st_ino)
    with _REGISTRY_LOCK:
        module = _REGISTRY.get(key)
        if module is None:
            module = _Module(text, key)
            _REGISTRY[key] = module
        return module


def reinitialize_loaded(path: str | os.PathLike[str] | None = None) -> None:
    """Re-initialize loaded modules (all, or the one at `path` if it is loaded).

    For test fixtures and long-running processes: a module re-reads its configuration
    and token list at C_Initialize (SoftHSM2 reads SOFTHSM2_CONF there).
    """
    with _REGISTRY_LOCK:
        modules = list(_REGISTRY.values())
    for module in modules:
        if path is None or _same_file(os.fspath(path), module.path):
            module.reinitialize()


# -- values --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModuleInfo:
    """A loaded provider: its path and CK_INFO."""

    path: str
    manufacturer: str
    description: str
    version: str


@dataclass(frozen=True)
class TokenInfo:
    """A present token as seen in one slot of one module, at the time it was listed."""

    identity: TokenIdentity
    module: ModuleInfo
    slot_id: int
    slot_description: str
    slot_manufacturer: str
    flags: int

    @property
    def uri(self) -> Pkcs11Uri:
        """The token URI (identity attributes only: no slot, no module)."""
        return self.identity.uri()

    @property
    def label(self) -> str:
        return self.identity.label

    @property
    def pin_state(self) -> PinState:
        return PinState(self.flags)

    @property
    def write_protected(self) -> bool:
        return bool(self.flags & CKF_WRITE_PROTECTED)

    def matches(self, uri: Pkcs11Uri) -> bool:
        """RFC 7512 matching of the token, slot, library and module attributes."""
        if uri.module_path is not None and not _same_file(uri.module_path, self.module.path):
            return False
        if uri.module_name is not None and uri.module_name not in _module_names(self.module.path):
            return False
        ident = self.identity
        return uri.matches_token(
            label=ident.label,
            manufacturer=ident.manufacturer,
            model=ident.model,
            serial=ident.serial,
            slot_id=self.slot_id,
            slot_description=self.slot_description,
            slot_manufacturer=self.slot_manufacturer,
            library_manufacturer=self.module.manufacturer,
            library_description=self.module.description,
            library_version=self.module.version,
        )


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a == b


def _module_names(path: str) -> set[str]:
    base = os.path.basename(path)
    stem = base.split(".so")[0]
    names = {base, stem}
    if stem.startswith("lib"):
        names.add(stem[3:])
    return names


@dataclass(frozen=True)
class CertificateObject:
    """An X.509 certificate object (CKO_CERTIFICATE, CKC_X_509) on a token."""

    token: TokenIdentity
    label: str
    id: bytes
    der: bytes

    @cached_property
    def certificate(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(self.der)

    @property
    def uri(self) -> Pkcs11Uri:
        return self.token.uri().with_object(object=self.label or None, id=self.id, type="cert")

    @property
    def subject(self) -> str:
        return self.certificate.subject.rfc4514_string()

    @property
    def public_key(self) -> PublicKey | None:
        key = self.certificate.public_key()
        return key if isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey) else None

    @property
    def self_signed(self) -> bool:
        """Issuer equals subject and the certificate's own key verifies its signature."""
        return is_self_signed(self.certificate)


@dataclass(frozen=True)
class KeyObject:
    """A private or public key object on a token (RSA or EC; others are listed as such)."""

    token: TokenIdentity
    label: str
    id: bytes
    key_class: str  # "private" | "public"
    key_type: str  # "rsa" | "ec" | other lower-case PKCS#11 key type name
    bits: int | None
    public_key: PublicKey | None = field(compare=False, default=None)
    always_authenticate: bool = False
    curve: str | None = None

    @property
    def uri(self) -> Pkcs11Uri:
        return self.token.uri().with_object(
            object=self.label or None, id=self.id, type=self.key_class
        )

    @property
    def description(self) -> str:
        """e.g. "RSA 2048" or "EC P-256 (secp256r1)"."""
        if self.key_type == "rsa":
            return f"RSA {self.bits}" if self.bits else "RSA"
        if self.key_type == "ec":
            names = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
            return f"EC {names.get(self.curve or '', self.curve or '?')}"
        return self.key_type.upper()


@dataclass(frozen=True)
class TokenPair:
    """A certificate and the private key it belongs to (either may be missing).

    `paired_by` says how they were matched: "id" (same CKA_ID and, when both are known,
    the same public key) or "public-key" (equal public keys, different CKA_ID).
    """

    certificate: CertificateObject | None
    private_key: KeyObject | None
    paired_by: str | None = None


def public_keys_equal(a: PublicKey | None, b: PublicKey | None) -> bool:
    """Compare two public keys by their SubjectPublicKeyInfo encoding."""
    if a is None or b is None:
        return False
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    return a.public_bytes(serialization.Encoding.DER, fmt) == b.public_bytes(
        serialization.Encoding.DER, fmt
    )


def pair_objects(
    certificates: Sequence[CertificateObject], private_keys: Sequence[KeyObject]
) -> list[TokenPair]:
    """Pair certificates with private keys: by CKA_ID, else by equal public keys."""
    pairs: list[TokenPair] = []
    used: set[int] = set()
    for cert in certificates:
        cert_key = cert.public_key
        match: tuple[int, str] | None = None
        for i, key in enumerate(private_keys):
            if i in used or not cert.id or key.id != cert.id:
                continue
            # Same id but a different key: a stale certificate from an earlier key.
            if key.public_key is not None and not public_keys_equal(key.public_key, cert_key):
                continue
            match = (i, "id")
            break
        if match is None:
            for i, key in enumerate(private_keys):
                if i not in used and public_keys_equal(key.public_key, cert_key):
                    match = (i, "public-key")
                    break
        if match is None:
            pairs.append(TokenPair(cert, None, None))
        else:
            used.add(match[0])
            pairs.append(TokenPair(cert, private_keys[match[0]], match[1]))
    for i, key in enumerate(private_keys):
        if i not in used:
            pairs.append(TokenPair(None, key, None))
    return pairs


# -- provider set ----------------------------------------------------------------------


class ProviderSet:
    """The PKCS#11 providers one caller uses (configured list plus `--provider`).

    Modules are loaded when the set is created; a provider that cannot be loaded raises
    `ProviderError` naming it. Token sessions opened through any ProviderSet are shared
    process-wide per token (PKCS#11 login state is per application and token).
    """

    def __init__(
        self, providers: Iterable[str | os.PathLike[str]] = (), *, rescan_on_miss: bool = True
    ) -> None:
        self._modules: list[_Module] = []
        self.rescan_on_miss = rescan_on_miss
        for path in providers:
            self.add(path)

    def add(self, path: str | os.PathLike[str]) -> ModuleInfo:
        """Load one more provider (no-op if it, or the same file, is already in the set)."""
        module = load_module(path)
        if all(m.key != module.key for m in self._modules):
            self._modules.append(module)
        return module.info

    @property
    def modules(self) -> list[ModuleInfo]:
        return [m.info for m in self._modules]

    def _module_for(self, info: ModuleInfo) -> _Module:
        for m in self._modules:
            if m.path == info.path:
                return m
        return load_module(info.path)

    def rescan(self) -> None:
        """Re-initialize every module so inserted/removed tokens become visible."""
        for m in self._modules:
            m.reinitialize()

    def _scan(self) -> Iterator[tuple[_Module, Any, TokenInfo]]:
        for m in self._modules:
            with m.lock:
                try:
                    slots = m.lib.get_slots(token_present=True)
                except p11x.PKCS11Error as exc:
                    raise ProviderError(
                        f"PKCS#11 provider {m.path} failed to list slots: {type(exc).__name__}"
                    ) from None
                for slot in slots:
                    try:
                        token = slot.get_token()
                    except (*_GONE, p11x.GeneralError, p11x.DeviceError, p11x.FunctionFailed):
                        # SoftHSM2 answers CKR_GENERAL_ERROR for a token whose storage
                        # vanished: for us that token is simply not present.
                        continue
                    if not int(token.flags) & CKF_TOKEN_INITIALIZED:
                        continue
                    yield m, token, _token_info(m, slot, token)

    def tokens(self, *, rescan: bool = False) -> list[TokenInfo]:
        """Every initialized token present now, in provider and slot order.

        `rescan=True` re-initializes the modules first, for modules (like SoftHSM2) that
        only see inserted or removed tokens after C_Initialize.
        """
        if rescan:
            self.rescan()
        return [info for _, _, info in self._scan()]

    def find_tokens(self, uri: Pkcs11Uri) -> list[TokenInfo]:
        """Present tokens matching the URI (loading its module-path if given)."""
        if uri.module_path is not None:
            self.add(uri.module_path)
        return [info for info in self.tokens() if info.matches(uri)]

    def find_token(self, uri: Pkcs11Uri) -> TokenInfo:
        """The one token the URI names; rescans once if none is present.

        The same token seen through two modules counts once (the first provider wins);
        two *different* tokens matching is `AmbiguousToken` — a PIN is never sent to a
        guess.
        """
        found = self.find_tokens(uri)
        if not found and self.rescan_on_miss and self._modules:
            self.rescan()
            found = self.find_tokens(uri)
        if not found:
            shown = str(uri.redacted())
            if not self._modules:
                raise TokenNotFound(f"no PKCS#11 provider configured to look for {shown}")
            raise TokenNotFound(
                f"no token matching {shown} is present (looked in "
                f"{', '.join(m.path for m in self._modules)}); insert it or check the URI"
            )
        identities = sorted({info.identity for info in found})
        if len(identities) > 1:
            raise AmbiguousToken(
                f"{uri.redacted()} matches {len(identities)} tokens ("
                + ", ".join(str(i) for i in identities)
                + "); add serial= or token= to the URI"
            )
        return found[0]

    def locate(self, identity: TokenIdentity) -> tuple[_Module, Any, TokenInfo] | None:
        """Find the token with this identity now (no rescan): module, live token, info."""
        for m, token, info in self._scan():
            if info.identity == identity:
                return m, token, info
        return None

    def open(
        self,
        token: Pkcs11Uri | TokenInfo | TokenIdentity,
        pin: PinProvider | None = None,
        *,
        login: bool = False,
    ) -> TokenSession:
        """A session on one token (shared per token in the process).

        `pin` is asked only when a login is needed (`login=True`, or later by an
        operation that needs the private objects). Without a provider, logins raise
        `PinUnavailable`.
        """
        if isinstance(token, Pkcs11Uri):
            info = self.find_token(token)
        elif isinstance(token, TokenIdentity):
            info = self.find_token(token.uri())
        else:
            info = token
        module = self._module_for(info.module)
        with module.lock:
            existing = _SESSIONS.get((module.key, info.identity))
            if existing is not None and not existing.closed:
                existing.providers = self
                if pin is not None:
                    existing.pin_provider = pin
                session = existing
            else:
                session = TokenSession(self, info, pin)
                _SESSIONS[(module.key, info.identity)] = session
        if login:
            session.login()
        return session

    def session_for(self, uri: Pkcs11Uri, pin: PinProvider | None = None) -> TokenSession:
        """Shorthand: `open()` the token an object URI lives on."""
        return self.open(uri.without_object(), pin)


def _token_info(module: _Module, slot: Any, token: Any) -> TokenInfo:
    identity = TokenIdentity(
        manufacturer=_text(token.manufacturer_id),
        model=_text(token.model),
        serial=_text(token.serial),
        label=_text(token.label),
    )
    return TokenInfo(
        identity=identity,
        module=module.info,
        slot_id=int(slot.slot_id),
        slot_description=_text(slot.slot_description),
        slot_manufacturer=_text(slot.manufacturer_id),
        flags=int(token.flags),
    )


_SESSIONS: dict[tuple[tuple[int, int], TokenIdentity], TokenSession] = {}

_KEY_TYPES = {"rsa": KeyType.RSA, "ec": KeyType.EC}
_DIGEST_SIZES = {"sha1": 20, "sha224": 28, "sha256": 32, "sha384": 48, "sha512": 64}


def _remember_key_type(obj: Any, key_type: Any) -> None:
    """Make a python-pkcs11 key object answer `key_type` from memory.

    python-pkcs11 0.10 reads CKA_KEY_TYPE from the token at every `sign()` (to pick a
    default mechanism; ours is always explicit): one C_GetAttributeValue per signature
    for a value that cannot change. A subclass with the value as a class attribute
    shadows the base class's reading property for this one object only.
    """
    cls = type(obj)
    try:
        obj.__class__ = type(cls.__name__, (cls,), {"key_type": key_type})
    except TypeError:  # a layout python-pkcs11 does not allow to change: keep reading it
        pass


# -- token session ---------------------------------------------------------------------


class TokenSession:
    """An open session on one token, identified by `TokenIdentity`, never by slot.

    Obtain it with `ProviderSet.open()`. Every method re-checks the token is still the
    one in the slot, follows it to another slot/module after re-insertion, and re-opens
    the session (asking for the PIN again) when the old one died.
    """

    def __init__(self, providers: ProviderSet, info: TokenInfo, pin: PinProvider | None) -> None:
        self.providers = providers
        self.identity = info.identity
        self.info = info
        self.pin_provider = pin
        self.closed = False
        self.logged_in = False
        self.login_time: float | None = None  # time.monotonic() of the last C_Login
        self._want_login = False
        self._module: _Module | None = None
        self._generation = -1
        # Private keys found for signing on the current pkcs11 session: (type, CKA_ID,
        # label) -> (key object, CKA_ALWAYS_AUTHENTICATE). Object handles are only valid
        # on the session they were found on, so setting `_session` forgets them.
        self._sign_keys: dict[tuple[str, bytes, str], tuple[Any, bool]] = {}
        self._live: Any = None
        self._lock = threading.RLock()

    @property
    def _session(self) -> Any:
        return self._live

    @_session.setter
    def _session(self, session: Any) -> None:
        self._live = session
        self._sign_keys.clear()

    # -- liveness ------------------------------------------------------------------

    def _open_raw(self, module: _Module, token: Any, info: TokenInfo) -> None:
        rw = not info.write_protected
        self._session = None
        self.logged_in = False
        try:
            self._session = token.open(rw=rw)
        except p11x.PKCS11Error as exc:
            raise TokenOperationError(
                f"cannot open a session on token {self.identity}: {type(exc).__name__}"
            ) from None
        self._module = module
        self._generation = module.generation
        self.info = info

    def _token_still_there(self) -> bool:
        assert self._module is not None and self._session is not None
        if self._module.generation != self._generation:
            return False
        try:
            token = self._session.token.slot.get_token()
        except p11x.PKCS11Error:
            return False
        current = _token_info(self._module, self._session.token.slot, token)
        return current.identity == self.identity

    def _ensure(self, *, verify: bool = True) -> Any:
        """The live pkcs11 session, re-finding the token (one rescan) if it moved.

        `verify=False` trusts an open session of the module's current generation without
        asking the slot (the caller checks the slot itself when the operation fails).
        """
        if self.closed:
            raise TokenOperationError(f"the session on token {self.identity} is closed")
        live = self._live
        if live is not None:
            if not verify and self._module is not None and (
                self._module.generation == self._generation
            ):
                return live
            if self._token_still_there():
                return live
        self._session = None
        self.logged_in = False
        found = self.providers.locate(self.identity)
        if found is None and self.providers.rescan_on_miss:
            self.providers.rescan()
            found = self.providers.locate(self.identity)
        if found is None:
            raise TokenNotPresent(f"token {self.identity} is not present: insert it and retry")
        module, token, info = found
        self._open_raw(module, token, info)
        if self._want_login:
            self._login_now()
        return self._session

    def _run(self, op: Callable[[Any], T], *, login: bool = False, verify: bool = True) -> T:
        """Run `op(session)`; if the token went away meanwhile, re-find it and run once more.

        The second run is not a PIN retry: a re-opened session asks the PIN provider anew.
        `verify=False`: see `_ensure`; `op` must then raise a `_GONE` error itself when it
        fails on a card that is no longer in its slot.
        """
        with self._lock:
            for attempt in (1, 2):
                session = self._ensure(verify=verify)
                if login and not self.logged_in:
                    self.login()
                    session = self._session
                try:
                    return op(session)
                except _GONE:
                    self._session = None
                    self.logged_in = False
                    if attempt == 2:
                        raise TokenNotPresent(
                            f"token {self.identity} was removed during the operation"
                        ) from None
            raise AssertionError("unreachable")

    # -- login ---------------------------------------------------------------------

    def pin_state(self) -> PinState:
        """The token's PIN state as it is now."""
        with self._lock:
            session = self._ensure()
            try:
                token = session.token.slot.get_token()
            except p11x.PKCS11Error:
                return self.info.pin_state
            self.info = _token_info(self._module, session.token.slot, token)  # type: ignore[arg-type]
            return self.info.pin_state

    def login(self) -> None:
        """Log the user in (once); asks the PIN provider for this token's PIN.

        Raises `PinLocked` without trying when the PIN is locked, `PinIncorrect` (with
        the PIN state afterwards) on a wrong PIN, and never tries a second time.
        """
        with self._lock:
            self._want_login = True
            self._ensure()
            if not self.logged_in:
                self._login_now()

    def _login_now(self) -> None:
        state = self.pin_state()
        if not state.login_required:
            self.logged_in = True
            return
        if state.locked:
            raise PinLocked(f"token {self.identity}: {state.describe()}")
        assert self._module is not None
        token = self._session.token
        rw = bool(self._session.rw)
        if state.protected_path:
            credential: Any = PROTECTED_AUTH
        else:
            if self.pin_provider is None:
                raise PinUnavailable(
                    f"token {self.identity} needs a PIN and no PIN source was given "
                    "(run interactively, set SSH_ASKPASS, or use pin-source= in the URI)"
                )
            credential = self.pin_provider(PinRequest(self.identity, state))
        try:
            # python-pkcs11 opens a new session and calls C_Login exactly once on it.
            new_session = token.open(rw=rw, user_pin=credential)
        except p11x.UserAlreadyLoggedIn:
            new_session = token.open(rw=rw)
        except p11x.PinIncorrect:
            after = self.pin_state()
            raise PinIncorrect(
                f"wrong PIN for token {self.identity}; not tried again. PIN state now: "
                f"{after.describe()}"
            ) from None
        except p11x.PinLocked:
            raise PinLocked(f"token {self.identity}: {self.pin_state().describe()}") from None
        except (p11x.PinInvalid, p11x.PinLenRange):
            raise PinIncorrect(
                f"the PIN entered for token {self.identity} has invalid characters or length; "
                "nothing was counted against it"
            ) from None
        except p11x.PinExpired:
            raise PinError(
                f"the PIN of token {self.identity} has expired: change it with the card's tool"
            ) from None
        except _GONE:
            raise TokenNotPresent(f"token {self.identity} was removed during login") from None
        except p11x.PKCS11Error as exc:
            raise TokenOperationError(
                f"login to token {self.identity} failed: {type(exc).__name__}"
            ) from None
        finally:
            credential = None  # drop our reference to the PIN early
        old = self._session
        self._session = new_session
        try:
            # Only a public session is dropped: closing it must not log the token out.
            if old is not None and old.user_type == pkcs11.constants.UserType.NOBODY:
                old.close()
        except p11x.PKCS11Error:
            pass
        self.logged_in = True
        self.login_time = time.monotonic()

    def logout(self) -> None:
        """Forget the login (the next private operation asks for the PIN again)."""
        with self._lock:
            self._want_login = False
            session, self._session = self._session, None
            self.logged_in = False
            self.login_time = None
            if session is not None:
                try:
                    session.close()
                except p11x.PKCS11Error:
                    pass

    def close(self) -> None:
        """Log out and close; the session cannot be used afterwards."""
        self.logout()
        self.closed = True

    def __enter__(self) -> TokenSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading objects -----------------------------------------------------------

    def certificates(self) -> list[CertificateObject]:
        """X.509 certificates on the token (public objects; no login needed)."""

        def op(session: Any) -> list[CertificateObject]:
            out = []
            for obj in session.get_objects(
                {
                    Attribute.CLASS: ObjectClass.CERTIFICATE,
                    Attribute.CERTIFICATE_TYPE: CertificateType.X_509,
                }
            ):
                attrs = _attributes(obj, (Attribute.LABEL, Attribute.ID, Attribute.VALUE))
                der = attrs.get(Attribute.VALUE)
                if not der:
                    continue
                cert = CertificateObject(
                    self.identity,
                    _text(attrs.get(Attribute.LABEL, "")),
                    bytes(attrs.get(Attribute.ID, b"")),
                    bytes(der),
                )
                try:
                    cert.certificate  # noqa: B018 - parse now; skip garbage objects
                except ValueError:
                    continue
                out.append(cert)
            return out

        return self._run(op)

    def keys(self, key_class: str = "private", *, login: bool = False) -> list[KeyObject]:
        """Keys of `key_class` ("private" or "public"). Private keys are usually only
        visible after login: pass login=True to log in first."""
        cls = {"private": ObjectClass.PRIVATE_KEY, "public": ObjectClass.PUBLIC_KEY}[key_class]

        def op(session: Any) -> list[KeyObject]:
            return [
                self._key_object(obj, key_class)
                for obj in session.get_objects({Attribute.CLASS: cls})
            ]

        keys = self._run(op, login=login)
        if key_class == "private":
            # EC private keys do not carry their point: take it from the public key object.
            publics = {
                k.id: k
                for k in self._run(
                    lambda s: [
                        self._key_object(o, "public")
                        for o in s.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY})
                    ]
                )
            }
            keys = [
                k
                if k.public_key is not None or k.id not in publics
                else _with_public(k, publics[k.id].public_key)
                for k in keys
            ]
        return keys

    def _key_object(self, obj: Any, key_class: str) -> KeyObject:
        attrs = _attributes(
            obj,
            (
                Attribute.LABEL,
                Attribute.ID,
                Attribute.KEY_TYPE,
                Attribute.MODULUS,
                Attribute.PUBLIC_EXPONENT,
                Attribute.EC_PARAMS,
                Attribute.EC_POINT,
                Attribute.ALWAYS_AUTHENTICATE,
            ),
        )
        key_type = attrs.get(Attribute.KEY_TYPE)
        public: PublicKey | None = None
        bits: int | None = None
        curve: str | None = None
        if key_type == KeyType.RSA:
            kind = "rsa"
            modulus = attrs.get(Attribute.MODULUS)
            exponent = attrs.get(Attribute.PUBLIC_EXPONENT)
            if modulus:
                n = int.from_bytes(modulus, "big")
                bits = n.bit_length()
                if exponent:
                    public = rsa.RSAPublicNumbers(int.from_bytes(exponent, "big"), n).public_key()
        elif key_type == KeyType.EC:
            kind = "ec"
            params = attrs.get(Attribute.EC_PARAMS)
            curve = _curve_name(params)
            if curve in _CURVES:
                bits = _CURVES[curve]().key_size
                point = attrs.get(Attribute.EC_POINT)
                if point:
                    public = _ec_public_key(curve, bytes(point))
        else:
            kind = getattr(key_type, "name", str(key_type)).lower()
        return KeyObject(
            token=self.identity,
            label=_text(attrs.get(Attribute.LABEL, "")),
            id=bytes(attrs.get(Attribute.ID, b"")),
            key_class=key_class,
            key_type=kind,
            bits=bits,
            public_key=public,
            always_authenticate=bool(attrs.get(Attribute.ALWAYS_AUTHENTICATE, False)),
            curve=curve,
        )

    def pairs(self, *, login: bool = False) -> list[TokenPair]:
        """Certificates with their private keys (see `pair_objects`)."""
        return pair_objects(self.certificates(), self.keys("private", login=login))

    def find_objects(
        self, uri: Pkcs11Uri, *, login: bool = False
    ) -> list[CertificateObject | KeyObject]:
        """Certificates and keys matching the object attributes of `uri`."""
        found: list[CertificateObject | KeyObject] = []
        if uri.type in (None, "cert"):
            found += [
                c
                for c in self.certificates()
                if uri.matches_object(label=c.label, id=c.id, type="cert")
            ]
        for cls in ("private", "public"):
            if uri.type in (None, cls):
                found += [
                    k
                    for k in self.keys(cls, login=login and cls == "private")
                    if uri.matches_object(label=k.label, id=k.id, type=cls)
                ]
        return found

    # -- signing -------------------------------------------------------------------

    def _private_handle(self, session: Any, key: KeyObject) -> Any:
        template: dict[Attribute, Any] = {Attribute.CLASS: ObjectClass.PRIVATE_KEY}
        if key.id:
            template[Attribute.ID] = key.id
        if key.label:
            template[Attribute.LABEL] = key.label
        matches = list(session.get_objects(template))
        if not matches:
            raise ObjectNotFound(f"private key {key.uri} is not on token {self.identity}")
        if len(matches) > 1:
            raise ObjectNotFound(
                f"{len(matches)} private keys on token {self.identity} match {key.uri}; "
                "give them distinct CKA_ID values"
            )
        return matches[0]

    def _signing_key(self, session: Any, key: KeyObject) -> tuple[Any, bool, bool]:
        """The key object for `key` on `session` and its CKA_ALWAYS_AUTHENTICATE flag,
        and whether they were remembered from an earlier signature."""
        remembered = self._sign_keys.get((key.key_type, key.id, key.label))
        if remembered is not None:
            return remembered[0], remembered[1], True
        try:
            handle = self._private_handle(session, key)
            attrs = _attributes(handle, (Attribute.ALWAYS_AUTHENTICATE, Attribute.KEY_TYPE))
        except (ObjectNotFound, p11x.PKCS11Error) as exc:
            if isinstance(exc, _GONE):
                raise
            # Without the slot check before signing, a removed card shows up here (SoftHSM2
            # finds no objects on a session whose token is gone).
            if not self._token_still_there():
                raise p11x.DeviceRemoved() from None
            if isinstance(exc, ObjectNotFound):
                raise
            raise TokenOperationError(
                f"token {self.identity} failed to find key {key.label or key.uri}: "
                f"{type(exc).__name__}"
            ) from None
        always = key.always_authenticate or bool(attrs.get(Attribute.ALWAYS_AUTHENTICATE, False))
        key_type = attrs.get(Attribute.KEY_TYPE, _KEY_TYPES.get(key.key_type))
        if key_type is not None:
            _remember_key_type(handle, key_type)
        self._sign_keys[(key.key_type, key.id, key.label)] = (handle, always)
        return handle, always, False

    def _end_stuck_operation(self, session: Any) -> None:
        """After a failed context-specific login: leave no session that cannot be used.

        SoftHSM2 keeps the signature operation active when the context-specific C_Login
        fails, and python-pkcs11 has no call that ends it: every later operation on that
        session would fail with CKR_OPERATION_ACTIVE. A one-byte digest shows whether that
        is so; if it is, the session is closed (which ends its login, so the next operation
        logs in again and asks for the PIN as usual).
        """
        if session is not self._live:
            return
        try:
            session.digest(b"\x00", mechanism=Mechanism.SHA256)
        except p11x.OperationActive:
            self.logout()
        except p11x.PKCS11Error:
            pass  # no digest on this token: nothing to tell from it

    def sign_digest(self, key: KeyObject, digest: bytes, hash_name: str) -> bytes:
        """Sign a precomputed digest with a private key on the token.

        RSA: CKM_RSA_PKCS over DigestInfo||digest (PKCS#1 v1.5). EC: CKM_ECDSA over the
        digest, returning raw r||s. A CKA_ALWAYS_AUTHENTICATE key asks the PIN provider
        for a context-specific login first (`PinRequest.context_specific`). The key object
        is remembered per session (see "Signing fast path" in the module docstring).
        """
        if key.key_type == "rsa":
            prefix = DIGEST_INFO_PREFIXES.get(hash_name)
            if prefix is None:
                raise ValueError(f"unsupported hash for RSA signing: {hash_name!r}")
            data = prefix + digest
            mechanism = Mechanism.RSA_PKCS
        elif key.key_type == "ec":
            data = digest
            mechanism = Mechanism.ECDSA
        else:
            raise TokenOperationError(f"cannot sign with a {key.key_type} key")
        size = _DIGEST_SIZES.get(hash_name) or hashlib.new(hash_name).digest_size
        if len(digest) != size:
            raise ValueError(f"digest length {len(digest)} does not match {hash_name}")

        def op(session: Any) -> bytes:
            for attempt in (1, 2):
                handle, always, remembered = self._signing_key(session, key)
                pin: str | None = None
                if always:
                    state = self.pin_state()
                    if state.locked:
                        raise PinLocked(f"token {self.identity}: {state.describe()}")
                    if self.pin_provider is None:
                        raise PinUnavailable(
                            f"key {key.label!r} needs the PIN for every signature and no PIN "
                            "source was given"
                        )
                    pin = self.pin_provider(
                        PinRequest(
                            self.identity, state, context_specific=True, key_label=key.label
                        )
                    )
                try:
                    return bytes(handle.sign(data, mechanism=mechanism, pin=pin))
                except p11x.PinIncorrect:
                    self._sign_keys.clear()
                    message = (
                        f"wrong PIN for key {key.label!r} on token {self.identity}; not tried "
                        f"again. PIN state now: {self.pin_state().describe()}"
                    )
                    self._end_stuck_operation(session)
                    raise PinIncorrect(message) from None
                except _GONE:
                    self._sign_keys.clear()
                    raise
                except p11x.PKCS11Error as exc:
                    self._sign_keys.clear()
                    if pin is not None:
                        self._end_stuck_operation(session)
                    # The slot was not checked before signing: do it now.
                    if not self._token_still_there():
                        raise p11x.DeviceRemoved() from None
                    if remembered and pin is None and attempt == 1:
                        continue  # a stale key object: look it up again (no PIN was sent)
                    if isinstance(exc, p11x.UserNotLoggedIn):
                        raise TokenOperationError(
                            f"token {self.identity} refused to sign: not logged in"
                        ) from None
                    raise TokenOperationError(
                        f"token {self.identity} failed to sign with key {key.label!r}: "
                        f"{type(exc).__name__}"
                    ) from None
            raise AssertionError("unreachable")

        return self._run(op, login=True, verify=False)

    def sign(self, key: KeyObject, data: bytes, hash_name: str = "sha256") -> bytes:
        """Hash `data` with `hash_name` and sign it (see `sign_digest`)."""
        return self.sign_digest(key, hashlib.new(hash_name, data).digest(), hash_name)

    # -- writing -------------------------------------------------------------------

    def generate_key_pair(self, kind: str, *, label: str, key_id: bytes | None = None) -> KeyObject:
        """Generate a non-extractable, sensitive key pair on the token.

        `kind` is one of rsa2048, rsa3072, ec-p256, ec-p384. `key_id` (CKA_ID) defaults to
        16 random bytes; it must not already be used by a key (private or public) on the
        token: a failed generation deletes the key objects with that id.
        """
        if kind not in KEY_KINDS:
            raise ValueError(f"key kind must be one of {', '.join(KEY_KINDS)}, not {kind!r}")
        family, size = KEY_KINDS[kind]
        key_id = key_id if key_id is not None else os.urandom(16)
        if any(k.id == key_id for key_class in ("private", "public")
               for k in self.keys(key_class, login=True)):
            raise TokenOperationError(
                f"token {self.identity} already has a key with id {key_id.hex()}"
            )
        private_template = {
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.SIGN: True,
            Attribute.DECRYPT: False,
            Attribute.UNWRAP: False,
            Attribute.DERIVE: False,
        }
        public_template: dict[Attribute, Any] = {
            Attribute.TOKEN: True,
            Attribute.PRIVATE: False,
            Attribute.VERIFY: True,
            Attribute.ENCRYPT: False,
            Attribute.WRAP: False,
        }

        def op(session: Any) -> None:
            try:
                if family == "rsa":
                    session.generate_keypair(
                        KeyType.RSA,
                        int(size),
                        id=key_id,
                        label=label,
                        store=True,
                        capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                        public_template=public_template,
                        private_template=private_template,
                    )
                else:
                    public_template[Attribute.EC_PARAMS] = _CURVE_PARAMS[str(size)]
                    session.generate_keypair(
                        KeyType.EC,
                        id=key_id,
                        label=label,
                        store=True,
                        capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                        public_template=public_template,
                        private_template=private_template,
                    )
            except _GONE:
                raise
            except p11x.PKCS11Error as exc:
                raise TokenOperationError(
                    f"token {self.identity} could not generate a {kind} key: {type(exc).__name__}"
                ) from None

        try:
            self._run(op, login=True)
            for key in self.keys("private", login=True):
                if key.id == key_id:
                    return key
            raise TokenOperationError(f"the new key is not visible on token {self.identity}")
        except BaseException:
            # Interrupted (Ctrl-C) or failed after the card may have made the pair: no key
            # object had this CKA_ID before (checked above), so only this pair is deleted.
            self._delete_key_objects(key_id, quietly=True)
            raise

    @contextmanager
    def generated_key_pair(
        self, kind: str, *, label: str, key_id: bytes | None = None
    ) -> Iterator[KeyObject]:
        """`generate_key_pair`, deleted again from the token if the `with` block fails or
        is interrupted (e.g. Ctrl-C before its CSR was written): no orphan key is left."""
        key = self.generate_key_pair(kind, label=label, key_id=key_id)
        try:
            yield key
        except BaseException:
            self._delete_key_objects(key.id, quietly=True)
            raise

    def delete_key(self, key: KeyObject) -> int:
        """Delete a private key and the public key object with its CKA_ID; the count.

        A key with an empty CKA_ID cannot be told apart from others and is refused.
        """
        if not key.id:
            raise TokenOperationError(
                f"{key.uri} has no CKA_ID: it cannot be told apart from other keys; "
                "delete it with the card's own tool"
            )
        return self._delete_key_objects(key.id, quietly=False)

    def _delete_key_objects(self, key_id: bytes, *, quietly: bool) -> int:
        def op(session: Any) -> int:
            found = [
                obj
                for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY)
                for obj in session.get_objects({Attribute.CLASS: cls, Attribute.ID: key_id})
            ]
            for obj in found:
                try:
                    obj.destroy()
                except _GONE:
                    raise
                except p11x.PKCS11Error as exc:
                    raise TokenOperationError(
                        f"token {self.identity} could not delete key id {key_id.hex()}: "
                        f"{type(exc).__name__}"
                    ) from None
            return len(found)

        if quietly and not self.logged_in:
            return 0  # nothing was generated without a login; never ask a PIN to clean up
        try:
            return self._run(op, login=True)
        except TokenError:
            if quietly:
                return 0
            raise

    def store_certificate(
        self,
        certificate: x509.Certificate,
        *,
        key_id: bytes | None = None,
        label: str | None = None,
    ) -> CertificateObject:
        """Store an X.509 certificate on the token under its key's CKA_ID.

        Without `key_id`, the private key whose public key equals the certificate's is
        used; none is an error (a certificate is stored next to its key, not alone).
        Storing a certificate that is already there returns the existing object.
        """
        der = certificate.public_bytes(serialization.Encoding.DER)
        cert_key = certificate.public_key()
        if key_id is None:
            for key in self.keys("private", login=True):
                if public_keys_equal(key.public_key, cert_key):  # type: ignore[arg-type]
                    key_id = key.id
                    label = label or key.label
                    break
            else:
                raise ObjectNotFound(
                    f"no private key on token {self.identity} matches the certificate's public key"
                )
        for existing in self.certificates():
            if existing.der == der and existing.id == key_id:
                return existing
        label = label or certificate.subject.rfc4514_string()[:64]
        template = {
            Attribute.CLASS: ObjectClass.CERTIFICATE,
            Attribute.CERTIFICATE_TYPE: CertificateType.X_509,
            Attribute.TOKEN: True,
            Attribute.PRIVATE: False,
            Attribute.LABEL: label,
            Attribute.ID: key_id,
            Attribute.SUBJECT: certificate.subject.public_bytes(),
            Attribute.ISSUER: certificate.issuer.public_bytes(),
            Attribute.SERIAL_NUMBER: _der_integer(certificate.serial_number),
            Attribute.VALUE: der,
        }

        def op(session: Any) -> None:
            try:
                session.create_object(template)
            except _GONE:
                raise
            except p11x.PKCS11Error as exc:
                raise TokenOperationError(
                    f"token {self.identity} could not store the certificate: {type(exc).__name__}"
                ) from None

        self._run(op, login=True)
        return CertificateObject(self.identity, label, key_id, der)

    def make_csr(
        self, key: KeyObject, subject: x509.Name, hash_name: str | None = None
    ) -> x509.CertificateSigningRequest:
        """A PKCS#10 request for `key`'s public key with `subject`, signed on the token."""
        if key.public_key is None:
            raise TokenOperationError(f"the public key of {key.uri} is not readable from the token")
        return build_csr(
            subject, key.public_key, lambda digest, h: self.sign_digest(key, digest, h), hash_name
        )


def _with_public(key: KeyObject, public: PublicKey | None) -> KeyObject:
    return KeyObject(
        key.token,
        key.label,
        key.id,
        key.key_class,
        key.key_type,
        key.bits,
        public,
        key.always_authenticate,
        key.curve,
    )


def _attributes(obj: Any, wanted: Sequence[Attribute]) -> dict[Attribute, Any]:
    """Read the attributes the object has; missing or sensitive ones are left out."""
    try:
        return dict(obj.get_attributes(list(wanted)))
    except _GONE:
        raise
    except p11x.PKCS11Error:
        out: dict[Attribute, Any] = {}
        for attr in wanted:
            try:
                out[attr] = obj[attr]
            except _GONE:
                raise
            except p11x.PKCS11Error:
                continue
        return out


def _curve_name(params: bytes | None) -> str | None:
    if not params:
        return None
    for name, der in _CURVE_PARAMS.items():
        if bytes(params) == der:
            return name
    return "unknown"


def _ec_public_key(curve: str, point: bytes) -> PublicKey | None:
    # CKA_EC_POINT is a DER OCTET STRING around the point (PKCS#11 v2.40); some
    # modules return the bare point. Accept both.
    raw = point
    if point[:1] == b"\x04" and len(point) > 2:
        length = point[1]
        offset = 2
        if length & 0x80:
            n = length & 0x7F
            length = int.from_bytes(point[2 : 2 + n], "big")
            offset = 2 + n
        if offset + length == len(point):
            raw = point[offset:]
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(_CURVES[curve](), raw)
    except ValueError:
        return None


def _der_integer(value: int) -> bytes:
    body = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=True)
    if len(body) < 0x80:
        return b"\x02" + bytes([len(body)]) + body
    size = len(body).to_bytes((len(body).bit_length() + 7) // 8, "big")
    return b"\x02" + bytes([0x80 | len(size)]) + size + body


def verify_signature(public_key: PublicKey, signature: bytes, data: bytes, hash_name: str) -> bool:
    """Check a token signature with `cryptography` (RSA PKCS#1 v1.5, or EC raw r||s)."""
    algorithms: dict[str, hashes.HashAlgorithm] = {
        "sha1": hashes.SHA1(),
        "sha256": hashes.SHA256(),
        "sha384": hashes.SHA384(),
        "sha512": hashes.SHA512(),
    }
    algorithm = algorithms[hash_name]
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, padding.PKCS1v15(), algorithm)
        else:
            half = len(signature) // 2
            der = encode_dss_signature(
                int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
            )
            public_key.verify(der, data, ec.ECDSA(algorithm))
    except InvalidSignature:
        return False
    return True


def default_providers(
    configured: Iterable[str | Path], extra: Iterable[str | Path] = ()
) -> list[str]:
    """Configured providers followed by `--provider` ones, without duplicates."""
    out: list[str] = []
    for p in [*configured, *extra]:
        text = os.fspath(p)
        if text not in out:
            out.append(text)
    return out
