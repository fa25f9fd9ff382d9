"""The one place where idm turns its configuration into validator calls.

`CertificateChecker` holds the trust anchors, untrusted intermediates, configured CRLs,
policy, HTTP limits and the inventory's revocation cache, and answers "is this
certificate good now?" with an `idm.validator` Verdict. `idm verify`, enrollment,
`idm refresh` and the agent's validation gate all use it, so they cannot disagree.

`certificate_record()` describes a certificate for the inventory (subject, serial, SSH
key blob and fingerprint, self-signed or not).

Importing this module is cheap (no `cryptography`, SQLAlchemy or pyhanko at import time):
`idm verify` answered from the inventory's caches uses `policy_from_config` without
parsing a certificate.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from idm.identity.config import Config
from idm.validator.policy import Policy
from idm.validator.revocation.fetch import Fetcher
from idm.validator.revocation.store import MemoryRevocationStore, RevocationStore
from idm.validator.verdict import Verdict

if TYPE_CHECKING:
    from cryptography import x509

    from idm.identity.inventory.store import CertificateRecord, Inventory
    from idm.validator.inputfile import FileCheck

CRL_SUFFIXES = {".crl", ".pem", ".der"}


class CheckerError(ValueError):
    """The validation set-up is unusable (no trust anchors, unreadable CRL path, …)."""


def crl_files(
    paths: Iterable[Path], max_bytes: int, check: FileCheck | None = None
) -> list[tuple[str, bytes]]:
    """(label, bytes) of CRL files, folders expanded (files ending .crl, .pem, .der);
    each file at most ``max_bytes`` ([revocation] crl_max_bytes, as for downloads), and
    refused by ``check`` (see `read_input_file`) when given."""
    from idm.validator.inputfile import read_input_file

    found: list[tuple[str, bytes]] = []
    for path in paths:
        try:
            files = (
                sorted(p for p in path.iterdir() if p.suffix.lower() in CRL_SUFFIXES)
                if path.is_dir()
                else [path]
            )
        except OSError as exc:
            raise CheckerError(f"cannot read CRL folder {path}: {exc.strerror}") from None
        for f in files:
            found.append((str(f), read_input_file(f, "CRL", max_bytes, check)))
    return found


def policy_from_config(config: Config, **overrides: object) -> Policy:
    """The validator policy the configuration describes, with command-line overrides."""
    v, r = config.validation, config.revocation
    policy = Policy(
        purpose=v.purpose,
        client_ekus=tuple(v.client_ekus),
        revocation=r.policy,
        budget_seconds=v.budget_seconds,
        time_limit=v.time_limit,
        max_intermediates=v.max_intermediates,
        max_pool=v.max_pool,
        min_rsa_bits=v.min_rsa_bits,
        curves=tuple(v.curves),
        allow_dsa=v.allow_dsa,
        allow_sha1=v.allow_sha1,
        ocsp_url=r.ocsp_url or None,
        ocsp_max_age=r.ocsp_max_age,
        offline=r.offline,
    )
    given = {k: val for k, val in overrides.items() if val is not None}
    return replace(policy, **given) if given else policy  # type: ignore[arg-type]


def fetcher_from_config(config: Config) -> Fetcher:
    r = config.revocation
    return Fetcher(
        connect_timeout=r.connect_timeout,
        read_timeout=r.read_timeout,
        fetch_timeout=r.fetch_timeout,
        crl_max_bytes=r.crl_max_bytes,
        ocsp_max_bytes=r.ocsp_max_bytes,
    )


@dataclass
class CertificateChecker:
    """Validates certificates under one configuration; see the module docstring."""

    anchors: Sequence[x509.Certificate]
    policy: Policy
    intermediates: Sequence[x509.Certificate] = ()
    crls: Sequence[tuple[str, bytes]] = ()
    store: RevocationStore = field(default_factory=MemoryRevocationStore)
    fetcher: Fetcher = field(default_factory=Fetcher)

    @classmethod
    def from_config(
        cls,
        config: Config,
        inventory: Inventory | None = None,
        *,
        ca: Sequence[Path] = (),
        untrusted: Sequence[Path] = (),
        crl_paths: Sequence[Path] = (),
        extra_crls: Sequence[tuple[str, bytes]] = (),
        file_check: FileCheck | None = None,
        **policy_overrides: object,
    ) -> CertificateChecker:
        """Anchors from `ca` when given, else the configuration's [validation] ca.

        ``file_check`` is called with the path and stat of each anchor, untrusted and CRL
        file before it is read (see `idm.validator.inputfile.read_input_file`); it raises
        to refuse the file (the sshd helper's StrictModes: whoever can write an anchor adds
        a CA, whoever can write a CRL file can put back an older one)."""
        from idm.validator.bundle import load_bundle

        ca_paths = list(ca) or list(config.validation.ca)
        if not ca_paths:
            raise CheckerError(
                "no trust anchors: set [validation] ca in the configuration (or give --ca PATH "
                "to commands that take it)"
            )
        anchors = load_bundle(ca_paths, "CA bundle", file_check)
        if not anchors:
            raise CheckerError(f"no certificates found in {', '.join(map(str, ca_paths))}")
        intermediates = load_bundle(
            [*config.validation.untrusted, *untrusted], "untrusted bundle", file_check
        )
        crls = [
            *crl_files([*config.revocation.crl, *crl_paths], config.revocation.crl_max_bytes,
                       file_check),
            *extra_crls,
        ]
        return cls(
            anchors=anchors,
            intermediates=intermediates,
            policy=policy_from_config(config, **policy_overrides),
            crls=crls,
            store=inventory.revocation_store() if inventory else MemoryRevocationStore(),
            fetcher=fetcher_from_config(config),
        )

    def check(
        self,
        certificate: bytes | x509.Certificate,
        *,
        intermediates: Sequence[x509.Certificate] = (),
        at: datetime | None = None,
    ) -> Verdict:
        from idm.validator.api import validate

        return validate(
            certificate,
            anchors=self.anchors,
            intermediates=[*intermediates, *self.intermediates],
            policy=self.policy,
            at=at or datetime.now(UTC),
            store=self.store,
            fetcher=self.fetcher,
            crls=self.crls,
        )


def plain_key_blob(record: CertificateRecord) -> bytes:
    """The plain SSH blob of a recorded certificate's key, from its DER (authoritative);
    the stored blob only if the DER no longer parses."""
    from cryptography import x509

    from idm.identity import sshwire

    try:
        cert = x509.load_der_x509_certificate(record.der)
        return sshwire.KeyBlob.plain(cert.public_key()).blob  # type: ignore[arg-type]
    except (ValueError, sshwire.WireFormatError):
        return record.key_blob


def certificate_record(
    certificate: bytes | x509.Certificate,
    *,
    token_id: int | None = None,
    cka_id: bytes | None = None,
    label: str | None = None,
) -> CertificateRecord:
    """Describe a certificate for the inventory. Raises ValueError (sshwire's
    WireFormatError) for a key type SSH cannot use."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from idm.identity import sshwire
    from idm.identity.inventory.store import CertificateRecord
    from idm.validator.signatures import is_self_signed

    cert = (
        certificate
        if isinstance(certificate, x509.Certificate)
        else x509.load_der_x509_certificate(bytes(certificate))
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    blob = sshwire.public_key_blob(cert.public_key())  # type: ignore[arg-type]
    return CertificateRecord(
        sha256=hashlib.sha256(der).hexdigest(),
        der=der,
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        serial=format(cert.serial_number, "x"),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        key_type=sshwire.key_algorithm(cert.public_key()),  # type: ignore[arg-type]
        key_fingerprint=sshwire.fingerprint_sha256(blob),
        key_blob=blob,
        self_signed=is_self_signed(cert),
        cka_id=cka_id.hex() if cka_id is not None else None,
        label=label,
        token_id=token_id,
    )
