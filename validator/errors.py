"""Exceptions of idm.validator: each carries a one-line message for the user."""

from cryptography.x509 import InvalidVersion


class ValidatorError(Exception):
    """Base class of the validator's own errors."""


class MalformedInputError(ValidatorError, ValueError):
    """A certificate, CRL, OCSP response or bundle could not be parsed."""


class FetchError(ValidatorError):
    """An HTTP download of a CRL or an OCSP exchange failed (timeout, size, status...)."""


# What `cryptography` raises on malformed DER: ValueError, and InvalidVersion (which is
# not a ValueError).
PARSE_ERRORS: tuple[type[Exception], ...] = (ValueError, InvalidVersion)
