"""Moving enrolled certificates from one inventory to another: `idm export` / `idm import`.

A client enrolls its cards into its own inventory; a server authorizes logins from its own.
When the two do not share a PostgreSQL inventory, the client exports its approved
certificates to a file (the *export document*) and the server imports that file.

The export document is one JSON object (see docs/enrollment.md, "From a client to a server")::

    {"format": "idm-export", "version": 1, "exported_at": "...",
     "certificates": [{"pem": "-----BEGIN CERTIFICATE-----...",
                       "token": {"manufacturer": ..., "model": ..., "serial": ..., "label": ...},
                       "cka_id": "01", "label": "ssh",
                       "sha256": ..., "subject": ..., "issuer": ..., "serial": ...,
                       "not_after": ..., "key_fingerprint": ..., "principals": [...],
                       "status": "approved"}]}

Only `pem`, `token`, `cka_id` and `label` are read on import. Everything else is there for
the people who move the file (what is in it) and is recomputed from the certificate by the
importer: above all the status. Every imported certificate is validated again with the
importing side's trust anchors, CRLs and revocation policy (`enroll_certificate`), so a file
cannot make a certificate approved; it can only name certificates for the server to check.
Importing the same file twice changes nothing the second time.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from idm.identity.checker import CertificateChecker
    from idm.identity.inventory.store import Inventory

FORMAT = "idm-export"
VERSION = 1
# The largest export document `idm import` reads (~30,000 certificates).
MAX_DOCUMENT_BYTES = 64 << 20
TOKEN_FIELDS = ("manufacturer", "model", "serial", "label")


class TransferError(ValueError):
    """The export document is unusable as a whole (not JSON, wrong format or version)."""


def export_document(
    inventory: Inventory, fingerprints: Iterable[str] = (), *, now: datetime | None = None
) -> dict[str, Any]:
    """The export document of the inventory's approved certificates (or of those named by
    SHA-256 prefixes in `fingerprints`, which must be approved too)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from idm.identity.tokens.enroll import principals

    wanted = [f.lower() for f in fingerprints]
    approved = inventory.certificates(status="approved")
    if wanted:
        for prefix in wanted:
            if not any(c.sha256.startswith(prefix) for c in approved):
                raise TransferError(f"no approved certificate has the fingerprint {prefix}")
        approved = [c for c in approved if any(c.sha256.startswith(p) for p in wanted)]
    tokens = {t.id: t for t in inventory.tokens()}
    entries = []
    for record in approved:
        token = tokens.get(record.token_id) if record.token_id is not None else None
        if token is None:
            continue  # every enrolled certificate has a token; a bare row has nothing to move
        cert = x509.load_der_x509_certificate(record.der)
        entries.append(
            {
                "pem": cert.public_bytes(serialization.Encoding.PEM).decode(),
                "token": {f: getattr(token, f) for f in TOKEN_FIELDS},
                "cka_id": record.cka_id,
                "label": record.label,
                "sha256": record.sha256,
                "subject": record.subject,
                "issuer": record.issuer,
                "serial": record.serial,
                "not_after": record.not_after.isoformat(),
                "key_fingerprint": record.key_fingerprint,
                "principals": sorted(principals(cert)),
                "status": record.status,
            }
        )
    return {
        "format": FORMAT,
        "version": VERSION,
        "exported_at": (now or datetime.now(UTC)).isoformat(timespec="seconds"),
        "certificates": entries,
    }


@dataclass(frozen=True)
class ExportedCertificate:
    """One entry of an export document, as the importer reads it."""

    index: int
    pem: str
    token: dict[str, str]
    cka_id: str | None
    label: str | None


def read_document(data: bytes | str) -> list[ExportedCertificate]:
    """The entries of an export document. Raises TransferError when the document as a whole
    is unusable; a malformed entry is returned as it is and refused by `import_document`."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TransferError(f"not an idm export document (not JSON: {exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise TransferError(f"not an idm export document (no \"format\": \"{FORMAT}\")")
    if doc.get("version") != VERSION:
        raise TransferError(
            f"export document version {doc.get('version')!r} is not supported "
            f"(this idm reads version {VERSION})"
        )
    entries = doc.get("certificates")
    if not isinstance(entries, list):
        raise TransferError("export document has no \"certificates\" list")
    out = []
    for i, entry in enumerate(entries):
        entry = entry if isinstance(entry, dict) else {}
        pem, token, cka_id, label = (entry.get(k) for k in ("pem", "token", "cka_id", "label"))
        out.append(
            ExportedCertificate(
                index=i,
                pem=pem if isinstance(pem, str) else "",
                token=token if isinstance(token, dict) else {},
                cka_id=cka_id if isinstance(cka_id, str) else None,
                label=label if isinstance(label, str) else None,
            )
        )
    return out


@dataclass(frozen=True)
class ImportedCertificate:
    """What importing one entry did: the status the importer's own validation gave it."""

    index: int
    sha256: str | None
    subject: str | None
    token: str | None
    status: str  # approved / rejected / revoked / expired / superseded, or "refused"
    reason: str | None
    changed: bool


@dataclass
class ImportResult:
    """What `import_document` did, entry by entry."""

    certificates: list[ImportedCertificate] = field(default_factory=list)
    superseded: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(c.changed for c in self.certificates) or bool(self.superseded)

    @property
    def all_approved(self) -> bool:
        return all(c.status == "approved" for c in self.certificates)


def _refused(entry: ExportedCertificate, reason: str) -> ImportedCertificate:
    return ImportedCertificate(entry.index, None, None, None, "refused", reason, False)


def import_document(
    inventory: Inventory,
    checker: CertificateChecker,
    entries: Iterable[ExportedCertificate],
    *,
    command: str | None = None,
) -> ImportResult:
    """Enroll every entry's certificate for its (absent) token, validated by `checker`."""
    from cryptography import x509

    from idm.identity.tokens.enroll import enroll_certificate
    from idm.identity.tokens.uri import TokenIdentity

    result = ImportResult()
    for entry in entries:
        token_values = [entry.token.get(f) for f in TOKEN_FIELDS]
        if not all(isinstance(v, str) for v in token_values):
            result.certificates.append(
                _refused(entry, "no token (manufacturer, model, serial and label) given")
            )
            continue
        try:
            cert = x509.load_pem_x509_certificate(entry.pem.encode())
        except ValueError as exc:
            result.certificates.append(_refused(entry, f"not a PEM certificate: {exc}"))
            continue
        token = TokenIdentity(*token_values)  # type: ignore[arg-type]
        try:
            cka_id = bytes.fromhex(entry.cka_id) if entry.cka_id else None
        except ValueError:
            cka_id = None  # informational on the server: no card is ever opened there
        try:
            enrolled = enroll_certificate(
                inventory, checker, token, cert, cka_id=cka_id, label=entry.label,
                command=command,
            )
        except ValueError as exc:
            result.certificates.append(_refused(entry, str(exc)))
            continue
        if not enrolled.certificates:  # a CA certificate: not an identity
            result.certificates.append(_refused(entry, "; ".join(enrolled.skipped)))
            continue
        for c in enrolled.certificates:
            result.certificates.append(
                ImportedCertificate(
                    entry.index, c.sha256, c.subject, token.label, c.status, c.reason, c.changed
                )
            )
        result.superseded += enrolled.superseded
    return result
