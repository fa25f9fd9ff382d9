"""Enrollment: a token's certificates into the inventory, validated, with the story told.

`enroll_token()` reads the certificates of a present token, validates each one with the
`CertificateChecker` (configured anchors, CRLs, revocation policy), records the token and
the certificates (approved; or rejected/revoked/expired with the validator's reason), and
marks *superseded* the approved identities of **other** tokens whose certificate has the
same subject or shares a principal (an e-mail or UPN in the subjectAltName): that is how a
replaced card retires the old one. Every change is an inventory event; a second run with
nothing new changes nothing. `enroll_certificate()` does the same for a certificate file
and a token that is not inserted (the identity is configured before the card is present).
A certificate the inventory already has on another token is refused (`EnrollmentConflict`)
before anything is recorded.

CA certificates kept on a token (basicConstraints CA) are not identities and are skipped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from idm.identity.certnames import CertificateNames, MalformedNamesError
from idm.identity.checker import CertificateChecker, certificate_record
from idm.identity.inventory.store import Inventory
from idm.identity.tokens.session import CertificateObject, TokenInfo
from idm.identity.tokens.uri import TokenIdentity


class EnrollmentConflict(ValueError):
    """The certificate is registered to another token in the inventory (one line)."""


@dataclass(frozen=True)
class EnrolledCertificate:
    """One certificate's outcome: its inventory status and whether this run changed it."""

    sha256: str
    subject: str
    status: str
    reason: str | None
    changed: bool
    label: str | None = None


@dataclass
class EnrollmentResult:
    """What `enroll_token` / `enroll_certificate` did."""

    token: TokenIdentity
    token_id: int
    certificates: list[EnrolledCertificate] = field(default_factory=list)
    superseded: list[str] = field(default_factory=list)  # sha256 of identities retired
    skipped: list[str] = field(default_factory=list)  # why a token object was not enrolled

    @property
    def changed(self) -> bool:
        return any(c.changed for c in self.certificates) or bool(self.superseded)


