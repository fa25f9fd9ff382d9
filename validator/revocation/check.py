"""Revocation status of each certificate of a validated path, and the verdict it leads to.

Works on `CertFacts` (subject, serial, issuer key, CRL and OCSP URLs), not on parsed
certificates, so that a check answered entirely from the store does not import
`cryptography`: `idm.validator.memo.express` runs it over facts remembered with a
validated path. The parsed certificates are needed only to go to the network (OCSP
requests, CRL downloads) or to index a supplied CRL; without them (`pair is None`),
reaching that point raises `NeedsFullValidation` and the caller validates the usual way,
so both ways share one set of rules and give the same verdict.

Rules (see idm.validator.api): a serial listed in ANY CRL held for the issuer is revoked
in every mode but "off", whether or not the certificate names a distribution point; a
current CRL or a fresh cached OCSP answer is status; unless offline, OCSP (AIA or the
policy's URL) and then the certificate's http(s) CRL distribution points are tried.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from idm.validator import verdict as v
from idm.validator.errors import FetchError, MalformedInputError
from idm.validator.policy import HARD_FAIL, REQUIRE, SOFT_FAIL, Policy
from idm.validator.revocation.store import OcspRecord, RevocationStore
from idm.validator.verdict import RevocationEvidence, Verdict

if TYPE_CHECKING:
    from cryptography import x509

    from idm.validator.revocation.fetch import Fetcher


class NeedsFullValidation(Exception):
    """A check over facts alone would need the network or a new CRL: validate fully."""


@dataclass(frozen=True)
class CertFacts:
    """What revocation checking needs to know of one certificate below the anchor."""

    subject: str  # RFC 4514
    serial: int
    issuer_key: str  # the store's key of the next certificate of the path
    crl_urls: tuple[str, ...]
    ocsp_urls: tuple[str, ...]


@dataclass
class CertResult:
    status: str  # good | revoked | unknown | none (no source, not needed)
    detail: str
    needed: bool
    evidence: list[RevocationEvidence] = field(default_factory=list)
    fresh_until: datetime | None = None


Pair = tuple["x509.Certificate", "x509.Certificate"]


@dataclass
class RevocationCheck:
    """Revocation status of each certificate of one path (see the module docstring)."""

    policy: Policy
    at: datetime
    store: RevocationStore
    fetcher: Fetcher | None
    candidates: list[x509.Certificate]
    warnings: list[str] = field(default_factory=list)
    supplied_issuers: set[str] = field(default_factory=set)

    def load_supplied(self, crls: Sequence[bytes | tuple[str, bytes]]) -> None:
        from idm.validator.revocation.crl import CrlError, index_crl

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

    def _revoked_result(self, f: CertFacts, needed: bool) -> CertResult | None:
        entry = self.store.revoked(f.issuer_key, f.serial, self.at)
        if entry is not None:
            why = f" ({entry.reason})" if entry.reason else ""
            num = f" number {entry.crl_number}" if entry.crl_number is not None else ""
            ev = RevocationEvidence(f.subject, "crl", "revoked", None, None, None)
            for info in self.store.current_crls(f.issuer_key, self.at) or []:
                if info.sha256 == entry.crl_sha256:
                    ev = RevocationEvidence(
                        f.subject,
                        "crl",
                        "revoked",
                        info.this_update,
                        info.next_update,
                        info.source,
                    )
            return CertResult(
                "revoked",
                f"{f.subject} (serial {f.serial:x}) is revoked since "
                f"{entry.revoked_at.isoformat()}{why}, listed in CRL{num} of its issuer",
                needed,
                [ev],
            )
        rec = self.store.ocsp(f.issuer_key, f.serial, self.at)
        if rec is not None and rec.status == "revoked":
            when = rec.revoked_at.isoformat() if rec.revoked_at else "an unknown time"
            why = f" ({rec.reason})" if rec.reason else ""
            return CertResult(
                "revoked",
                f"{f.subject} (serial {f.serial:x}) is revoked since {when}{why} "
                f"according to OCSP ({rec.url})",
                needed,
                [
                    RevocationEvidence(
                        f.subject, "ocsp", "revoked", rec.this_update, rec.next_update, rec.url
                    )
                ],
            )
        return None

    def _fresh_from_store(self, f: CertFacts) -> CertResult | None:
        for when in self._now_or_at():
            current = self.store.current_crls(f.issuer_key, when)
            if current:
                info = current[0]
                return CertResult(
                    "good",
                    "",
                    True,
                    [
                        RevocationEvidence(
                            f.subject,
                            "crl",
                            "good",
                            info.this_update,
                            info.next_update,
                            info.source,
                        )
                    ],
                    info.next_update,
                )
        rec = self.store.ocsp(f.issuer_key, f.serial, max(self._now_or_at()))
        if rec is not None and rec.status == "good" and self._ocsp_fresh(rec):
            return CertResult(
                "good",
                "",
                True,
                [
                    RevocationEvidence(
                        f.subject, "ocsp", "good", rec.this_update, rec.next_update, rec.url
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

    def check(self, f: CertFacts, pair: Pair | None) -> CertResult:
        """Status of one certificate; `pair` = (certificate, issuer) when parsed."""
        key = f.issuer_key
        subject = f.subject
        cdps = list(f.crl_urls)
        ocsps = list(f.ocsp_urls) or ([self.policy.ocsp_url] if self.policy.ocsp_url else [])
        at_hand = key in self.supplied_issuers or bool(self.store.current_crls(key, self.at))
        needed = self.policy.revocation == REQUIRE or bool(cdps or ocsps or at_hand)
        hit = self._revoked_result(f, needed)
        if hit:
            return hit
        fresh = self._fresh_from_store(f)
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
        elif ocsps or cdps:
            if pair is None or self.fetcher is None:
                raise NeedsFullValidation("revocation status must be fetched")
            cert, issuer = pair
            for url in ocsps:
                result = self._try_ocsp(f, cert, issuer, url, evidence, errors)
                if result:
                    return result
            for url in cdps:
                result = self._try_crl(f, issuer, url, evidence, errors)
                if result:
                    return result
        if not (cdps or ocsps or at_hand) and not errors:
            errors.append("no CRL distribution point, no OCSP responder and no CRL held")
        return CertResult(
            "unknown" if needed else "none",
            f"no fresh revocation status for {subject}: " + "; ".join(errors),
            needed,
            evidence,
        )

    def _try_ocsp(
        self,
        f: CertFacts,
        cert: x509.Certificate,
        issuer: x509.Certificate,
        url: str,
        evidence: list[RevocationEvidence],
        errors: list[str],
    ) -> CertResult | None:
        from idm.validator.revocation.ocsp import OcspError, build_request, check_response

        assert self.fetcher is not None
        subject = f.subject
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
            f.issuer_key,
            f.serial,
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
            return CertResult(
                "revoked",
                f"{subject} (serial {f.serial:x}) is revoked since "
                f"{st.revoked_at.isoformat()}{why} according to OCSP ({url})",
                True,
                [*evidence, ev],
            )
        if st.status == "unknown":
            errors.append(f"OCSP {url}: responder does not know the certificate")
            evidence.append(ev)
            return None
        return CertResult("good", "", True, [ev], self._ocsp_until(record))

    def _try_crl(
        self,
        f: CertFacts,
        issuer: x509.Certificate,
        url: str,
        evidence: list[RevocationEvidence],
        errors: list[str],
    ) -> CertResult | None:
        from idm.validator.revocation.crl import CrlError, index_crl

        assert self.fetcher is not None
        subject = f.subject
        try:
            data = self.fetcher.get_crl(url)
            indexed = index_crl(data, url, [issuer, *self.candidates], self.store)
        except (FetchError, CrlError, MalformedInputError) as e:
            errors.append(str(e))
            evidence.append(RevocationEvidence(subject, "crl", "unknown", None, None, url))
            return None
        if indexed.info.issuer_key != f.issuer_key:
            errors.append(f"{url}: CRL is not from the certificate's issuer")
            evidence.append(RevocationEvidence(subject, "crl", "unknown", None, None, url))
            return None
        hit = self._revoked_result(f, True)
        if hit:
            info = indexed.info
            hit.evidence = [
                RevocationEvidence(
                    subject, "crl", "revoked", info.this_update, info.next_update, url
                )
            ]
            return hit
        fresh = self._fresh_from_store(f)
        if fresh:
            return fresh
        info = indexed.info
        nu = info.next_update.isoformat() if info.next_update else "none"
        errors.append(f"{url}: CRL is stale (nextUpdate {nu})")
        evidence.append(
            RevocationEvidence(subject, "crl", "unknown", info.this_update, info.next_update, url)
        )
        return None


def revocation_verdict(
    check: RevocationCheck,
    facts: Sequence[CertFacts],
    pairs: Sequence[Pair] | None,
    fresh: datetime,
    warnings: list[str],
    make: Any,
) -> Verdict:
    """The verdict of a validated path once revocation is checked (policy not "off").

    `make(status, reason, **fields)` builds the Verdict (it knows the chain and leaf);
    `warnings` is the list that verdict will carry, extended here.
    """
    policy = check.policy
    results = [check.check(f, pairs[i] if pairs else None) for i, f in enumerate(facts)]
    warnings.extend(check.warnings)
    evidence = tuple(e for r in results for e in r.evidence)
    for r in results:
        if r.fresh_until is not None:
            fresh = min(fresh, r.fresh_until)
    revoked = [r for r in results if r.status == "revoked"]
    if revoked:
        return make(v.REVOKED, revoked[0].detail, revocation=evidence, fresh_until=fresh)
    unknown = [r for r in results if r.status == "unknown" and r.needed]
    if unknown:
        why = "; ".join(r.detail for r in unknown)
        if policy.revocation in (REQUIRE, HARD_FAIL):
            return make(
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
    return make(v.VALID, reason, revocation=evidence, fresh_until=fresh)
