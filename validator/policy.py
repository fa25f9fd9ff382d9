"""Validation policy: certificate purpose, revocation mode, caps and freshness limits."""

from __future__ import annotations

from dataclasses import dataclass

from idm.validator.errors import ValidatorError

PURPOSES = ("ssh-client", "any")

REQUIRE = "require"
HARD_FAIL = "hard-fail"
SOFT_FAIL = "soft-fail"
OFF = "off"
REVOCATION_MODES = (REQUIRE, HARD_FAIL, SOFT_FAIL, OFF)

CLIENT_AUTH = "1.3.6.1.5.5.7.3.2"
SECURE_SHELL_CLIENT = "1.3.6.1.5.5.7.3.21"
ANY_EXTENDED_KEY_USAGE = "2.5.29.37.0"
OCSP_SIGNING = "1.3.6.1.5.5.7.3.9"
DEFAULT_CLIENT_EKUS = (CLIENT_AUTH, SECURE_SHELL_CLIENT, ANY_EXTENDED_KEY_USAGE)


class PolicyError(ValidatorError, ValueError):
    """A policy value is not one of the accepted ones."""


@dataclass(frozen=True)
class Policy:
    """How strictly to validate.

    purpose: "ssh-client" (keyUsage, when present, must allow digitalSignature;
        extendedKeyUsage, when present, must contain one of `client_ekus`) or "any".
    revocation: "require" (every certificate below the anchor needs fresh status),
        "hard-fail" (status needed wherever the certificate names a CRL/OCSP source or a
        CRL for its issuer is held; unobtainable status invalidates), "soft-fail"
        (unobtainable status is a warning) or "off". In every mode but "off", a serial
        listed in any CRL held for its issuer is revoked.
    budget_seconds: wall-clock budget for path building and path validation.
    max_intermediates / max_pool: caps on path length and on the untrusted pool.
    ocsp_url: responder used for certificates whose AIA names none.
    ocsp_max_age: a cached or fetched OCSP response older than this (seconds since its
        thisUpdate) is stale even if its nextUpdate lies ahead.
    offline: use only cached or supplied revocation data, never the network.
    """

    purpose: str = "ssh-client"
    client_ekus: tuple[str, ...] = DEFAULT_CLIENT_EKUS
    revocation: str = HARD_FAIL
    budget_seconds: float = 5.0
    max_intermediates: int = 8
    max_pool: int = 64
    ocsp_url: str | None = None
    ocsp_max_age: int = 86400
    offline: bool = False

    def __post_init__(self) -> None:
        if self.purpose not in PURPOSES:
            raise PolicyError(f"unknown purpose {self.purpose!r}: use one of {', '.join(PURPOSES)}")
        if self.revocation not in REVOCATION_MODES:
            raise PolicyError(
                f"unknown revocation policy {self.revocation!r}: "
                f"use one of {', '.join(REVOCATION_MODES)}"
            )
        if self.budget_seconds <= 0 or self.max_intermediates < 0 or self.max_pool < 0:
            raise PolicyError("budget_seconds must be > 0 and the caps must not be negative")


def purpose_problem(cert: object, policy: Policy) -> str | None:
    """Why `cert` (an x509.Certificate) does not fit the policy's purpose, or None."""
    from cryptography import x509

    assert isinstance(cert, x509.Certificate)
    if policy.purpose == "any":
        return None
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        ku = None
    if ku is not None and not ku.digital_signature:
        return "purpose ssh-client: keyUsage does not allow digitalSignature"
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return None
    allowed = set(policy.client_ekus)
    if not any(oid.dotted_string in allowed for oid in eku):
        return "purpose ssh-client: extendedKeyUsage has none of " + ", ".join(sorted(allowed))
    return None
