"""What every command shares: the configuration, the inventory (opened on first use)."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from idm.cli.output import UserError
from idm.identity.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from idm.identity.inventory.store import Inventory


@dataclass
class AppContext:
    config_path: str | None = None
    db_option: str | None = None
    verbose: bool = False
    _config: Config | None = field(default=None, repr=False)
    _inventory: Inventory | None = field(default=None, repr=False)

    @property
    def config(self) -> Config:
        if self._config is None:
            try:
                self._config = load_config(self.config_path)
            except ConfigError as exc:
                raise UserError(str(exc)) from None
        return self._config

    @property
    def db_url(self) -> str | None:
        """--db, then IDM_DB, then the configuration's `db`, else the default SQLite file."""
        return self.db_option or os.environ.get("IDM_DB") or self.config.db

    def inventory(self, *, create: bool = False) -> Inventory:
        """The inventory, opened on first use.

        A database named by --db, IDM_DB or the configuration's `db` that holds no
        inventory (a typo) is refused, except by the commands that record identities or
        authorizations (create=True). The default location is created on first use.
        """
        if self._inventory is None:
            from idm.identity.inventory.store import InventoryError, open_inventory

            named = self.db_url is not None
            try:
                self._inventory = open_inventory(self.db_url, create=create or not named)
            except InventoryError as exc:
                raise UserError(str(exc)) from None
        return self._inventory

    def close(self) -> None:
        if self._inventory is not None:
            self._inventory.close()
            self._inventory = None


def command_line() -> str:
    """The command being run, for event rows ("by which command"); PIN values redacted."""
    words: list[Any] = ["idm", *sys.argv[1:]]
    line = " ".join(str(w) for w in words)
    return re.sub(r"(pin-value=)[^&;\s]*", r"\1REDACTED", line)[:500]
