"""Revocation status of each certificate of a validated path, and the verdict it leads to.

Works on `CertFacts` (subject, serial, issuer, distribution points, OCSP URLs), not on
parsed certificates, so that a check answered entirely from the store does not import
`cryptography`: `idm.validator.memo.express` runs it over facts remembered with a
validated path. The parsed certificates are needed only to go to the network, to index a
supplied CRL, or to validate a CRL signer other than the certificate's issuer; without
them (`pair is None`, no `authorize`), reaching that point raises `NeedsFullValidation`
and the caller validates the usual way, so both ways share one set of rules.

CRLs (RFC 5280 §6.3.3), for every distribution point of the certificate and then for the
certificate's issuer as a notional one:
- a CRL counts for a certificate only when its issuer is authorised: the certificate's
  issuer signed it and its keyUsage (when present) allows cRLSign, or another key whose
  certificate has cRLSign and validates to the same trust anchor signed it (key rollover,
  a separate CRL key, an indirect CRL named by the distribution point's cRLIssuer);
- and when its scope covers the certificate (issuingDistributionPoint names, only user /
  CA / attribute certificates, indirect);
- reasons are accumulated over current complete CRLs (onlySomeReasons and the
  distribution point's reasons) until all are covered; a current delta CRL of the same
  signer and scope whose base is not newer than the complete CRL is applied on top of it
  (removeFromCRL releases a hold);
- an entry of an indirect CRL counts for the issuer its certificateIssuer names.
A serial listed with a permanent reason (anything but certificateHold) in ANY held CRL
that counts for the certificate, current or not, is revoked: revocation is final, and an
older CRL cannot make it undone. CRLs at hand for the issuer (held, or supplied and
found unusable) make status needed under hard-fail. OCSP (cached, then AIA or the
policy's URL) and the certificate's http(s) distribution points are the other sources.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from idm.validator import verdict as v
from idm.validator.errors import FetchError, MalformedInputError
from idm.validator.policy import HARD_FAIL, REQUIRE, SOFT_FAIL, Policy
from idm.validator.revocation.scope import ALL_REASONS, CrlScope, DistPoint
from idm.validator.revocation.store import CrlInfo, OcspRecord, RevocationStore, RevokedEntry
from idm.validator.verdict import RevocationEvidence, Verdict

if TYPE_CHECKING:
    from cryptography import x509

    from idm.validator.revocation.fetch import Fetcher

_NOT_FINAL = ("certificate_hold", "remove_from_crl")


class NeedsFullValidation(Exception):
    """A check over facts alone would need the network, a new CRL or a signer's path."""


@dataclass(frozen=True)
class CertFacts:
    """What revocation checking needs to know of one certificate below the anchor.

    `issuer_key`: the store's key of the next certificate of the path (name and key);
    `issuer_name`: the `name_key` of the certificate's issuer; `dps`: its CRL
    distribution points; `issuer_crl_sign`: whether the issuer's certificate may sign
    CRLs (keyUsage absent or with cRLSign).
    """

    subject: str  # RFC 4514
    serial: int
    issuer_key: str
    crl_urls: tuple[str, ...]
    ocsp_urls: tuple[str, ...]
    issuer_name: str = ""
    is_ca: bool = False
    dps: tuple[DistPoint, ...] = ()
    issuer_crl_sign: bool = True

    def points(self) -> tuple[DistPoint, ...]:
        """The distribution points, then the notional one: the issuer itself (§6.3.3)."""
        return (*self.dps, DistPoint(frozenset({"dn:" + self.issuer_name})))

    def crl_issuer_names(self) -> set[str]:
        return {self.issuer_name, *(n for dp in self.dps for n in dp.crl_issuers)}


@dataclass
class CertResult:
    status: str  # good | revoked | unknown | none (no source, not needed)
    detail: str
    needed: bool
    evidence: list[RevocationEvidence] = field(default_factory=list)
    fresh_until: datetime | None = None


Pair = tuple["x509.Certificate", "x509.Certificate"]
Authorize = Callable[[str, CertFacts], "str | None"]
"""Decides whether the certificate with this store key may sign CRLs for these facts
(its path validates to the same anchor, its keyUsage allows cRLSign): None, or why not."""


@dataclass
class _CrlState:
    status: str  # revoked | good | undetermined
    detail: str = ""
    evidence: list[RevocationEvidence] = field(default_factory=list)
    fresh_until: datetime | None = None
    problems: list[str] = field(default_factory=list)
    at_hand: bool = False


