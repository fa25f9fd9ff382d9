"""The token-backed identity source of ``idm agent`` (and its ``ssh-add -s/-e`` hook).

What is offered
    An *identity* is an **approved** inventory certificate registered to a card (token)
    the inventory knows. It is listed when all of these hold:

    1. its card is present now in a slot of a loaded provider, **or** its card has never
       been seen inserted (the inventory registered it absent, ``idm enroll --cert
       ... --token URI`` without the card, and this agent has not seen it either): such
       identities are listed so that the first use can ask for the card;
    2. its verdict is valid and fresh (:mod:`idm.identity.agent.gate`);
    3. it matches ``--only`` when selectors are given (:mod:`idm.identity.agent.selection`);
    4. the provider the card sits in was not unloaded with ``ssh-add -e``.

    A card that was seen present and is removed while the agent runs has its identities
    withdrawn at once (next poll, or the first sign request that finds it gone). When it
    comes back, in any slot of any loaded provider, they return, without a restart, and
    the card logs in again under the PIN policy.

Formats, per socket kind (reference/ssh-x509-wire.md)
    STANDARD: the plain key, then the RFC 6187 blob (leaf + intermediates of the
    verdict's chain, not the anchor); PKIX: the raw-DER blob (``x509v3-sign-rsa``,
    ``x509v3-ecdsa-sha2-*``), then the plain key; a self-signed certificate
    (``ssh_identity == "plain"``): the plain key only. Sign requests are answered for any
    of the three forms.

Tokens while running
    Listing never touches a token: it returns lists built when something changed (a
    card came or went, a verdict changed, the inventory changed). Each card has its own
    lock, held for a signature (and its PIN prompt), so one card never stalls another
    or the listing. A background thread polls every ``poll_interval`` seconds: it lists
    the providers' slots (which shows removals without disturbing any session) and, while
    a card the agent wants is missing, re-initializes a provider (SoftHSM2 and some other
    modules only see newly inserted cards after C_Finalize/C_Initialize) **only when no
    card in that provider is logged in or busy**, because re-initializing ends every
    session of that provider. The insert-card prompt for a never-seen card is the one
    exception: the user asked, so it rescans once even if that ends other logins.

PIN policy
    The agent has no terminal: PINs come from askpass (``SSH_ASKPASS``; without a display
    set ``SSH_ASKPASS_REQUIRE=force``) through the tokens layer, one card per prompt.
    A login is kept ``pin_cache`` seconds from the moment it happened (0: logged out after
    each signature, so every signature asks). LOCK (``ssh-add -x``) logs out every card.
    A wrong PIN is never retried: the sign fails with the card's PIN state in words, and
    requests for that card in the next ``WRONG_PIN_HOLD`` seconds fail without asking
    (so a client trying two forms of one key cannot burn two tries). Keys with
    CKA_ALWAYS_AUTHENTICATE ask for the PIN again at each signature (context login).

``ssh-add -s PROVIDER`` / ``-e PROVIDER``
    ``-s`` loads the module (a configured provider: already in this process; any other
    module under /usr/lib or /usr/local/lib, as ssh-agent allows by default: checked
    without loading it, then loaded in a helper process, see
    :mod:`idm.identity.agent.providers`) and, when it holds exactly one card,
    logs that card in with the PIN ssh-add sent. With several cards the PIN is not used
    (it is never sent to a guess); each card asks through askpass at first use. What is
    offered is still only approved, validated identities; the agent logs why any other
    certificate on the card is not offered. ``-c`` makes its identities ask before each
    use, ``-t`` unloads the provider after that lifetime. ``-e`` unloads it: its cards'
    identities are withdrawn and their logins ended.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from idm.identity import sshwire as w
from idm.identity.agent.agentlog import log
from idm.identity.agent.gate import COMMAND, GateVerdict, ValidationGate
from idm.identity.agent.identities import (
    AgentIdentity,
    BaseIdentitySource,
    IdentityError,
    SocketKind,
)
from idm.identity.agent.protocol import Constraints
from idm.identity.agent.providers import CardSession, ProviderPool
from idm.identity.agent.selection import SelectableIdentity, Selection
from idm.identity.agent.server import askpass_confirm
from idm.identity.inventory.store import CertificateRecord, Inventory, TokenRecord
from idm.identity.tokens.errors import (
    ObjectNotFound,
    PinCancelled,
    PinError,
    PinIncorrect,
    PinLocked,
    PinUnavailable,
    ProviderError,
    TokenError,
    TokenNotFound,
    TokenNotPresent,
)
from idm.identity.tokens.module_file import open_module_file
from idm.identity.tokens.pin import PinProvider, PinRequest, PromptPin
from idm.identity.tokens.session import (
    KeyObject,
    TokenInfo,
    public_keys_equal,
)
from idm.identity.tokens.uri import TokenIdentity

POLL_INTERVAL = 2.0
INVENTORY_INTERVAL = 30.0
WRONG_PIN_HOLD = 3.0
BUSY_RESCAN_WAIT = 5.0  # how long an insert-card rescan waits for other cards to finish


def _real(path: str) -> str:
    return os.path.realpath(path)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except (x509.ExtensionNotFound, ValueError):
        return False


class _Card:
    """A card the inventory knows, and what the agent knows of it now."""

    def __init__(self, record: TokenRecord) -> None:
        self.record = record
        self.identity = TokenIdentity(record.manufacturer, record.model, record.serial,
                                      record.label)
        # "seen": the inventory recorded it present once, or this agent saw it.
        self.seen = record.state != "absent"
        self.present = False
        self.info: TokenInfo | None = None
        self.module: str | None = None  # real path of the provider it sits in
        self.session: CardSession | None = None
        self.lock = threading.Lock()  # one operation on this card at a time
        self.wrong_pin_at: float | None = None
        self.logout_pending = False
        self.ca_certs: tuple[x509.Certificate, ...] = ()
        self.inspected = False

    @property
    def name(self) -> str:
        return self.identity.label


@dataclass
class _Entry:
    """An approved certificate with a card: its key reference and cached agent blobs."""

    record: CertificateRecord
    certificate: x509.Certificate
    key: KeyObject
    plain_blob: bytes
    key_type: str  # "rsa" | "ec"
    _forms: dict[tuple[object, ...], tuple[AgentIdentity, ...]] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        return self.record.sha256

    @property
    def token_id(self) -> int | None:
        return self.record.token_id

    def forms(self, kind: SocketKind, verdict: GateVerdict, comment: str,
              confirm: bool) -> tuple[AgentIdentity, ...]:
        """The identities to list for ``kind`` (built once per chain/comment/flag)."""
        cache_key = (kind, verdict.chain, verdict.ssh_identity, comment, confirm)
        cached = self._forms.get(cache_key)
        if cached is not None:
            return cached
        plain = AgentIdentity(self.plain_blob, comment, confirm, handle=self)
        out: tuple[AgentIdentity, ...]
        if verdict.ssh_identity == "plain":
            out = (plain,)
        elif kind is SocketKind.STANDARD:
            # The anchor is the server's business; the client sends leaf + intermediates.
            chain = list(verdict.chain[:-1]) if len(verdict.chain) > 1 else [self.certificate]
            if not chain or chain[0] != self.certificate:
                chain = [self.certificate]
            out = (plain, AgentIdentity(w.x509_rfc6187_blob(chain), comment, confirm,
                                        handle=self))
        else:
            # PKIX-SSH's own agent lists RSA and EC certificates alike as raw DER.
            out = (AgentIdentity(w.x509_raw_der_blob(self.certificate), comment, confirm,
                                 handle=self), plain)
        if len(self._forms) > 16:
            self._forms.clear()
        self._forms[cache_key] = out
        return out


def _key_reference(record: CertificateRecord, cert: x509.Certificate,
                   token: TokenIdentity) -> tuple[KeyObject, str]:
    """The private key to sign with: found on the card by CKA_ID (label left open)."""
    public = cert.public_key()
    cka_id = bytes.fromhex(record.cka_id) if record.cka_id else b""
    if isinstance(public, rsa.RSAPublicKey):
        return KeyObject(token, "", cka_id, "private", "rsa", public.key_size, public), "rsa"
    if isinstance(public, ec.EllipticCurvePublicKey):
        return (KeyObject(token, "", cka_id, "private", "ec", public.key_size, public,
                          curve=public.curve.name), "ec")
    raise ValueError(f"a {type(public).__name__} key cannot sign through a token here")


class _OneShotPin:
    """The PIN ``ssh-add -s`` sent, for one card and one login; never for another card."""

    def __init__(self, token: TokenIdentity, pin: str) -> None:
        self.token = token
        self._pin: str | None = pin

    def __call__(self, request: PinRequest) -> str:
        pin, self._pin = self._pin, None
        if pin is None or request.token != self.token or request.context_specific:
            raise PinUnavailable(f"the PIN from ssh-add is not for card {request.token.label!r}")
        return pin


class _AskpassPin:
    """Askpass PIN prompts for the agent (no terminal), each one logged (never the PIN)."""

    def __init__(self, provider: PinProvider | None = None) -> None:
        self.provider = provider or PromptPin(interactive=False)

    def __call__(self, request: PinRequest) -> str:
        what = "PIN for this signature" if request.context_specific else "PIN"
        log.info("asking for the %s of card %r through askpass", what, request.token.label)
        return self.provider(request)


@dataclass
class TokenSourceSettings:
    """Tunables of :class:`TokenSource` (the CLI fills them from options and config)."""

    providers: Sequence[str] = ()
    pin_cache: int = 300
    only: Sequence[str] = ()
    poll_interval: float = POLL_INTERVAL
    refresh_interval: float = 300.0
    retry_interval: float = 60.0
    inventory_interval: float = INVENTORY_INTERVAL


class TokenSource(BaseIdentitySource):
    """Approved, validated identities on PKCS#11 cards; see the module docstring.

    ``start()`` loads the providers, reads the inventory, validates, and starts the
    token-poll and validation threads (call it in the process that serves: after a
    fork); ``refresh_now()`` asks both threads to run at once; ``close()`` stops them.
    """

    def __init__(
        self,
        inventory: Inventory,
        gate: ValidationGate,
        settings: TokenSourceSettings,
        *,
        pin_provider: PinProvider | None = None,
        insert_prompt: Callable[[str], bool] = askpass_confirm,
    ) -> None:
        self.inventory = inventory
        self.gate = gate
        self.settings = settings
        self.selection = Selection.parse(settings.only)
        self.pin_provider: PinProvider = _AskpassPin(pin_provider)
        self.insert_prompt = insert_prompt
        self._lock = threading.RLock()  # guards the maps below; never held for I/O
        self._cards: dict[int, _Card] = {}
        self._entries: dict[str, _Entry] = {}
        self._skipped: set[str] = set()  # certificates already logged as unusable
        self._provider_confirm: dict[str, bool] = {}
        self._provider_expiry: dict[str, float] = {}
        self._pool = ProviderPool()
        self._lists: dict[SocketKind, tuple[AgentIdentity, ...]] = {k: () for k in SocketKind}
        self._lists_until = 0.0
        self._stop = threading.Event()
        self._poll_wake = threading.Event()
        self._validate_wake = threading.Event()
        self._force_validate = False
        self._reload_wanted = False
        self._event_mark: int | None = None  # newest inventory event when last read
        self._threads: list[threading.Thread] = []
        self._poll_lock = threading.Lock()
        self.passes = 0  # completed validation passes (tests wait on it)
        self.polls = 0  # completed token polls

    # -- life cycle ------------------------------------------------------------------

    def start(self, *, threads: bool = True) -> None:
        """Load providers, read the inventory, poll, validate, and start the threads."""
        # A forked child must not share the parent's pooled database connections.
        self.inventory.engine.dispose(close=False)
        for path in self.settings.providers:
            try:
                self._pool.load_local(_real(path))
            except ProviderError as exc:
                log.warning("%s", exc)
        self._reload_inventory()
        self.poll()
        self._validate(force=True)
        now = time.time()
        usable = sum(1 for e in self._entries.values()
                     if (v := self.gate.get(e.sha256)) is not None and v.usable(now))
        log.info("%d approved certificate(s) validated: %d usable", len(self._entries), usable)
        if threads:
            for target, name in ((self._poll_loop, "idm-agent-tokens"),
                                 (self._validate_loop, "idm-agent-validation")):
                thread = threading.Thread(target=target, name=name, daemon=True)
                thread.start()
                self._threads.append(thread)

    def refresh_now(self) -> None:
        """Re-read the inventory, re-validate every identity afresh, and poll the cards."""
        self._force_validate = True
        self._validate_wake.set()
        self._poll_wake.set()

    def close(self) -> None:
        """Stop the threads and log out of every card."""
        self._stop.set()
        self._poll_wake.set()
        self._validate_wake.set()
        for thread in self._threads:
            thread.join(10)
        for card in list(self._cards.values()):
            self._logout(card, wait=1.0)
        self._pool.close()

    # -- the IdentitySource protocol ---------------------------------------------------

    def identities(self, kind: SocketKind) -> Sequence[AgentIdentity]:
        """The published list for ``kind``: no token I/O, no database, no validation."""
        if time.time() >= self._lists_until:
            self._publish()
        return self._lists[kind]

    def sign(self, identity: AgentIdentity, request: w.KeyBlob, data: bytes, flags: int) -> bytes:
        """Sign on the card, after the gate, with the scheme the request blob asks for."""
        entry = identity.handle
        if not isinstance(entry, _Entry):
            raise IdentityError("not a token identity")
        verdict = self.gate.get(entry.sha256)
        if verdict is None or not verdict.usable(time.time()):
            self._publish()
            raise IdentityError(self._withheld_reason(entry, verdict))
        card = self._cards.get(entry.token_id) if entry.token_id is not None else None
        if card is None:
            raise IdentityError(f"certificate {entry.record.subject} has no card in the inventory")
        try:
            scheme = w.signature_scheme(request, flags)
        except w.WireFormatError as exc:
            raise IdentityError(str(exc)) from None
        if scheme.key_type != ("rsa" if entry.key_type == "rsa" else "ecdsa") or not scheme.hash:
            raise IdentityError(f"a {entry.key_type} key cannot make a {scheme.name} signature")
        digest = hashlib.new(scheme.hash, data).digest()
        with card.lock:
            raw = self._sign_on_card(card, entry, digest, scheme.hash)
        if entry.key_type == "rsa":
            return w.rsa_signature_blob(scheme.name, raw)
        try:
            return w.ecdsa_signature_from_raw(scheme.name, raw, scheme.ecdsa_der)
        except w.WireFormatError as exc:
            raise IdentityError(
                f"card {card.name!r} returned a bad ECDSA signature: {exc}") from None

    def on_lock(self) -> None:
        """LOCK: log out of every card (the next signature after UNLOCK asks again)."""
        for card in list(self._cards.values()):
            self._logout(card, wait=2.0)
        log.info("agent locked: every card logged out")

    # -- the ProviderHook protocol --------------------------------------------------------

    def load_provider(self, path: str, pin: str, constraints: Constraints) -> None:
        """``ssh-add -s``: load the module, log its one card in with ``pin``, report.

        A configured provider is already loaded in this process and is re-activated. Any
        other module must pass :func:`~idm.identity.tokens.module_file.open_module_file`
        (an allowed folder, a sane file, ``C_GetFunctionList`` exported) and is loaded
        from the descriptor that check opened, in a helper process of its own.
        """
        configured = {_real(p) for p in self.settings.providers}
        try:
            real = _real(path)
            if real in configured:
                self._pool.load_local(real)
            else:
                real = self._pool.load_helper(open_module_file(path))
        except ProviderError as exc:
            raise IdentityError(str(exc)) from None
        with self._lock:
            self._provider_confirm[real] = constraints.confirm
            if constraints.lifetime:
                self._provider_expiry[real] = time.monotonic() + constraints.lifetime
            else:
                self._provider_expiry.pop(real, None)
        infos = self._tokens_of(real)
        if not infos:
            self._rescan([real], explicit=False)
            infos = self._tokens_of(real)
        if not infos:
            raise IdentityError(f"no token is present in provider {path}: insert a card")
        self.poll(rescan=False)
        known = {c.identity: c for c in self._cards.values()}
        if pin:
            if len(infos) > 1:
                log.warning(
                    "provider %s holds %d cards (%s): the PIN from ssh-add was not used, since "
                    "it cannot tell which card it is for; each card asks through askpass at "
                    "first use", path, len(infos), ", ".join(repr(i.label) for i in infos))
            elif infos[0].identity not in known:
                log.warning("the PIN from ssh-add was not used: card %r is not in the "
                            "inventory", infos[0].label)
            else:
                self._login_with(known[infos[0].identity], pin)
        offered = 0
        for info in infos:
            card = known.get(info.identity)
            if card is None:
                self._explain_unknown(info)
                continue
            self._inspect(card, blocking=True)
            offered += self._count_offered(card)
        self._publish()
        if offered == 0:
            raise IdentityError(
                f"no approved, valid identity on the card(s) in {path}; idm offers only "
                "certificates approved in the inventory (see `idm enroll`) and validated now"
            )

    def unload_provider(self, path: str) -> None:
        """``ssh-add -e``: withdraw the module's identities and log its cards out."""
        real = _real(path)
        with self._lock:
            if real not in self._pool.active:
                raise IdentityError(f"provider {path} is not loaded")
            self._provider_confirm.pop(real, None)
            self._provider_expiry.pop(real, None)
            cards = [c for c in self._cards.values() if c.module == real]
        for card in cards:
            self._logout(card, wait=2.0)
            with self._lock:
                card.present = False
                card.session = None
        self._pool.unload(real)
        self._publish()
        log.info("provider %s unloaded: %d card(s) withdrawn", path, len(cards))

    # -- providers --------------------------------------------------------------------

    def _tokens_of(self, real: str) -> list[TokenInfo]:
        try:
            return [i for i in self._pool.tokens() if _real(i.module.path) == real]
        except ProviderError as exc:
            log.warning("%s", exc)
            return []

    def _rescan(self, modules: Iterable[str], *, explicit: bool) -> list[str]:
        """Re-initialize providers so newly inserted cards show; returns those done.

        Only providers where no card is busy; unless ``explicit``, also only those where
        no card is logged in (re-initializing ends every session of the provider).
        """
        done: list[str] = []
        for real in modules:
            cards = [c for c in list(self._cards.values()) if c.present and c.module == real]
            if not explicit and any(c.session is not None and c.session.logged_in
                                    for c in cards):
                continue
            held = self._acquire_all(cards, BUSY_RESCAN_WAIT if explicit else 0.0)
            if held is None:
                log.debug("provider %s is busy: not re-initialized now", real)
                continue
            try:
                self._pool.reinitialize(real)
                done.append(real)
                for c in cards:
                    if c.session is not None and c.session.logged_in:
                        log.info("card %r: provider re-initialized to look for a card; its "
                                 "login ended", c.name)
            except ProviderError as exc:
                log.warning("%s", exc)
            finally:
                for c in held:
                    c.lock.release()
        return done

    @staticmethod
    def _acquire_all(cards: Sequence[_Card], wait: float) -> list[_Card] | None:
        deadline = time.monotonic() + wait
        while True:
            held: list[_Card] = []
            for c in cards:
                if not c.lock.acquire(blocking=False):
                    break
                held.append(c)
            else:
                return held
            for c in held:
                c.lock.release()
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    # -- inventory ----------------------------------------------------------------------

    def _inventory_changed(self) -> bool:
        """Whether an event was written since the inventory was last read (one cheap
        query, run at every poll: `idm enroll` in another terminal shows up in seconds)."""
        try:
            return self.inventory.latest_event_id() != self._event_mark
        except Exception:  # noqa: BLE001 - unreachable inventory: keep serving
            return False

    def _reload_inventory(self) -> bool:
        """Read tokens and approved certificates; True when the set changed."""
        try:
            self._event_mark = self.inventory.latest_event_id()
            tokens = self.inventory.tokens()
            approved = self.inventory.certificates(status="approved")
        except Exception as exc:  # noqa: BLE001 - keep serving what we have
            log.warning("cannot read the inventory (%s); serving what was read before", exc)
            return False
        with self._lock:
            for rec in tokens:
                card = self._cards.get(rec.id)
                if card is None:
                    self._cards[rec.id] = _Card(rec)
                else:
                    card.record = rec
                    card.seen = card.seen or rec.state != "absent"
            entries: dict[str, _Entry] = {}
            for rec in approved:
                old = self._entries.get(rec.sha256)
                if old is not None:
                    old.record = rec
                    entries[rec.sha256] = old
                    continue
                entry = self._make_entry(rec)
                if entry is not None:
                    entries[rec.sha256] = entry
            changed = set(entries) != set(self._entries)
            for sha in set(self._entries) - set(entries):
                log.info("certificate %s is no longer approved in the inventory: withdrawn",
                         self._entries[sha].record.subject)
            self._entries = entries
        self.gate.forget(set(entries))
        return changed

    def _make_entry(self, rec: CertificateRecord) -> _Entry | None:
        card = self._cards.get(rec.token_id) if rec.token_id is not None else None
        problem = None
        entry = None
        if card is None:
            problem = "it is not registered to a card (enroll it with --token)"
        else:
            try:
                cert = x509.load_der_x509_certificate(rec.der)
                key, key_type = _key_reference(rec, cert, card.identity)
                entry = _Entry(rec, cert, key, w.public_key_blob(cert.public_key()),  # type: ignore[arg-type]
                               key_type)
            except ValueError as exc:
                problem = str(exc)
        if problem is not None and rec.sha256 not in self._skipped:
            self._skipped.add(rec.sha256)
            log.warning("approved certificate %s (%s) is not offered: %s", rec.subject,
                        rec.sha256[:16], problem)
        return entry

    # -- polling cards ------------------------------------------------------------------

    def poll(self, *, rescan: bool = True) -> bool:
        """Notice removed and inserted cards; True when the published list may change."""
        with self._poll_lock:
            changed = self._poll(rescan)
        self.polls += 1
        return changed

    def _poll(self, rescan: bool) -> bool:
        changed = self._expire_providers()
        self._expire_logins()
        try:
            infos = self._pool.tokens()
        except ProviderError as exc:
            log.warning("%s", exc)
            return changed
        changed = self._apply_scan(infos) or changed
        if rescan:
            missing = [c for c in self._cards.values()
                       if not c.present and self._wanted(c)]
            if missing and self._pool.active:
                done = self._rescan(self._pool.active, explicit=False)
                if done:
                    try:
                        infos = self._pool.tokens()
                    except ProviderError as exc:
                        log.warning("%s", exc)
                        return changed
                    changed = self._apply_scan(infos) or changed
        for card in list(self._cards.values()):
            if card.present and not card.inspected:
                self._inspect(card, blocking=False)
        if changed:
            self._publish()
        return changed

    def _wanted(self, card: _Card) -> bool:
        """True when an approved identity on this card would be offered (--only counts)."""
        return any(
            e.token_id == card.record.id and (self.selection.everything or self.selection.matches(
                SelectableIdentity(card.identity, e.record.label, e.key.id or None,
                                   e.certificate.subject)))
            for e in list(self._entries.values())
        )

    def _apply_scan(self, infos: Sequence[TokenInfo]) -> bool:
        present: dict[TokenIdentity, TokenInfo] = {}
        for info in infos:
            present.setdefault(info.identity, info)
        changed = False
        for card in list(self._cards.values()):
            info = present.get(card.identity)
            if info is not None and (not card.present or card.module != _real(info.module.path)):
                self._arrived(card, info)
                changed = True
            elif info is None and card.present:
                self._left(card, "was removed")
                changed = True
            elif info is not None:
                card.info = info  # slot and PIN flags as of now
        return changed

    def _arrived(self, card: _Card, info: TokenInfo) -> None:
        session = self._pool.open(info, self.pin_provider)
        first = not card.seen
        with self._lock:
            card.info = info
            card.module = _real(info.module.path)
            card.session = session
            card.present = True
            card.seen = True
        log.info("card %r is present (slot %d of %s)%s", card.name, info.slot_id,
                 info.module.path, "; first time seen" if first else "")
        if first:
            try:
                self.inventory.record_token(
                    card.identity.manufacturer, card.identity.model, card.identity.serial,
                    card.identity.label, module_path=info.module.path, command=COMMAND,
                )
            except Exception as exc:  # noqa: BLE001 - the inventory may be busy
                log.warning("could not record card %r as seen: %s", card.name, exc)

    def _left(self, card: _Card, why: str) -> None:
        with self._lock:
            was_present = card.present
            card.present = False
        if was_present:
            n = sum(1 for e in self._entries.values() if e.token_id == card.record.id)
            log.warning("card %r %s: its %d identit%s withdrawn until it is inserted again",
                        card.name, why, n, "y is" if n == 1 else "ies are")
        self._logout(card, wait=0.0)

    def _inspect(self, card: _Card, *, blocking: bool) -> None:
        """Read the card's certificates once: CA certificates help build chains; say why
        any other certificate on it is not offered."""
        if not card.lock.acquire(blocking=blocking):
            return
        try:
            session = card.session
            if session is None:
                return
            try:
                objects = session.certificates()
            except TokenError as exc:
                log.debug("card %r: cannot read its certificates: %s", card.name, exc)
                return
            card.inspected = True
            card.ca_certs = tuple(o.certificate for o in objects if _is_ca(o.certificate))
            for obj in objects:
                if _is_ca(obj.certificate):
                    continue
                self._explain(card.name, obj.label, hashlib.sha256(obj.der).hexdigest(),
                              obj.subject)
        finally:
            card.lock.release()

    def _explain(self, card_name: str, label: str, sha: str, subject: str) -> None:
        if sha in self._entries:
            return
        try:
            rec = self.inventory.certificate(sha)
        except Exception:  # noqa: BLE001 - only an explanation
            rec = None
        if rec is None:
            why = "it is not in the inventory (enroll it: idm enroll --token URI)"
        else:
            why = f"its inventory status is {rec.status}" + (
                f" ({rec.status_reason})" if rec.status_reason else "")
        log.info("card %r: certificate %r (%s) is not offered: %s; idm offers only "
                 "approved, validated identities", card_name, label or subject, subject, why)

    def _explain_unknown(self, info: TokenInfo) -> None:
        try:
            session = self._pool.open(info)
            objects = session.certificates()
        except TokenError as exc:
            log.info("card %r is not in the inventory (%s)", info.label, exc)
            return
        if not objects:
            log.info("card %r is not in the inventory and holds no certificate: nothing to "
                     "offer", info.label)
        for obj in objects:
            if not _is_ca(obj.certificate):
                self._explain(info.label, obj.label, hashlib.sha256(obj.der).hexdigest(),
                              obj.subject)

    def _count_offered(self, card: _Card) -> int:
        lists = self._build_lists(time.time())[0]
        return sum(1 for i in lists[SocketKind.STANDARD]
                   if isinstance(i.handle, _Entry) and i.handle.token_id == card.record.id)

    # -- PIN cache ------------------------------------------------------------------------

    def _expire_logins(self) -> None:
        if self.settings.pin_cache <= 0:
            return
        now = time.monotonic()
        for card in list(self._cards.values()):
            s = card.session
            if s is not None and s.logged_in and s.login_time is not None and (
                now - s.login_time >= self.settings.pin_cache
            ):
                if card.lock.acquire(blocking=False):
                    try:
                        s.logout()
                        log.info("card %r: PIN cache time (%ds) is over: logged out",
                                 card.name, self.settings.pin_cache)
                    finally:
                        card.lock.release()

    def _expire_providers(self) -> bool:
        now = time.monotonic()
        expired = [p for p, t in list(self._provider_expiry.items()) if now >= t]
        for real in expired:
            log.info("provider %s: its lifetime is over", real)
            try:
                self.unload_provider(real)
            except IdentityError:
                pass
        return bool(expired)

    def _logout(self, card: _Card, *, wait: float) -> None:
        session = card.session
        if session is None:
            return
        if card.lock.acquire(timeout=wait) if wait > 0 else card.lock.acquire(blocking=False):
            try:
                session.logout()
                card.logout_pending = False
            finally:
                card.lock.release()
        else:
            card.logout_pending = True  # the signature in progress logs out when done

    def _login_with(self, card: _Card, pin: str) -> None:
        with card.lock:
            session = card.session
            if session is None:
                raise IdentityError(f"card {card.name!r} is not inserted")
            session.pin_provider = _OneShotPin(card.identity, pin)
            try:
                session.login()
            except PinError as exc:
                raise IdentityError(self._pin_words(card, exc)) from None
            except TokenError as exc:
                raise IdentityError(f"card {card.name!r}: {exc}") from None
            finally:
                session.pin_provider = self.pin_provider
        log.info("card %r logged in with the PIN from ssh-add", card.name)

    # -- signing ---------------------------------------------------------------------------

    def _sign_on_card(self, card: _Card, entry: _Entry, digest: bytes, hash_name: str) -> bytes:
        """Under ``card.lock``: find the card (or ask for it), apply the PIN policy, sign."""
        session = self._session_for_sign(card)
        if card.wrong_pin_at is not None and time.monotonic() - card.wrong_pin_at < WRONG_PIN_HOLD:
            raise IdentityError(f"a wrong PIN was just entered for card {card.name!r}; not asking "
                                "again so soon (try again in a few seconds)")
        if self.settings.pin_cache > 0 and session.logged_in and session.login_time is not None \
                and time.monotonic() - session.login_time >= self.settings.pin_cache:
            session.logout()
        try:
            try:
                return session.sign_digest(entry.key, digest, hash_name)
            except ObjectNotFound:
                # CKA_ID of the certificate differs from its key's: find the key by its
                # public key once (after login) and remember it. Not a PIN retry.
                entry.key = self._find_key(session, entry)
                return session.sign_digest(entry.key, digest, hash_name)
        except PinError as exc:
            if isinstance(exc, PinIncorrect):
                card.wrong_pin_at = time.monotonic()
            raise IdentityError(self._pin_words(card, exc)) from None
        except (TokenNotPresent, TokenNotFound):
            self._left(card, "is not inserted any more")
            self._publish()
            raise IdentityError(f"card {card.name!r} is not inserted: insert it (any reader) "
                                "and try again") from None
        except TokenError as exc:
            raise IdentityError(f"card {card.name!r}: {exc}") from None
        finally:
            if self.settings.pin_cache <= 0 or card.logout_pending:
                card.logout_pending = False
                session.logout()

    def _find_key(self, session: CardSession, entry: _Entry) -> KeyObject:
        for key in session.keys("private", login=True):
            if public_keys_equal(key.public_key, entry.key.public_key):
                return key
        raise ObjectNotFound(f"no private key for {entry.record.subject} on the card")

    def _session_for_sign(self, card: _Card) -> CardSession:
        if card.present and card.session is not None:
            if card.module not in self._pool.active:
                raise IdentityError(f"card {card.name!r} is in an unloaded provider")
            return card.session
        if card.seen:
            raise IdentityError(f"card {card.name!r} is not inserted: insert it (any reader) "
                                "and try again")
        prompt = (f"Insert card {card.name!r} (serial {card.identity.serial}) to use its "
                  "identity, then confirm.")
        log.info("card %r has never been inserted: asking for it through askpass", card.name)
        if not self.insert_prompt(prompt):
            raise IdentityError(f"card {card.name!r} is not inserted (the insert-card prompt "
                                "was declined or no SSH_ASKPASS is set)")
        self._rescan(self._pool.active, explicit=True)
        try:
            infos = self._pool.tokens()
        except ProviderError as exc:
            raise IdentityError(str(exc)) from None
        info = next((i for i in infos if i.identity == card.identity), None)
        if info is None:
            raise IdentityError(f"card {card.name!r} is still not inserted (looked once after "
                                "the prompt)")
        self._arrived(card, info)
        self._publish()
        assert card.session is not None
        return card.session

    @staticmethod
    def _pin_words(card: _Card, exc: PinError) -> str:
        if isinstance(exc, PinLocked):
            return f"PIN locked on card {card.name!r}: {exc}"
        if isinstance(exc, PinIncorrect):
            return f"wrong PIN for card {card.name!r}, not tried again: {exc}"
        if isinstance(exc, PinCancelled):
            return f"PIN entry for card {card.name!r} cancelled: {exc}"
        if isinstance(exc, PinUnavailable):
            return f"no PIN for card {card.name!r}: {exc}"
        return f"PIN problem on card {card.name!r}: {exc}"

    def _withheld_reason(self, entry: _Entry, verdict: GateVerdict | None) -> str:
        if verdict is None:
            return f"certificate {entry.record.subject} is not validated yet"
        if not verdict.valid:
            return f"certificate {verdict.status}: {verdict.reason}"
        return (f"certificate {entry.record.subject}: its validation is stale (revocation "
                "status could not be refreshed)")

    # -- validation --------------------------------------------------------------------------

    def _validate(self, *, force: bool) -> bool:
        now = time.time()
        changed = False
        for entry in list(self._entries.values()):
            if self._stop.is_set():
                break
            if not force and not self.gate.due(entry.sha256, now):
                continue
            before = self.gate.get(entry.sha256)
            card = self._cards.get(entry.token_id) if entry.token_id is not None else None
            after = self.gate.check(entry.record, card.ca_certs if card else ())
            if before is None or before.valid != after.valid or before.chain != after.chain:
                changed = True
            if after.status in ("revoked", "expired"):
                with self._lock:
                    self._entries.pop(entry.sha256, None)
                changed = True
        self.passes += 1
        if changed:
            self._publish()
        return changed

    def _validate_loop(self) -> None:
        next_inventory = time.monotonic() + self.settings.inventory_interval
        while not self._stop.is_set():
            nxt = self.gate.next_due()
            wait = self.settings.refresh_interval if nxt is None else nxt - time.time()
            wait = min(max(wait, 0.5), next_inventory - time.monotonic(), 60.0)
            self._validate_wake.wait(max(wait, 0.0))
            self._validate_wake.clear()
            if self._stop.is_set():
                break
            force, self._force_validate = self._force_validate, False
            reload, self._reload_wanted = self._reload_wanted, False
            try:
                if force or reload or time.monotonic() >= next_inventory:
                    if self._reload_inventory():
                        self._publish()  # withdrawn identities go at once
                    next_inventory = time.monotonic() + self.settings.inventory_interval
                self._validate(force=force)
            except Exception:  # a bug must not end validation for the agent's lifetime
                log.exception("validation pass failed")

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._poll_wake.wait(self.settings.poll_interval)
            self._poll_wake.clear()
            if self._stop.is_set():
                break
            try:
                if self._inventory_changed():
                    self._reload_wanted = True
                    self._validate_wake.set()
                self.poll()
            except Exception:  # a bug must not end polling for the agent's lifetime
                log.exception("token poll failed")

    # -- publishing ------------------------------------------------------------------------

    def _build_lists(
        self, now: float
    ) -> tuple[dict[SocketKind, tuple[AgentIdentity, ...]], float]:
        out: dict[SocketKind, list[AgentIdentity]] = {k: [] for k in SocketKind}
        until = float("inf")
        with self._lock:
            # A stable order (card, then object label, then subject): what ssh tries first
            # does not depend on the order the card or the inventory happened to list them.
            entries = sorted(self._entries.values(), key=self._order)
            cards = dict(self._cards)
            active = set(self._pool.active)
            confirm = dict(self._provider_confirm)
        for entry in entries:
            card = cards.get(entry.token_id) if entry.token_id is not None else None
            if card is None:
                continue
            if card.present:
                if card.module not in active:
                    continue
                suffix = ""
                needs_confirm = confirm.get(card.module or "", False)
            elif not card.seen and active:
                suffix = ", not inserted yet"
                needs_confirm = False
            else:
                continue
            verdict = self.gate.get(entry.sha256)
            if verdict is None or not verdict.usable(now):
                continue
            if not self.selection.everything and not self.selection.matches(SelectableIdentity(
                card.identity, entry.record.label, entry.key.id or None,
                entry.certificate.subject,
            )):
                continue
            if verdict.fresh_until is not None:
                until = min(until, verdict.fresh_until)
            comment = f"{entry.record.subject} (card {card.name!r}{suffix})"
            for kind in SocketKind:
                out[kind].extend(entry.forms(kind, verdict, comment, needs_confirm))
        return {k: tuple(v) for k, v in out.items()}, until

    def _order(self, entry: _Entry) -> tuple[str, str, str]:
        card = self._cards.get(entry.token_id) if entry.token_id is not None else None
        return (card.name if card else "", entry.record.label or "", entry.record.subject)

    def _publish(self) -> None:
        now = time.time()
        lists, until = self._build_lists(now)
        # Re-publish at least every poll interval so a missed change cannot stick.
        self._lists = lists
        self._lists_until = min(until, now + max(self.settings.poll_interval, 1.0))
