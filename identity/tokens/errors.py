"""Exceptions of the token layer. Every message is one line: what is wrong, what to do.

The CLI turns these into `idm: error: …`; the agent into a refusal with the same reason,
so "agent refused operation" never hides a locked PIN, a missing card or a bad provider.
"""

from __future__ import annotations


class TokenError(Exception):
    """Base class of every error raised by `idm.identity.tokens`."""


class ProviderError(TokenError):
    """A PKCS#11 module (provider) could not be loaded or initialized."""


class TokenNotFound(TokenError):
    """No present token matches the requested URI (the card is out, or the URI is wrong)."""


class AmbiguousToken(TokenError):
    """The URI matches more than one token; a PIN is never sent to a guess."""


class TokenNotPresent(TokenError):
    """The token was removed while in use (CKR_DEVICE_REMOVED, CKR_TOKEN_NOT_PRESENT)."""


class ObjectNotFound(TokenError):
    """No certificate or key on the token matches the request."""


class TokenOperationError(TokenError):
    """The token refused or failed an operation (sign, generate, store)."""


class PinError(TokenError):
    """Base class of PIN problems (never carries the PIN itself)."""


class PinIncorrect(PinError):
    """C_Login said the PIN is wrong. idm does not try again on its own."""


class PinLocked(PinError):
    """The user PIN is locked (too many wrong PINs); it must be unblocked with the SO PIN."""


class PinUnavailable(PinError):
    """No way to ask for a PIN: no TTY, no askpass, no pin-source/pin-value."""


class PinCancelled(PinError):
    """The user cancelled the PIN prompt (askpass exited non-zero, or EOF on the TTY)."""
