"""The validator's one entry point: `validate()` turns a certificate into a `Verdict`.

Order of the rules (the first that fails decides, and its reason is reported):
1. the certificate parses (else `malformed`);
2. a path to a trust anchor exists and passes RFC 5280 validation (chain.py: `untrusted`,
   `expired`, `not-yet-valid`, `invalid-path`, or `invalid-path` when the budget is spent);
3. the leaf fits the purpose (policy.py: `invalid-path`);
4. revocation, for every certificate of the path below the anchor (`revoked`,
   `revocation-unknown`).

Nothing that a library raises on hostile input escapes: it becomes a verdict.

Revocation (idm.validator.revocation.check, RFC 5280 §6.3): CRLs supplied by the caller
are indexed into the store (once per signer, scope and CRL number); the store's CRLs that
count for each certificate decide first, then OCSP (cached, then AIA or the policy's
URL) and, unless offline, the certificate's http(s) CRL distribution points. A CRL signed
by another key than the certificate's issuer counts only when that key's certificate
validates to the same trust anchor (`_Validation._authorizer`). One deadline
(`Policy.time_limit`) covers the whole validation, fetches included.

When the store also keeps validated paths (idm.validator.memo.PathMemo), rule 2 is
answered from it for a path that validated before with the same inputs, without
pyhanko-certvalidator; revocation is checked every time all the same.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from idm.validator import verdict as v
from idm.validator.chain import PathOutcome, validate_chain
from idm.validator.errors import PARSE_ERRORS, MalformedInputError
from idm.validator.memo import PathMemo, load_path_record, path_key, record_for
from idm.validator.names import name_key
from idm.validator.policy import OFF, Policy, purpose_problem
from idm.validator.revocation.check import (
    Authorize,
    CertFacts,
    RevocationCheck,
    revocation_verdict,
)
from idm.validator.revocation.crl import ca_key
from idm.validator.revocation.fetch import Fetcher
from idm.validator.revocation.ocsp import ocsp_urls
from idm.validator.revocation.scope import distribution_points
from idm.validator.revocation.store import MemoryRevocationStore, RevocationStore
from idm.validator.signatures import is_self_signed, signed_by, usable_public_key
from idm.validator.verdict import Verdict

log = logging.getLogger(__name__)

CrlInput = bytes | tuple[str, bytes]
"""A CRL given to `validate`: its DER/PEM bytes, or (source label, bytes)."""


def validate(
    leaf: bytes | x509.Certificate,
    *,
    anchors: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate] = (),
    policy: Policy | None = None,
    at: datetime | None = None,
    store: RevocationStore | None = None,
    fetcher: Fetcher | None = None,
    crls: Sequence[CrlInput] = (),
) -> Verdict:
    """Validate `leaf` (DER/PEM bytes or a parsed certificate) and return the verdict.

    `anchors` are the trust anchors, `intermediates` untrusted certificates that may help
    build the path. `at` (aware datetime; default now) is the moment of validation.
    `store` caches revocation data (default: a fresh in-memory store, i.e. no cache);
    `fetcher` does the HTTP (default: `Fetcher()` with its default limits). `crls` are
    extra CRLs to use; a malformed one raises `MalformedInputError` (it is the caller's
    input), one that cannot be used (a forged signature, an unknown critical extension…)
    makes the status of the certificates of its issuer unknown unless another CRL or OCSP
    gives it. Whatever else goes wrong on hostile input is a verdict, never an exception.
    """
    policy = policy or Policy()
    at = at or datetime.now(UTC)
    if at.tzinfo is None:
        raise ValueError("validate(): `at` must be timezone-aware")
    if isinstance(leaf, bytes | bytearray):
        from idm.validator.bundle import parse_certificate

        try:
            cert = parse_certificate(bytes(leaf), "certificate")
        except MalformedInputError as e:
            return Verdict(False, v.MALFORMED, str(e))
    else:
        cert = leaf
    job = _Validation(anchors, intermediates, policy, at,
                      store if store is not None else MemoryRevocationStore(),
                      fetcher or Fetcher(), time.monotonic() + policy.time_limit)
    return job.run(cert, crls)


def _sha(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def crl_sign_allowed(ca: x509.Certificate) -> bool:
    """True when the certificate's keyUsage is absent or allows cRLSign."""
    try:
        return bool(ca.extensions.get_extension_for_class(x509.KeyUsage).value.crl_sign)
    except x509.ExtensionNotFound:
        return True


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def facts_for(cert: x509.Certificate, issuer: x509.Certificate) -> CertFacts:
    """What revocation checking needs of `cert`, issued by `issuer`."""
    return CertFacts(
        v.subject_text(cert),
        cert.serial_number,
        ca_key(issuer),
        tuple(crl_urls(cert)),
        tuple(ocsp_urls(cert)),
        issuer_name=name_key(cert.issuer),
        is_ca=is_ca(cert),
        dps=distribution_points(cert),
        issuer_crl_sign=crl_sign_allowed(issuer),
    )


