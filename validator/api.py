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
points.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509

from idm.validator import verdict as v
from idm.validator.chain import is_self_signed, validate_chain
from idm.validator.errors import PARSE_ERRORS, FetchError, MalformedInputError
from idm.validator.policy import HARD_FAIL, OFF, REQUIRE, SOFT_FAIL, Policy, purpose_problem
from idm.validator.revocation.crl import CrlError, ca_key, index_crl
from idm.validator.revocation.fetch import Fetcher
from idm.validator.revocation.ocsp import OcspError, build_request, check_response, ocsp_urls
from idm.validator.revocation.store import MemoryRevocationStore, OcspRecord, RevocationStore
from idm.validator.verdict import RevocationEvidence, Verdict

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

    def verdict(status: str, reason: str, **kw: object) -> Verdict:
        return Verdict(
            status == v.VALID,
            status,
            reason,
            chain=outcome.chain,
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
    fresh = min(c.not_valid_after_utc for c in outcome.chain)
    if policy.revocation == OFF:
        return verdict(v.VALID, "path validated; revocation checking is off", fresh_until=fresh)
    check = _RevocationCheck(
        policy=policy,
        at=at,
        store=store if store is not None else MemoryRevocationStore(),
        fetcher=fetcher or Fetcher(),
        candidates=[*outcome.chain, *anchors, *intermediates],
    )
    check.load_supplied(crls)
    warnings.extend(check.warnings)
    check.warnings.clear()
    results = [
        check.check(outcome.chain[i], outcome.chain[i + 1]) for i in range(len(outcome.chain) - 1)
    ]
    warnings.extend(check.warnings)
    evidence = tuple(e for r in results for e in r.evidence)
    for r in results:
        if r.fresh_until is not None:
            fresh = min(fresh, r.fresh_until)
    revoked = [r for r in results if r.status == "revoked"]
    if revoked:
        return verdict(v.REVOKED, revoked[0].detail, revocation=evidence, fresh_until=fresh)
    unknown = [r for r in results if r.status == "unknown" and r.needed]
    if unknown:
        why = "; ".join(r.detail for r in unknown)
        if policy.revocation in (REQUIRE, HARD_FAIL):
            return verdict(
                v.REVOCATION_UNKNOWN,
                f"{policy.revocation}: {why}",
                revocation=evidence,
                fresh_until=fresh,
            )
        assert policy.revocation == SOFT_FAIL
        warnings.append(f"soft-fail: {why}")
    checked = sum(1 for r in results if r.status == "good")
    reason = f"path validated; revocation ({policy.revocation}): {checked} of {len(results)} "
    reason += "certificate(s) with fresh status"
    return verdict(v.VALID, reason, revocation=evidence, fresh_until=fresh)


@dataclass
class _CertResult:
    status: str  # good | revoked | unknown | none (no source, not needed)
    detail: str
    needed: bool
    evidence: list[RevocationEvidence] = field(default_factory=list)
    fresh_until: datetime | None = None


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


@dataclass
class _RevocationCheck:
    """Revocation status of each certificate of one path (see the module docstring)."""

    policy: Policy
    at: datetime
    store: RevocationStore
    fetcher: Fetcher
    candidates: list[x509.Certificate]
    warnings: list[str] = field(default_factory=list)
    supplied_issuers: set[str] = field(default_factory=set)

    def load_supplied(self, crls: Sequence[CrlInput]) -> None:
        for n, item in enumerate(crls):
            source, data = item if isinstance(item, tuple) else (f"CRL #{n + 1}", item)
            try:
                indexed = index_crl(data, source, self.candidates, self.store)
            except CrlError as e:
                self.warnings.append(f"{e}; ignored")
                continue
            self.supplied_issuers.add(indexed.info.issuer_key)

    def _now_or_at(self) -> list[datetime]:
        # For a validation in the past, data current now also speaks about then
        # (revocation is permanent and `revoked()` honours the revocation date).
        now = datetime.now(UTC)
        return [self.at] if self.at >= now else [self.at, now]

    def _revoked_result(
        self, cert: x509.Certificate, issuer_key: str, needed: bool
    ) -> _CertResult | None:
        entry = self.store.revoked(issuer_key, cert.serial_number, self.at)
        subject = v.subject_text(cert)
        if entry is not None:
            why = f" ({entry.reason})" if entry.reason else ""
            num = f" number {entry.crl_number}" if entry.crl_number is not None else ""
            ev = RevocationEvidence(subject, "crl", "revoked", None, None, None)
            for info in self.store.current_crls(issuer_key, self.at) or []:
                if info.sha256 == entry.crl_sha256:
                    ev = RevocationEvidence(
                        subject, "crl", "revoked", info.this_update, info.next_update, info.source
                    )
            return _CertResult(
                "revoked",
                f"{subject} (serial {cert.serial_number:x}) is revoked since "
                f"{entry.revoked_at.isoformat()}{why}, listed in CRL{num} of its issuer",
                needed,
                [ev],
            )
        rec = self.store.ocsp(issuer_key, cert.serial_number, self.at)
        if rec is not None and rec.status == "revoked":
            when = rec.revoked_at.isoformat() if rec.revoked_at else "an unknown time"
            why = f" ({rec.reason})" if rec.reason else ""
            return _CertResult(
                "revoked",
                f"{subject} (serial {cert.serial_number:x}) is revoked since {when}{why} "
                f"according to OCSP ({rec.url})",
                needed,
                [
                    RevocationEvidence(
                        subject, "ocsp", "revoked", rec.this_update, rec.next_update, rec.url
                    )
                ],
            )
        return None

    def _fresh_from_store(self, cert: x509.Certificate, issuer_key: str) -> _CertResult | None:
        subject = v.subject_text(cert)
        for when in self._now_or_at():
            current = self.store.current_crls(issuer_key, when)
            if current:
                info = current[0]
                return _CertResult(
                    "good",
                    "",
                    True,
                    [
                        RevocationEvidence(
                            subject, "crl", "good", info.this_update, info.next_update, info.source
                        )
                    ],
                    info.next_update,
                )
        rec = self.store.ocsp(issuer_key, cert.serial_number, max(self._now_or_at()))
        if rec is not None and rec.status == "good" and self._ocsp_fresh(rec):
            return _CertResult(
                "good",
                "",
                True,
                [
                    RevocationEvidence(
                        subject, "ocsp", "good", rec.this_update, rec.next_update, rec.url
                    )
                ],
                self._ocsp_until(rec),
            )
        return None

    def _ocsp_until(self, rec: OcspRecord) -> datetime:
        cap = rec.this_update + timedelta(seconds=self.policy.ocsp_max_age)
        return min(cap, rec.next_update) if rec.next_update else cap

    def _ocsp_fresh(self, rec: OcspRecord) -> bool:
        return rec.this_update <= max(self._now_or_at()) + timedelta(minutes=5) and (
            self.at <= self._ocsp_until(rec)
        )

    def check(self, cert: x509.Certificate, issuer: x509.Certificate) -> _CertResult:
        key = ca_key(issuer)
        subject = v.subject_text(cert)
        cdps = crl_urls(cert)
        ocsps = ocsp_urls(cert) or ([self.policy.ocsp_url] if self.policy.ocsp_url else [])
        at_hand = key in self.supplied_issuers or bool(self.store.current_crls(key, self.at))
        needed = self.policy.revocation == REQUIRE or bool(cdps or ocsps or at_hand)
        hit = self._revoked_result(cert, key, needed)
        if hit:
            return hit
        fresh = self._fresh_from_store(cert, key)
        if fresh:
            return fresh
        evidence: list[RevocationEvidence] = []
        errors: list[str] = []
        if key in self.supplied_issuers:
            errors.append("the CRL given for its issuer is not current")
            evidence.append(RevocationEvidence(subject, "crl", "unknown", None, None, None))
        if self.policy.offline:
            if not errors:
                errors.append("offline and nothing fresh in the cache")
        else:
            for url in ocsps:
                result = self._try_ocsp(cert, issuer, key, url, evidence, errors)
                if result:
                    return result
            for url in cdps:
                result = self._try_crl(cert, issuer, key, url, evidence, errors)
                if result:
                    return result
        if not (cdps or ocsps or at_hand) and not errors:
            errors.append("no CRL distribution point, no OCSP responder and no CRL held")
        return _CertResult(
            "unknown" if needed else "none",
            f"no fresh revocation status for {subject}: " + "; ".join(errors),
            needed,
            evidence,
        )

    def _try_ocsp(
        self,
        cert: x509.Certificate,
        issuer: x509.Certificate,
        key: str,
        url: str,
        evidence: list[RevocationEvidence],
        errors: list[str],
    ) -> _CertResult | None:
        subject = v.subject_text(cert)
        try:
            request, nonce = build_request(cert, issuer)
            data = self.fetcher.post_ocsp(url, request)
            st = check_response(
                data,
                cert,
                issuer,
                nonce=nonce,
                at=max(self._now_or_at()),
                max_age=self.policy.ocsp_max_age,
                what=f"OCSP {url}",
            )
        except (FetchError, OcspError, MalformedInputError) as e:
            errors.append(str(e))
            evidence.append(RevocationEvidence(subject, "ocsp", "unknown", None, None, url))
            return None
        record = OcspRecord(
            key,
            cert.serial_number,
            st.status,
            st.this_update,
            st.next_update,
            st.produced_at,
            st.revoked_at,
            st.reason,
            url,
            data,
        )
        self.store.store_ocsp(record)
        ev = RevocationEvidence(subject, "ocsp", st.status, st.this_update, st.next_update, url)
        if st.status == "revoked" and st.revoked_at is not None and st.revoked_at <= self.at:
            why = f" ({st.reason})" if st.reason else ""
            return _CertResult(
                "revoked",
                f"{subject} (serial {cert.serial_number:x}) is revoked since "
                f"{st.revoked_at.isoformat()}{why} according to OCSP ({url})",
                True,
                [*evidence, ev],
            )
        if st.status == "unknown":
            errors.append(f"OCSP {url}: responder does not know the certificate")
            evidence.append(ev)
            return None
        return _CertResult("good", "", True, [ev], self._ocsp_until(record))

    def _try_crl(
        self,
        cert: x509.Certificate,
        issuer: x509.Certificate,
        key: str,
        url: str,
        evidence: list[RevocationEvidence],
        errors: list[str],
    ) -> _CertResult | None:
        subject = v.subject_text(cert)
        try:
            data = self.fetcher.get_crl(url)
            indexed = index_crl(data, url, [issuer, *self.candidates], self.store)
        except (FetchError, CrlError, MalformedInputError) as e:
            errors.append(str(e))
            evidence.append(RevocationEvidence(subject, "crl", "unknown", None, None, url))
            return None
        if indexed.info.issuer_key != key:
            errors.append(f"{url}: CRL is not from the certificate's issuer")
            evidence.append(RevocationEvidence(subject, "crl", "unknown", None, None, url))
            return None
        hit = self._revoked_result(cert, key, True)
        if hit:
            info = indexed.info
            hit.evidence = [
                RevocationEvidence(
                    subject, "crl", "revoked", info.this_update, info.next_update, url
                )
            ]
            return hit
        fresh = self._fresh_from_store(cert, key)
        if fresh:
            return fresh
        info = indexed.info
        nu = info.next_update.isoformat() if info.next_update else "none"
        errors.append(f"{url}: CRL is stale (nextUpdate {nu})")
        evidence.append(
            RevocationEvidence(subject, "crl", "unknown", info.this_update, info.next_update, url)
        )
        return None
