"""Exceptions of idm.validator: each carries a one-line message for the user."""

from __future__ import annotations

# Not typing.TYPE_CHECKING: the sshd helper reads files through inputfile.py, which
# imports this module, and importing typing would cost every login ~3 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class ValidatorError(Exception):
    """Base class of the validator's own errors."""


class MalformedInputError(ValidatorError, ValueError):
    """A certificate, CRL, OCSP response or bundle could not be parsed."""


class FetchError(ValidatorError):
    """An HTTP download of a CRL or an OCSP exchange failed (timeout, size, status...)."""



def __getattr__(name: str) -> Any:
    # PARSE_ERRORS: what `cryptography` raises on malformed DER, ValueError and
    # InvalidVersion (which is not a ValueError). Built on first use, so that a check
    # answered from the inventory's caches does not import `cryptography` at all.
    if name == "PARSE_ERRORS":
        from cryptography.x509 import InvalidVersion

        value: tuple[type[Exception], ...] = (ValueError, InvalidVersion)
        globals()[name] = value
        return value
    raise AttributeError(name)
