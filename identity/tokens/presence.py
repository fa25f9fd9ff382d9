"""Which of the inventory's tokens are in a reader now, and recording what was seen.

`scan_presence()` asks the loaded PKCS#11 providers for their tokens once and answers,
per inventory token: ``yes`` (in a reader now), ``no`` (its provider is loaded and it is
not there) or ``unknown`` (its provider is not loaded here, or it was registered from a
certificate file with `idm enroll --cert` and no scan has found it yet). What it saw is
written back: a token found gets ``last_seen`` = now (an absent one becomes present,
with an event); a token not found becomes ``absent`` (with an event). A retired token
keeps its state. So the inventory's state is "as last seen", and ``last_seen`` says when
that was (for a card registered from a file and never seen: when it was registered).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from idm.identity.inventory.store import Inventory, TokenRecord
from idm.identity.tokens.session import ProviderSet
from idm.identity.tokens.uri import TokenIdentity

YES, NO, UNKNOWN = "yes", "no", "unknown"


@dataclass(frozen=True)
class Presence:
    """One inventory token and whether it is in a reader now."""

    token: TokenRecord
    present: str  # YES, NO or UNKNOWN

    def as_dict(self) -> dict[str, object]:
        return {**self.token.as_dict(), "present_now": self.present}


def identity_of(record: TokenRecord) -> TokenIdentity:
    return TokenIdentity(record.manufacturer, record.model, record.serial, record.label)


def _real(path: str) -> str:
    return os.path.realpath(path)


def scan_presence(
    inventory: Inventory, providers: ProviderSet, *, command: str | None = None
) -> list[Presence]:
    """Scan the providers once (re-initialized, so new and pulled cards show), record what
    was seen, and return the inventory's tokens with their presence (see module doc)."""
    seen = {info.identity for info in providers.tokens(rescan=True)}
    loaded = {_real(m.path) for m in providers.modules}
    result: list[Presence] = []
    for record in inventory.tokens():
        if identity_of(record) in seen:
            present = YES
            inventory.mark_token_seen(record.id, command=command)
        elif record.module_path is not None and _real(record.module_path) in loaded:
            present = NO
            if record.state == "present":
                inventory.set_token_state(record.id, "absent", command=command)
        else:
            present = UNKNOWN
        result.append(Presence(inventory.token(record.id) or record, present))
    return result