def principals(certificate: x509.Certificate) -> set[str]:
    """The principals a certificate names: rfc822 e-mails and UPNs from subjectAltName."""
    try:
        names = CertificateNames.of(certificate)
    except MalformedNamesError:
        return set()
    return {f"email:{a.lower()}" for a in names.emails} | {f"upn:{u.lower()}" for u in names.upns}


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return bool(certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except (x509.ExtensionNotFound, ValueError):
        return False


def _status_for(verdict_status: str) -> str:
    # Inventory statuses: the validator's revoked/expired are kept as such, any other
    # failure is a rejection (with the validator's reason).
    if verdict_status == "valid":
        return "approved"
    if verdict_status in ("revoked", "expired"):
        return verdict_status
    return "rejected"


def _enroll_one(
    inventory: Inventory,
    checker: CertificateChecker,
    certificate: x509.Certificate,
    *,
    token_id: int,
    cka_id: bytes | None,
    label: str | None,
    command: str | None,
    intermediates: list[x509.Certificate] | None = None,
) -> EnrolledCertificate:
    try:
        record = certificate_record(certificate, token_id=token_id, cka_id=cka_id, label=label)
    except ValueError as exc:
        raise ValueError(f"certificate {certificate.subject.rfc4514_string()}: {exc}") from None
    stored, added = inventory.add_certificate(record, command=command)
    verdict = checker.check(certificate, intermediates=intermediates or [])
    inventory.record_verdict(
        stored.sha256,
        verdict.status,
        verified_at=datetime.now(UTC),
        fresh_until=verdict.fresh_until,
    )
    status = _status_for(verdict.status)
    reason = None if verdict.valid else verdict.reason
    if stored.status == "superseded" and status == "approved":
        # A retired identity stays retired: re-enrolling its old card does not revive it.
        return EnrolledCertificate(
            stored.sha256, stored.subject, "superseded", stored.status_reason, added, label
        )
    changed = inventory.set_status(stored.sha256, status, reason, command=command) or added
    return EnrolledCertificate(stored.sha256, stored.subject, status, reason, changed, label)


def _check_owner(
    inventory: Inventory, token: TokenIdentity, certificates: Iterable[x509.Certificate]
) -> None:
    """Refuse a certificate the inventory already has on another token.

    A certificate belongs to the card that holds its key; recording it for a second card
    would make a phantom token that claims someone else's identity.
    """
    for certificate in certificates:
        der = certificate.public_bytes(serialization.Encoding.DER)
        known = inventory.certificate(hashlib.sha256(der).hexdigest())
        if known is None or known.token_id is None:
            continue
        owner = inventory.token(known.token_id)
        if owner is None:
            continue
        owner_identity = TokenIdentity(owner.manufacturer, owner.model, owner.serial, owner.label)
        if owner_identity != token:
            raise EnrollmentConflict(
                f"certificate {known.sha256[:16]} ({known.subject}) is registered to token "
                f"{owner_identity} (inventory id {owner.id}), not to {token}; if it really "
                f"moved, run `idm forget {known.sha256[:16]}` first"
            )


def _supersede(
    inventory: Inventory,
    token: TokenIdentity,
    token_id: int,
    approved: Iterable[EnrolledCertificate],
    command: str | None,
) -> list[str]:
    new = [c for c in approved if c.status == "approved"]
    if not new:
        return []
    new_certs = {
        c.sha256: x509.load_der_x509_certificate(inventory.certificate(c.sha256).der)  # type: ignore[union-attr]
        for c in new
    }
    retired: list[str] = []
    for old in inventory.certificates(status="approved"):
        if old.token_id == token_id or old.sha256 in new_certs:
            continue
        old_cert = x509.load_der_x509_certificate(old.der)
        for sha, cert in new_certs.items():
            same_subject = len(cert.subject) > 0 and cert.subject == old_cert.subject
            shared = principals(cert) & principals(old_cert)
            if same_subject or shared:
                why = "same subject" if same_subject else f"same principal {sorted(shared)[0]}"
                reason = f"superseded by {sha[:16]} on token {token.label!r} ({why})"
                if inventory.set_status(old.sha256, "superseded", reason, command=command):
                    retired.append(old.sha256)
                break
    return retired


def enroll_token(
    inventory: Inventory,
    checker: CertificateChecker,
    info: TokenInfo,
    certificates: Iterable[CertificateObject],
    *,
    command: str | None = None,
) -> EnrollmentResult:
    """Enroll a present token's certificates (see the module docstring)."""
    ident = info.identity
    objects = list(certificates)
    _check_owner(inventory, ident, (o.certificate for o in objects if not _is_ca(o.certificate)))
    token = inventory.record_token(
        ident.manufacturer,
        ident.model,
        ident.serial,
        ident.label,
        module_path=info.module.path,
        command=command,
    )
    result = EnrollmentResult(ident, token.id)
    # CA certificates kept on the card are not identities, but help build the path.
    ca_certs = [o.certificate for o in objects if _is_ca(o.certificate)]
    for obj in objects:
        cert = obj.certificate
        if _is_ca(cert):
            result.skipped.append(f"{obj.label or obj.id.hex()}: a CA certificate")
            continue
        result.certificates.append(
            _enroll_one(
                inventory,
                checker,
                cert,
                token_id=token.id,
                cka_id=obj.id,
                label=obj.label or None,
                command=command,
                intermediates=ca_certs,
            )
        )
    result.superseded = _supersede(inventory, ident, token.id, result.certificates, command)
    return result


def enroll_certificate(
    inventory: Inventory,
    checker: CertificateChecker,
    token: TokenIdentity,
    certificate: x509.Certificate,
    *,
    present: bool = False,
    module_path: str | None = None,
    cka_id: bytes | None = None,
    label: str | None = None,
    command: str | None = None,
) -> EnrollmentResult:
    """Register `certificate` for `token` (which may be absent) and enroll it."""
    if not _is_ca(certificate):
        _check_owner(inventory, token, [certificate])
    # One call, so that concurrent registrations of the same absent card cannot interleave
    # (present/absent events back and forth): a known absent token stays as it is.
    record = inventory.record_token(
        token.manufacturer,
        token.model,
        token.serial,
        token.label,
        module_path=module_path,
        command=command,
        present=present,
    )
    result = EnrollmentResult(token, record.id)
    if _is_ca(certificate):
        result.skipped.append("a CA certificate is not an identity")
        return result
    result.certificates.append(
        _enroll_one(
            inventory,
            checker,
            certificate,
            token_id=record.id,
            cka_id=cka_id,
            label=label,
            command=command,
        )
    )
    result.superseded = _supersede(inventory, token, record.id, result.certificates, command)
    return result


def certificate_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)
