"""The result of a validation: `Verdict`, its statuses and its revocation evidence.

A verdict always says which rule decided (`reason`, one line), so a denied login or a
hidden identity can be explained to the user.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # not imported at run time: a cached verdict needs no `cryptography`
    from cryptography import x509

VALID = "valid"
REVOKED = "revoked"
EXPIRED = "expired"
NOT_YET_VALID = "not-yet-valid"
UNTRUSTED = "untrusted"
INVALID_PATH = "invalid-path"
REVOCATION_UNKNOWN = "revocation-unknown"
MALFORMED = "malformed"

STATUSES = (
    VALID,
    REVOKED,
    EXPIRED,
    NOT_YET_VALID,
    UNTRUSTED,
    INVALID_PATH,
    REVOCATION_UNKNOWN,
    MALFORMED,
)


def _iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.isoformat().replace("+00:00", "Z")


def subject_text(cert: x509.Certificate) -> str:
    """The subject as an RFC 4514 string (what `idm verify` prints)."""
    return cert.subject.rfc4514_string()


@dataclass(frozen=True)
class RevocationEvidence:
    """One piece of revocation status used (or sought) for one certificate of the path.

    `source` is "crl" or "ocsp"; `status` is "good", "revoked" or "unknown"; `url` is
    the URL or file the data came from (None for data supplied by the caller in memory).
    """

    subject: str
    source: str
    status: str
    this_update: datetime | None
    next_update: datetime | None
    url: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "source": self.source,
            "status": self.status,
            "this_update": _iso(self.this_update),
            "next_update": _iso(self.next_update),
            "url": self.url,
        }


@dataclass(frozen=True)
class Verdict:
    """What the validator decided about one certificate.

    `chain` runs from the leaf to the trust anchor (just the leaf when no path was found).
    `fresh_until` is when this verdict must be recomputed: the earliest nextUpdate of the
    revocation evidence used, or the earliest notAfter in the chain, whichever is first.
    `ssh_identity` is "x509" for a CA-issued certificate and "plain" for a self-signed
    one (the agent then offers only the plain key). `chain_subjects` are the subjects of
    the chain (filled from `chain` when not given; a verdict answered from the
    inventory's path cache by `idm.validator.memo.express` has subjects but no parsed
    `chain` or `leaf`).
    """

    valid: bool
    status: str
    reason: str
    chain: tuple[x509.Certificate, ...] = ()
    revocation: tuple[RevocationEvidence, ...] = ()
    warnings: tuple[str, ...] = ()
    fresh_until: datetime | None = None
    ssh_identity: str = "x509"
    leaf: x509.Certificate | None = field(default=None, compare=False)
    chain_subjects: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if not self.chain_subjects and self.chain:
            object.__setattr__(self, "chain_subjects", tuple(subject_text(c) for c in self.chain))
        if self.status not in STATUSES:
            raise ValueError(f"unknown verdict status {self.status!r}")
        if self.valid != (self.status == VALID):
            raise ValueError("a verdict is valid exactly when its status is 'valid'")

    def to_json(self) -> dict[str, Any]:
        """The fields of the `idm verify --json` contract that come from the verdict."""
        return {
            "valid": self.valid,
            "status": self.status,
            "reason": self.reason,
            "chain": list(self.chain_subjects),
            "revocation": [e.to_json() for e in self.revocation],
            "ssh_identity": self.ssh_identity,
        }
