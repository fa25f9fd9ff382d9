"""The validator's one entry point: `validate()` turns a certificate into a `Verdict`.

Order of the rules (the first that fails decides, and its reason is reported):
1. the certificate parses (else `malformed`);
2. a path to a trust anchor exists and passes RFC 5280 validation (chain.py: `untrusted`,
   `expired`, `not-yet-valid`, `invalid-path`, or `invalid-path` when the budget is spent);
3. the leaf fits the purpose (policy.py: `invalid-path`);
4. revocation, for every certificate of the path below the anchor (`revoked`,
   `revocation-unknown`): see `_RevocationCheck`.

Revocation sources, cheapest first: the store (a serial listed in ANY CRL held for the
issuer is revoked in every mode but "off", whether or not the certificate names a
distribution point; a current CRL or a fresh cached OCSP answer is status), CRLs supplied
by the caller (indexed into the store once per issuer and CRL number), then, unless
offline, OCSP (AIA or the policy's URL) and the certificate's http(s) CRL distribution
points (idm.validator.revocation.check).

When the store also keeps validated paths (idm.validator.memo.PathMemo), rule 2 is
answered from it for a path that validated before with the same inputs, without
pyhanko-certvalidator; revocation is checked every time all the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from idm.validator import verdict as v
from idm.validator.chain import PathOutcome, is_self_signed, validate_chain
from idm.validator.errors import PARSE_ERRORS, MalformedInputError
from idm.validator.memo import PathMemo, load_path_record, path_key, record_for
from idm.validator.policy import OFF, Policy, purpose_problem
from idm.validator.revocation.check import CertFacts, RevocationCheck, revocation_verdict
from idm.validator.revocation.crl import ca_key
from idm.validator.revocation.fetch import Fetcher
from idm.validator.revocation.ocsp import ocsp_urls
from idm.validator.revocation.store import MemoryRevocationStore, RevocationStore
from idm.validator.verdict import Verdict

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
    input), one that no known CA signed is ignored with a warning.
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
    try:
        return _validate(cert, anchors, intermediates, policy, at, store, fetcher, crls)
    except MalformedInputError:
        raise
    except PARSE_ERRORS as e:
        # cryptography parses extensions lazily: a broken one surfaces here.
        return Verdict(False, v.MALFORMED, f"certificate could not be parsed: {e}", leaf=cert)


def _sha(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def facts_for(cert: x509.Certificate, issuer: x509.Certificate) -> CertFacts:
    """What revocation checking needs of `cert`, issued by `issuer`."""
    return CertFacts(
        v.subject_text(cert),
        cert.serial_number,
        ca_key(issuer),
        tuple(crl_urls(cert)),
        tuple(ocsp_urls(cert)),
    )


def _remembered(
    memo: PathMemo, key: str, at: datetime, certs: Sequence[x509.Certificate]
) -> PathOutcome | None:
    """The path remembered under `key` for `at`, rebuilt from the certificates given."""
    record = load_path_record(memo, key, at)
    if record is None:
        return None
    by_sha = {_sha(c): c for c in certs}
    if not all(s in by_sha for s in record.chain_sha256):
        return None
    chain = tuple(by_sha[s] for s in record.chain_sha256)
    return PathOutcome(v.VALID, "path validated", chain, record.warnings)


def _validate(
    cert: x509.Certificate,
    anchors: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate],
    policy: Policy,
    at: datetime,
    store: RevocationStore | None,
    fetcher: Fetcher | None,
    crls: Sequence[CrlInput],
) -> Verdict:
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
            cert,
            intermediates,
            anchors,
            at=at,
            max_intermediates=policy.max_intermediates,
            max_pool=policy.max_pool,
            budget_seconds=policy.budget_seconds,
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
        return verdict(v.VALID, "path validated; revocation checking is off", fresh_until=fresh)
    check = RevocationCheck(
        policy=policy,
        at=at,
        store=store if store is not None else MemoryRevocationStore(),
        fetcher=fetcher or Fetcher(),
        candidates=[*chain, *anchors, *intermediates],
    )
    check.load_supplied(crls)
    warnings.extend(check.warnings)
    check.warnings.clear()
    pairs = [(chain[i], chain[i + 1]) for i in range(len(chain) - 1)]
    return revocation_verdict(check, facts, pairs, fresh, warnings, verdict)


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
