"""The inventory of tokens, certificates, revocation data and events.

Importing this package is cheap; the SQLAlchemy-backed API (``Inventory``, the records,
``InventoryError``) is loaded from ``store`` on first use.
"""

from typing import Any

TOKEN_STATES = ("present", "absent", "retired")
CERT_STATUSES = ("pending", "approved", "rejected", "revoked", "expired", "superseded")

__all__ = ["CertificateRecord", "EventRecord", "Inventory", "InventoryError", "TokenRecord"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from idm.identity.inventory import store

        return getattr(store, name)
    raise AttributeError(name)
