"""The agent's validation gate: cached verdicts, refreshed before they go stale.

An identity is offered, and may sign, only while its certificate's verdict is *usable*:
valid, and ``now < fresh_until`` (the earliest nextUpdate of the revocation evidence or
notAfter in the chain, as the validator computed it). Verdicts come from the one
:class:`~idm.identity.checker.CertificateChecker` built from the configuration, and
are kept in memory so that listing and signing never validate anything.

Refresh rule: a verdict is checked again at ``min(fresh_until - margin, checked +
refresh_interval)`` (``margin`` is a tenth of the time left, at most a minute), and at
once when :meth:`ValidationGate.check` is called with ``force``. Each check asks the OCSP
responder / CRL distribution point afresh (as ``idm refresh`` does, through
:class:`~idm.identity.server.refresh.FreshFirstStore`); only when that fails
(revocation-unknown) does cached status still within its nextUpdate decide.

A certificate found revoked or expired gets that status in the inventory, with the
verdict's reason, as an event by ``idm agent``; any other failed verdict (responder down
under hard-fail, untrusted path...) only withholds the identity, is logged, and is
retried after ``retry_interval``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from cryptography import x509

from idm.identity.agent.agentlog import log
from idm.identity.checker import CertificateChecker
from idm.identity.inventory.store import CertificateRecord, Inventory
from idm.identity.server.refresh import FreshFirstStore
from idm.validator import verdict as v

COMMAND = "idm agent"


@dataclass(frozen=True)
class GateVerdict:
    """A verdict as the gate keeps it: times as epoch floats, ready for cheap checks."""

    valid: bool
    status: str
    reason: str
    chain: tuple[x509.Certificate, ...]
    ssh_identity: str
    fresh_until: float | None  # epoch seconds; None: no limit known
    checked_at: float
    next_check: float

    def usable(self, now: float) -> bool:
        """Valid, and still fresh at ``now`` (epoch seconds)."""
        return self.valid and (self.fresh_until is None or now < self.fresh_until)


class ValidationGate:
    """Cached verdicts per certificate (SHA-256 hex); see the module docstring."""

    def __init__(
        self,
        checker: CertificateChecker,
        inventory: Inventory,
        *,
        refresh_interval: float = 300.0,
        retry_interval: float = 60.0,
    ) -> None:
        self.checker = checker
        self.inventory = inventory
        self.refresh_interval = refresh_interval
        self.retry_interval = retry_interval
        self._verdicts: dict[str, GateVerdict] = {}

    def get(self, sha256: str) -> GateVerdict | None:
        """The cached verdict (None: never checked). A dict lookup, safe from any thread."""
        return self._verdicts.get(sha256)

    def forget(self, keep: set[str]) -> None:
        """Drop verdicts of certificates no longer tracked."""
        for sha in [s for s in self._verdicts if s not in keep]:
            self._verdicts.pop(sha, None)

    def due(self, sha256: str, now: float) -> bool:
        """True when the certificate has no verdict or its refresh time has come."""
        cached = self._verdicts.get(sha256)
        return cached is None or now >= cached.next_check

    def next_due(self) -> float | None:
        """Epoch seconds of the earliest scheduled refresh (None: nothing tracked)."""
        return min((c.next_check for c in self._verdicts.values()), default=None)

    def check(
        self,
        record: CertificateRecord,
        intermediates: Sequence[x509.Certificate] = (),
    ) -> GateVerdict:
        """Validate one certificate now (afresh), record it, and cache the result.

        Revoked or expired: the inventory status changes, with an event. Never raises for
        a validation problem: an unexpected error is a withheld identity with a reason.
        """
        started = time.time()
        try:
            fresh = replace(self.checker, store=FreshFirstStore(self.checker.store))
            verdict = fresh.check(record.der, intermediates=intermediates)
            if verdict.status == v.REVOCATION_UNKNOWN:
                # Responder or distribution point unreachable now: cached status still
                # within its nextUpdate is as good as when it was fetched.
                verdict = self.checker.check(record.der, intermediates=intermediates)
        except Exception as exc:  # noqa: BLE001 - a bad CRL file etc. must not kill the gate
            reason = f"validation failed: {exc}"
            log.warning("certificate %s (%s) withheld: %s", record.subject, record.sha256[:16],
                        reason)
            result = GateVerdict(False, v.REVOCATION_UNKNOWN, reason, (), "x509", None,
                                 started, started + self.retry_interval)
            self._verdicts[record.sha256] = result
            return result
        fresh_until = verdict.fresh_until.timestamp() if verdict.fresh_until else None
        if verdict.valid:
            limit = started + self.refresh_interval
            if fresh_until is not None:
                margin = min(60.0, max(0.0, (fresh_until - started) / 10))
                limit = min(limit, fresh_until - margin)
            next_check = max(limit, started + 1.0)
        else:
            next_check = started + self.retry_interval
        result = GateVerdict(
            verdict.valid, verdict.status, verdict.reason, tuple(verdict.chain),
            verdict.ssh_identity, fresh_until, started, next_check,
        )
        previous = self._verdicts.get(record.sha256)
        self._verdicts[record.sha256] = result
        self._record(record, verdict, previous)
        return result

    def _record(self, record: CertificateRecord, verdict: v.Verdict,
                previous: GateVerdict | None) -> None:
        try:
            self.inventory.record_verdict(
                record.sha256, verdict.status, verified_at=datetime.now(UTC),
                fresh_until=verdict.fresh_until,
            )
            if verdict.status in (v.REVOKED, v.EXPIRED):
                status = "revoked" if verdict.status == v.REVOKED else "expired"
                if self.inventory.set_status(record.sha256, status, verdict.reason,
                                             command=COMMAND):
                    log.warning("certificate %s (%s) is %s: %s; its identity is withdrawn",
                                record.subject, record.sha256[:16], status, verdict.reason)
                return
        except Exception as exc:  # noqa: BLE001 - the inventory being busy must not stop us
            log.warning("could not record the verdict of %s in the inventory: %s",
                        record.sha256[:16], exc)
        if not verdict.valid and (previous is None or previous.status != verdict.status):
            log.warning("certificate %s (%s) withheld: %s (%s); will check again",
                        record.subject, record.sha256[:16], verdict.status, verdict.reason)
        elif verdict.valid and previous is not None and not previous.valid:
            log.info("certificate %s (%s) is valid again", record.subject, record.sha256[:16])