@dataclass
class RevocationCheck:
    """Revocation status of each certificate of one path (see the module docstring)."""

    policy: Policy
    at: datetime
    store: RevocationStore
    fetcher: Fetcher | None
    candidates: list[x509.Certificate]
    warnings: list[str] = field(default_factory=list)
    supplied: set[str] = field(default_factory=set)  # issuer names of usable supplied CRLs
    unusable: dict[str, list[str]] = field(default_factory=dict)  # issuer name -> why
    authorize: Authorize | None = None
    deadline: float | None = None  # time.monotonic() after which nothing is fetched

    def load_supplied(self, crls: Sequence[bytes | tuple[str, bytes]]) -> None:
        """Index the CRLs the caller gave; an unusable one is remembered for its issuer."""
        from idm.validator.revocation.crl import CrlError, index_crl

        for n, item in enumerate(crls):
            source, data = item if isinstance(item, tuple) else (f"CRL #{n + 1}", item)
            try:
                indexed = index_crl(data, source, self.candidates, self.store, self.policy)
            except CrlError as e:
                self.warnings.append(f"{e}; not used")
                if e.issuer_name:
                    self.unusable.setdefault(e.issuer_name, []).append(str(e))
                continue
            self.supplied.add(indexed.info.issuer_name)

    # -- the clock ----------------------------------------------------------------------

    def _now_or_at(self) -> list[datetime]:
        # For a validation in the past, data current now also speaks about then
        # (revocation is permanent and entries count only from their revocation date).
        now = datetime.now(UTC)
        return [self.at] if self.at >= now else [self.at, now]

    def _current(self, info: CrlInfo) -> bool:
        return info.next_update is not None and any(
            info.this_update <= t <= info.next_update for t in self._now_or_at()
        )

    # -- CRLs ---------------------------------------------------------------------------

    def _signer_problem(
        self, info: CrlInfo, f: CertFacts, indirect: bool, cache: dict[str, str | None]
    ) -> str | None:
        """Why the CRL's signer may not speak for the certificate's issuer, or None."""
        if info.issuer_key == f.issuer_key and not indirect:
            return None if f.issuer_crl_sign else "its issuer's keyUsage does not allow cRLSign"
        if info.issuer_key not in cache:
            if self.authorize is None:
                raise NeedsFullValidation("a CRL signer other than the issuer must be validated")
            cache[info.issuer_key] = self.authorize(info.issuer_key, f)
        problem = cache[info.issuer_key]
        return None if problem is None else f"its signer is not authorised ({problem})"

    def _crl_state(self, f: CertFacts) -> _CrlState:
        names = f.crl_issuer_names()
        held = {n: self.store.crls_named(n) for n in names}
        state = _CrlState("undetermined")
        state.at_hand = any(held.values()) or bool(names & (self.supplied | set(self.unusable)))
        for n in sorted(names):
            state.problems.extend(self.unusable.get(n, []))
        auth: dict[str, str | None] = {}
        per_dp: list[tuple[DistPoint, list[tuple[CrlInfo, CrlScope]]]] = []
        in_scope: dict[str, tuple[CrlInfo, CrlScope]] = {}
        rejected: dict[str, str] = {}
        for dp in f.points():
            indirect = bool(dp.crl_issuers)
            found = []
            for name in sorted(dp.crl_issuers) if indirect else [f.issuer_name]:
                for info in held.get(name, []):
                    scope = CrlScope.from_text(info.scope)
                    why = scope.problem_for(dp, f.is_ca, indirect) or self._signer_problem(
                        info, f, indirect, auth
                    )
                    if why is None:
                        found.append((info, scope))
                        in_scope[info.sha256] = (info, scope)
                    else:
                        rejected.setdefault(info.sha256, f"{_label(info)} does not count: {why}")
            per_dp.append((dp, found))
        state.problems.extend(w for sha, w in rejected.items() if sha not in in_scope)
        if not in_scope:
            return state
        listed = self._listed(f, in_scope)
        final = [e for e in listed.values() if e.reason not in _NOT_FINAL]
        if final:
            entry = min(final, key=lambda e: e.revoked_at)
            return self._revoked_state(f, entry, in_scope[entry.crl_sha256][0], state)
        covered: set[str] = set()
        used: list[CrlInfo] = []
        for dp, found in per_dp:
            completes = sorted(
                (c for c in found if not c[1].is_delta and self._current(c[0])),
                key=lambda c: (-(c[0].crl_number or 0), -c[0].this_update.timestamp(),
                               c[0].sha256),
            )
            for info, scope in completes:
                interim = (scope.reasons or ALL_REASONS) & (dp.reasons or ALL_REASONS)
                if not interim - covered:
                    continue
                delta = self._delta_for(info, scope, found)
                entry = listed.get(delta.sha256) if delta else None
                if entry is None:
                    entry = listed.get(info.sha256)
                    if entry is not None and entry.reason == "remove_from_crl":
                        entry = None  # removeFromCRL belongs in delta CRLs only
                if entry is not None and entry.reason != "remove_from_crl":
                    source = delta if delta and entry.crl_sha256 == delta.sha256 else info
                    return self._revoked_state(f, entry, source, state)
                covered |= interim
                used.extend([info, delta] if delta else [info])
        if covered >= ALL_REASONS:
            state.status = "good"
            state.evidence = [
                RevocationEvidence(f.subject, "crl", "good", i.this_update, i.next_update,
                                   i.source)
                for i in used
            ]
            state.fresh_until = min(i.next_update for i in used if i.next_update)
            return state
        if used:
            missing = ", ".join(sorted(ALL_REASONS - covered))
            state.problems.append(f"the current CRLs do not cover the reasons {missing}")
        else:
            stale = [i for i, sc in in_scope.values() if not sc.is_delta]
            state.problems.extend(
                f"{_label(i)} is not current (nextUpdate "
                f"{i.next_update.isoformat() if i.next_update else 'none'})"
                for i in stale
            )
            if not stale:
                state.problems.append("no complete CRL covers it, only delta CRLs")
        return state

    def _listed(
        self, f: CertFacts, in_scope: dict[str, tuple[CrlInfo, CrlScope]]
    ) -> dict[str, RevokedEntry]:
        """The entries about this certificate, by CRL: for its issuer, in effect at `at`."""
        listed: dict[str, RevokedEntry] = {}
        for e in self.store.crl_entries(sorted(in_scope), f.serial):
            info = in_scope[e.crl_sha256][0]
            if (e.cert_issuer or info.issuer_name) != f.issuer_name or e.revoked_at > self.at:
                continue
            held = listed.get(e.crl_sha256)
            if held is None or e.revoked_at < held.revoked_at:
                listed[e.crl_sha256] = e
        return listed

    def _delta_for(
        self, base: CrlInfo, scope: CrlScope, found: list[tuple[CrlInfo, CrlScope]]
    ) -> CrlInfo | None:
        """The newest current delta CRL that applies to the complete CRL `base`."""
        if base.crl_number is None:
            return None
        deltas = [
            d for d, s in found
            if s.is_delta and s.key() == scope.key() and d.issuer_key == base.issuer_key
            and d.crl_number is not None and d.crl_number > base.crl_number
            and (s.delta_base or 0) <= base.crl_number and self._current(d)
        ]
        return max(deltas, key=lambda d: d.crl_number or 0) if deltas else None

    def _revoked_state(
        self, f: CertFacts, entry: RevokedEntry, info: CrlInfo, state: _CrlState
    ) -> _CrlState:
        why = f" ({entry.reason})" if entry.reason else ""
        state.status = "revoked"
        state.detail = (
            f"{f.subject} (serial {f.serial:x}) is revoked since "
            f"{entry.revoked_at.isoformat()}{why}, listed in {_label(info)} of its issuer"
        )
        state.evidence = [RevocationEvidence(
            f.subject, "crl", "revoked", info.this_update, info.next_update, info.source
        )]
        return state

    # -- OCSP ---------------------------------------------------------------------------

    def _ocsp_until(self, rec: OcspRecord) -> datetime:
        cap = rec.this_update + timedelta(seconds=self.policy.ocsp_max_age)
        return min(cap, rec.next_update) if rec.next_update else cap

    def _ocsp_fresh(self, rec: OcspRecord) -> bool:
        return rec.this_update <= max(self._now_or_at()) + timedelta(minutes=5) and (
            self.at <= self._ocsp_until(rec)
        )

    def _ocsp_revoked(self, f: CertFacts, rec: OcspRecord, url: str) -> CertResult:
        when = rec.revoked_at.isoformat() if rec.revoked_at else "an unknown time"
        why = f" ({rec.reason})" if rec.reason else ""
        return CertResult(
            "revoked",
            f"{f.subject} (serial {f.serial:x}) is revoked since {when}{why} "
            f"according to OCSP ({url})",
            True,
            [RevocationEvidence(f.subject, "ocsp", "revoked", rec.this_update, rec.next_update,
                                url)],
        )

    # -- one certificate ----------------------------------------------------------------

    def check(self, f: CertFacts, pair: Pair | None) -> CertResult:
        """Status of one certificate; `pair` = (certificate, issuer) when parsed."""
        ocsps = list(f.ocsp_urls) or ([self.policy.ocsp_url] if self.policy.ocsp_url else [])
        state = self._crl_state(f)
        needed = self.policy.revocation == REQUIRE or bool(f.dps or ocsps or state.at_hand)
        rec = self.store.ocsp(f.issuer_key, f.serial, self.at)
        if state.status == "revoked":
            return CertResult("revoked", state.detail, needed, state.evidence)
        if rec is not None and rec.status == "revoked":
            return self._ocsp_revoked(f, rec, rec.url)
        if state.status == "good":
            return CertResult("good", "", True, state.evidence, state.fresh_until)
        fresh = self.store.ocsp(f.issuer_key, f.serial, max(self._now_or_at()))
        if fresh is not None and fresh.status == "good" and self._ocsp_fresh(fresh):
            return CertResult(
                "good", "", True,
                [RevocationEvidence(f.subject, "ocsp", "good", fresh.this_update,
                                    fresh.next_update, fresh.url)],
                self._ocsp_until(fresh),
            )
        evidence: list[RevocationEvidence] = []
        errors = list(state.problems)
        if self.policy.offline:
            errors.append("offline and nothing fresh in the cache")
        elif ocsps or f.crl_urls:
            if pair is None or self.fetcher is None:
                raise NeedsFullValidation("revocation status must be fetched")
            cert, issuer = pair
            for url in ocsps:
                result = self._try_ocsp(f, cert, issuer, url, evidence, errors)
                if result:
                    return result
            fetched = False
            for url in f.crl_urls:
                fetched = self._try_crl(f, issuer, url, evidence, errors) or fetched
            if fetched:
                state = self._crl_state(f)
                if state.status == "revoked":
                    return CertResult("revoked", state.detail, True, state.evidence)
                if state.status == "good":
                    return CertResult("good", "", True, state.evidence, state.fresh_until)
                errors.extend(p for p in state.problems if p not in errors)
        if not (f.dps or ocsps or state.at_hand or errors):
            errors.append("no CRL distribution point, no OCSP responder and no CRL held")
        if not errors:
            errors.append("no CRL or OCSP status could be had")
        return CertResult(
            "unknown" if needed else "none",
            f"no fresh revocation status for {f.subject}: " + "; ".join(_unique(errors)),
            needed,
            evidence,
        )

    def _time_left(self) -> float | None:
        """Seconds left before the deadline (None: no deadline); raises FetchError at 0."""
        if self.deadline is None:
            return None
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise FetchError("the validation deadline was reached before the status came")
        return left

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
        try:
            request, nonce = build_request(cert, issuer)
            data = self.fetcher.post_ocsp(url, request, time_limit=self._time_left())
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
            evidence.append(RevocationEvidence(f.subject, "ocsp", "unknown", None, None, url))
            return None
        record = OcspRecord(
            f.issuer_key, f.serial, st.status, st.this_update, st.next_update, st.produced_at,
            st.revoked_at, st.reason, url, data,
        )
        self.store.store_ocsp(record)
        ev = RevocationEvidence(f.subject, "ocsp", st.status, st.this_update, st.next_update, url)
        if st.status == "revoked" and st.revoked_at is not None and st.revoked_at <= self.at:
            return self._ocsp_revoked(f, record, url)
        if st.status != "good":
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
    ) -> bool:
        """Fetch and index the CRL at `url`; True when the store now holds it."""
        from idm.validator.revocation.crl import CrlError, index_crl

        assert self.fetcher is not None
        try:
            data = self.fetcher.get_crl(url, time_limit=self._time_left())
            index_crl(data, url, [issuer, *self.candidates], self.store, self.policy)
        except CrlError as e:
            errors.append(str(e))
            if e.issuer_name:
                self.unusable.setdefault(e.issuer_name, []).append(str(e))
            evidence.append(RevocationEvidence(f.subject, "crl", "unknown", None, None, url))
            return False
        except (FetchError, MalformedInputError) as e:
            errors.append(str(e))
            evidence.append(RevocationEvidence(f.subject, "crl", "unknown", None, None, url))
            return False
        return True


def _label(info: CrlInfo) -> str:
    kind = "delta CRL" if CrlScope.from_text(info.scope).is_delta else "CRL"
    number = f" number {info.crl_number}" if info.crl_number is not None else ""
    source = f" ({info.source})" if info.source else ""
    return f"{kind}{number}{source}"


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


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