def _remembered(
    memo: PathMemo, key: str, at: datetime, certs: Sequence[x509.Certificate]
) -> PathOutcome | None:
    """The path remembered under `key` for `at`, rebuilt from the certificates given and
    its signatures checked again (a record is a hint, never proof)."""
    record = load_path_record(memo, key, at)
    if record is None:
        return None
    by_sha = {_sha(c): c for c in certs}
    if not all(s in by_sha for s in record.chain_sha256):
        return None
    chain = tuple(by_sha[s] for s in record.chain_sha256)
    if not all(signed_by(chain[i], chain[i + 1]) for i in range(len(chain) - 1)):
        return None
    return PathOutcome(v.VALID, "path validated", chain, record.warnings)


# How deep CRL signers are validated: a CRL signer's certificate, whose own CRL may be
# signed by another separate key, and no further.
_MAX_SIGNER_DEPTH = 2


@dataclass
class _Validation:
    """One call of `validate`, and the validations of CRL signers it leads to."""

    anchors: Sequence[x509.Certificate]
    intermediates: Sequence[x509.Certificate]
    policy: Policy
    at: datetime
    store: RevocationStore
    fetcher: Fetcher
    deadline: float
    depth: int = 0
    active: frozenset[str] = frozenset()
    # When this validation is of a CRL signer: its store key, subject and serial. Its own
    # CRL may then speak for its own certificate (it verified that CRL; its path is what
    # is being validated): PKITS 4.14.30.
    signer: tuple[str, str, int] | None = None
    # Issuer name -> why its CRL at hand is unusable: shared (`replace` keeps the same
    # dict) with the validations of CRL signers, whose status is unknown then too.
    unusable: dict[str, list[str]] = field(default_factory=dict)

    def run(self, cert: x509.Certificate, crls: Sequence[CrlInput]) -> Verdict:
        try:
            return self._validate(cert, crls)
        except MalformedInputError:
            raise
        except PARSE_ERRORS as e:
            # cryptography parses extensions lazily: a broken one surfaces here.
            return Verdict(False, v.MALFORMED, f"certificate could not be parsed: {_line(e)}",
                           leaf=cert)
        except Exception as e:  # noqa: BLE001 - hostile input must end in a verdict
            log.debug("validation failed", exc_info=True)
            return Verdict(False, v.INVALID_PATH, f"validation failed: {_line(e)}", leaf=cert)

    def _validate(self, cert: x509.Certificate, crls: Sequence[CrlInput]) -> Verdict:
        policy, at, store = self.policy, self.at, self.store
        anchors, intermediates = self.anchors, self.intermediates
        ssh_identity = "plain" if is_self_signed(cert) else "x509"
        memo = store if isinstance(store, PathMemo) else None
        key = ""
        outcome = None
        if memo is not None:
            key = path_key(
                _sha(cert), [_sha(a) for a in anchors], [_sha(c) for c in intermediates], policy
            )
            outcome = _remembered(memo, key, at, [cert, *anchors, *intermediates])
        remembered = outcome is not None
        if outcome is None:
            outcome = validate_chain(
                cert, intermediates, anchors, at=at, policy=policy,
                deadline=min(self.deadline, time.monotonic() + policy.budget_seconds),
            )
        warnings = list(outcome.warnings)
        chain = outcome.chain

        def verdict(status: str, reason: str, **kw: object) -> Verdict:
            return Verdict(
                status == v.VALID,
                status,
                reason,
                chain=chain,
                warnings=tuple(warnings),
                ssh_identity=ssh_identity,
                leaf=cert,
                **kw,  # type: ignore[arg-type]
            )

        if outcome.status != v.VALID:
            return verdict(outcome.status, outcome.reason)
        problem = purpose_problem(cert, policy)
        if problem:
            return verdict(v.INVALID_PATH, problem)
        facts = [facts_for(chain[i], chain[i + 1]) for i in range(len(chain) - 1)]
        if memo is not None and not remembered:
            record = record_for(chain, facts, ssh_identity, outcome.warnings)
            memo.save_path(key, record.valid_from, record.valid_until, record.to_json())
        fresh = min(c.not_valid_after_utc for c in chain)
        if policy.revocation == OFF:
            return verdict(v.VALID, "path validated; revocation checking is off",
                           fresh_until=fresh)
        candidates = [*chain, *anchors, *intermediates]
        check = RevocationCheck(
            policy=policy,
            at=at,
            store=store,
            fetcher=self.fetcher,
            candidates=candidates,
            authorize=self._authorizer(chain[-1], candidates),
            deadline=self.deadline,
            unusable=self.unusable,
        )
        check.load_supplied(crls)
        pairs = [(chain[i], chain[i + 1]) for i in range(len(chain) - 1)]
        return revocation_verdict(check, facts, pairs, fresh, warnings, verdict)

    def _authorizer(
        self,
        anchor: x509.Certificate,
        candidates: Sequence[x509.Certificate],
    ) -> Authorize:
        """Decides whether a CRL signer other than a certificate's issuer may speak for it:
        its certificate allows cRLSign and validates (revocation included) to `anchor`."""
        by_key: dict[str, list[x509.Certificate]] = {}
        anchor_sha = _sha(anchor)

        def authorize(signer_key: str, f: CertFacts) -> str | None:
            if not by_key:
                for c in candidates:
                    if usable_public_key(c) is not None:  # one that signs nothing is skipped
                        by_key.setdefault(ca_key(c), []).append(c)
            if self.signer == (signer_key, f.subject, f.serial):
                return None
            certs = by_key.get(signer_key, [])
            if not certs:
                return "its certificate is not among the known CA certificates"
            if self.depth >= _MAX_SIGNER_DEPTH or signer_key in self.active:
                return "validating its certificate would go round in circles"
            problem = "no certificate of it validates"
            for signer in certs:
                if not crl_sign_allowed(signer):
                    problem = f"{v.subject_text(signer)}: keyUsage does not allow cRLSign"
                    continue
                job = replace(
                    self, anchors=[anchor],
                    intermediates=[c for c in candidates if _sha(c) != _sha(signer)],
                    policy=replace(self.policy, purpose="any"),
                    depth=self.depth + 1, active=self.active | {signer_key},
                    signer=(signer_key, v.subject_text(signer), signer.serial_number),
                )
                verdict = job.run(signer, ())
                if verdict.valid and verdict.chain and _sha(verdict.chain[-1]) == anchor_sha:
                    return None
                problem = f"{v.subject_text(signer)}: {verdict.reason}"
            return problem

        return authorize


def _line(e: BaseException) -> str:
    return " ".join(str(e).split())[:200] or type(e).__name__


def crl_urls(cert: x509.Certificate) -> list[str]:
    """The http(s) URLs of the certificate's CRL distribution points."""
    try:
        cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return []
    urls = []
    for dp in cdp:
        for name in dp.full_name or ():
            if isinstance(name, x509.UniformResourceIdentifier) and name.value.lower().startswith(
                ("http://", "https://")
            ):
                urls.append(name.value)
    return urls
