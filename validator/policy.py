"""Validation policy: certificate purpose, revocation mode, caps and freshness limits."""

from __future__ import annotations

import math
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
# Named curves accepted by default (cryptography's names); explicit-parameter curves never.
DEFAULT_CURVES = ("secp256r1", "secp384r1", "secp521r1")
CURVES = ("secp256r1", "secp384r1", "secp521r1", "secp256k1", "brainpoolP256r1",
          "brainpoolP384r1", "brainpoolP512r1")
WEAK_HASHES = ("md2", "md5", "sha1")


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
    time_limit: wall-clock limit for the whole validation, revocation fetches included;
        status that has not come when it is reached is unknown.
    max_intermediates / max_pool: caps on path length and on the untrusted pool.
    ocsp_url: responder used for certificates whose AIA names none.
    ocsp_max_age: a cached or fetched OCSP response older than this (seconds since its
        thisUpdate) is stale even if its nextUpdate lies ahead.
    offline: use only cached or supplied revocation data, never the network.
    min_rsa_bits / curves / allow_dsa: the key policy, applied to every key of the path
        (the trust anchor's too) and to CRL and OCSP signers: RSA keys below
        `min_rsa_bits`, EC keys on a curve not in `curves` (explicit curve parameters
        always) and DSA keys (unless `allow_dsa`) are refused.
    allow_sha1: accept SHA-1 (MD5 and MD2 never) in the signatures of the path's
        certificates below the anchor and of CRLs.
    """

    purpose: str = "ssh-client"
    client_ekus: tuple[str, ...] = DEFAULT_CLIENT_EKUS
    revocation: str = HARD_FAIL
    budget_seconds: float = 5.0
    time_limit: float = 30.0
    max_intermediates: int = 8
    max_pool: int = 64
    ocsp_url: str | None = None
    ocsp_max_age: int = 86400
    offline: bool = False
    min_rsa_bits: int = 2048
    curves: tuple[str, ...] = DEFAULT_CURVES
    allow_dsa: bool = False
    allow_sha1: bool = False

    def __post_init__(self) -> None:
        if self.purpose not in PURPOSES:
            raise PolicyError(f"unknown purpose {self.purpose!r}: use one of {', '.join(PURPOSES)}")
        if self.revocation not in REVOCATION_MODES:
            raise PolicyError(
                f"unknown revocation policy {self.revocation!r}: "
                f"use one of {', '.join(REVOCATION_MODES)}"
            )
        if not (isinstance(self.budget_seconds, int | float)
                and math.isfinite(self.budget_seconds) and 0 < self.budget_seconds <= 3600):
            raise PolicyError("budget_seconds must be a number of seconds in (0, 3600]")
        if not (isinstance(self.time_limit, int | float)
                and math.isfinite(self.time_limit) and 0 < self.time_limit <= 86400):
            raise PolicyError("time_limit must be a number of seconds in (0, 86400]")
        for cap, value, top in (("max_intermediates", self.max_intermediates, 64),
                                ("max_pool", self.max_pool, 100_000),
                                ("min_rsa_bits", self.min_rsa_bits, 16384)):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top:
                raise PolicyError(f"{cap} must be a whole number from 0 to {top}")
        unknown = sorted(set(self.curves) - set(CURVES))
        if unknown:
            raise PolicyError(
                f"unknown curve {unknown[0]!r}: use some of {', '.join(CURVES)}"
            )

    def key_problem(self, public_key: object) -> str | None:
        """Why the key policy refuses `public_key` (a `cryptography` public key), or None."""
        from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

        if isinstance(public_key, rsa.RSAPublicKey):
            if public_key.key_size < self.min_rsa_bits:
                return (
                    f"RSA key of {public_key.key_size} bits is below the key policy's "
                    f"minimum of {self.min_rsa_bits}"
                )
            return None
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            if public_key.curve.name not in self.curves:
                return f"EC curve {public_key.curve.name} is not allowed by the key policy"
            return None
        if isinstance(public_key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            return None
        if isinstance(public_key, dsa.DSAPublicKey):
            return None if self.allow_dsa else "DSA keys are refused by the key policy"
        return f"key type {type(public_key).__name__} is not allowed by the key policy"

    def hash_problem(self, hash_name: str | None, what: str) -> str | None:
        """Why the key policy refuses a signature with hash `hash_name` on `what`, or None."""
        if hash_name in WEAK_HASHES and not (hash_name == "sha1" and self.allow_sha1):
            label = "SHA-1" if hash_name == "sha1" else hash_name.upper()
            return f"{what} is signed with {label}, refused by the key policy"
        return None


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
