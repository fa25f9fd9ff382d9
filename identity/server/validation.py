"""The server's validation settings, built once from the configuration.

Both ``idm refresh`` and the X.509 path of ``idm authorized-keys`` validate with the
same CA bundle, untrusted intermediates, CRL files and revocation policy, through
``idm.validator.api.validate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cryptography import x509

from idm.identity.config import Config
from idm.validator.api import CrlInput, validate
from idm.validator.bundle import load_bundle
from idm.validator.errors import MalformedInputError
from idm.validator.policy import Policy, PolicyError
from idm.validator.revocation.fetch import Fetcher
from idm.validator.revocation.store import RevocationStore
from idm.validator.verdict import Verdict

CRL_SUFFIXES = {".crl", ".der", ".pem"}


class SetupError(ValueError):
    """The configuration's CA bundle, CRL files or policy cannot be used (one line)."""


def _crl_files(paths: Sequence[Path]) -> list[CrlInput]:
    out: list[CrlInput] = []
    for p in paths:
        files = (
            sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in CRL_SUFFIXES)
            if p.is_dir()
            else [p]
        )
        for f in files:
            try:
                out.append((str(f), f.read_bytes()))
            except OSError as exc:
                raise SetupError(f"[revocation] crl: cannot read {f}: {exc.strerror}") from None
    return out


@dataclass
class ServerValidation:
    """Trust anchors, intermediates, CRLs, policy and HTTP limits for server-side checks."""

    anchors: list[x509.Certificate]
    intermediates: list[x509.Certificate]
    policy: Policy
    fetcher: Fetcher
    crls: list[CrlInput] = field(default_factory=list)

    @classmethod
    def from_config(cls, config: Config) -> ServerValidation:
        v, r = config.validation, config.revocation
        if not v.ca:
            raise SetupError(
                "no trust anchors: set [validation] ca to the CA bundle that issues user "
                "certificates"
            )
        try:
            anchors = load_bundle(v.ca)
            intermediates = load_bundle(v.untrusted) if v.untrusted else []
            policy = Policy(
                purpose=v.purpose,
                client_ekus=tuple(v.client_ekus),
                revocation=r.policy,
                budget_seconds=v.budget_seconds,
                max_intermediates=v.max_intermediates,
                max_pool=v.max_pool,
                ocsp_url=r.ocsp_url,
                ocsp_max_age=r.ocsp_max_age,
                offline=r.offline,
            )
        except (MalformedInputError, PolicyError) as exc:
            raise SetupError(str(exc)) from None
        fetcher = Fetcher(
            connect_timeout=r.connect_timeout,
            read_timeout=r.read_timeout,
            crl_max_bytes=r.crl_max_bytes,
            ocsp_max_bytes=r.ocsp_max_bytes,
        )
        return cls(anchors, intermediates, policy, fetcher, _crl_files(r.crl))

    def validate(
        self,
        leaf: bytes | x509.Certificate,
        *,
        store: RevocationStore | None,
        extra_intermediates: Sequence[x509.Certificate] = (),
        at: datetime | None = None,
    ) -> Verdict:
        """The validator's verdict on one certificate under these settings."""
        return validate(
            leaf,
            anchors=self.anchors,
            intermediates=[*extra_intermediates, *self.intermediates],
            policy=self.policy,
            at=at,
            store=store,
            fetcher=self.fetcher,
            crls=self.crls,
        )
