"""The PKCS#11 providers the agent uses, and in which process each one runs.

* **Configured** providers (``[tokens] providers``: chosen by the user in idm's own
  configuration) are loaded in the agent's process at start, as every idm command loads
  them, and stay loaded; ``ssh-add -e`` only deactivates them.
* **Client-requested** providers (``ssh-add -s PATH`` naming a module that is not
  configured) are checked without being loaded (:mod:`idm.identity.tokens.module_file`)
  and then loaded in a helper process of their own
  (:mod:`idm.identity.agent.pkcs11_helper`); ``ssh-add -e`` and the agent's exit stop it.

:class:`ProviderPool` hides the difference from the token source: ``tokens()`` lists
the tokens of every active provider (a failing helper is logged and skipped, so one
broken module does not hide the others' cards), ``open()`` returns a session of the
right kind for a token, ``reinitialize()`` rescans one provider.
"""

from __future__ import annotations

import threading
from typing import Protocol

from idm.identity.agent.agentlog import log
from idm.identity.agent.helper_provider import HelperProvider, HelperSession
from idm.identity.tokens.errors import ProviderError
from idm.identity.tokens.module_file import ModuleFile
from idm.identity.tokens.pin import PinProvider
from idm.identity.tokens.session import (
    CertificateObject,
    KeyObject,
    ProviderSet,
    TokenInfo,
    TokenSession,
    reinitialize_loaded,
)


class CardSession(Protocol):
    """What the token source uses of a session, in-process or in a helper."""

    logged_in: bool
    login_time: float | None
    pin_provider: PinProvider | None

    def login(self) -> None:
        """Log in (asks the PIN provider)."""

    def logout(self) -> None:
        """End the login."""

    def certificates(self) -> list[CertificateObject]:
        """The card's certificates."""
        ...

    def keys(self, key_class: str = "private", *, login: bool = False) -> list[KeyObject]:
        """The card's keys."""
        ...

    def sign_digest(self, key: KeyObject, digest: bytes, hash_name: str) -> bytes:
        """Sign a digest on the card."""
        ...


class ProviderPool:
    """Active providers by resolved path, in the order they were loaded."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # held from "is a helper running?" to its registration, so that two `ssh-add -s`
        # of one module start one helper (not self._lock: tokens() must not wait a start)
        self._load_lock = threading.Lock()
        self._order: list[str] = []
        self._helpers: dict[str, HelperProvider] = {}
        self._local = ProviderSet(rescan_on_miss=False)

    @property
    def active(self) -> list[str]:
        """Resolved paths of the active providers, in load order."""
        with self._lock:
            return list(self._order)

    def load_local(self, real: str) -> None:
        """Load (once per process) and activate a configured provider in this process."""
        ProviderSet([real], rescan_on_miss=False)  # raises ProviderError naming it
        with self._lock:
            if real not in self._order:
                self._order.append(real)
            self._local = self._local_set()

    def load_helper(self, module: ModuleFile) -> str:
        """Start a helper for a checked module file (unless one serves it); its path."""
        real = module.path
        with self._load_lock:
            with self._lock:
                running = self._helpers.get(real)
            if running is not None and running.proc.poll() is None:
                module.close()  # already served: nothing new is loaded
            else:
                if running is not None:
                    running.close()  # its helper exited: start a new one
                helper = HelperProvider(module)  # closes the module file; raises ProviderError
                with self._lock:
                    self._helpers[real] = helper
        with self._lock:
            if real not in self._order:
                self._order.append(real)
        return real

    def unload(self, real: str) -> None:
        """Deactivate a provider; a helper's process is stopped."""
        with self._lock:
            if real in self._order:
                self._order.remove(real)
            helper = self._helpers.pop(real, None)
            self._local = self._local_set()
        if helper is not None:
            helper.close()

    def _local_set(self) -> ProviderSet:
        ps = ProviderSet(rescan_on_miss=False)
        for real in self._order:
            if real not in self._helpers:
                ps.add(real)
        return ps

    def tokens(self) -> list[TokenInfo]:
        """Tokens of every active provider (configured ones first, as loaded)."""
        with self._lock:
            local, helpers = self._local, [self._helpers[r] for r in self._order
                                           if r in self._helpers]
        out = local.tokens()
        for helper in helpers:
            try:
                out.extend(helper.tokens())
            except ProviderError as exc:
                log.warning("%s", exc)
        return out

    def open(self, info: TokenInfo, pin: PinProvider | None = None) -> CardSession:
        """A session on ``info``'s token, in the process its provider runs in."""
        helper = self._helpers.get(info.module.path)
        if helper is not None:
            session: TokenSession | HelperSession = helper.open(info, pin)
        else:
            session = self._local.open(info, pin)
        return session

    def reinitialize(self, real: str) -> None:
        """Re-initialize one provider so newly inserted cards show (ends its logins)."""
        helper = self._helpers.get(real)
        if helper is not None:
            helper.reinitialize()
        else:
            reinitialize_loaded(real)

    def close(self) -> None:
        """Stop every helper (the agent is exiting)."""
        with self._lock:
            helpers = list(self._helpers.values())
            self._helpers.clear()
            self._order.clear()
        for helper in helpers:
            helper.close()
