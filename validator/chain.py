"""Path building (ours, bounded) and RFC 5280 path validation (pyhanko-certvalidator).

Why split the work: pyhanko-certvalidator's own path builder has no bound on the work it
does; over a pool of 100 same-subject intermediates it runs for minutes. So idm builds
candidate paths itself, depth-first from the leaf towards the anchors, with hard caps
(at most `max_intermediates` certificates between leaf and anchor, at most `max_pool`
untrusted certificates considered) and a wall-clock deadline checked at every step; a
branch is followed only when the issuer's key verifies the child's signature
(`cryptography`, fast), which prunes same-name impostors at once. Each candidate path,
at most 10 certificates long, is then handed to pyhanko-certvalidator's RFC 5280
validation (validity with time tolerance 0, basic constraints, path length, key usage of
CAs, name constraints, policies, critical extensions) with its revocation checking turned
off: revocation is done by idm.validator.revocation, which uses `cryptography` for CRLs
(pyhanko's asn1crypto parser takes seconds on a large CRL) and finds revoked serials in
any CRL held for an issuer, even for certificates without a distribution point.
pyhanko-certvalidator is imported only here, and only when a path must be validated.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from idm.validator import verdict as v


class BudgetExceeded(Exception):
    """Raised inside path building when the wall-clock budget is spent."""


def fingerprint(cert: x509.Certificate) -> bytes:
    return cert.fingerprint(hashes.SHA256())


def is_self_signed(cert: x509.Certificate) -> bool:
    """True when the certificate names itself as issuer and its own key verifies it."""
    return cert.issuer == cert.subject and signed_by(cert, cert)


def signed_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    """True when `parent` names and signs `child` (no other checks)."""
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


@dataclass(frozen=True)
class PathOutcome:
    """The result of chain building and validation (revocation and purpose not included)."""

    status: str
    reason: str
    chain: tuple[x509.Certificate, ...]
    warnings: tuple[str, ...] = ()


class PathBuilder:
    """Depth-first candidate paths from a leaf to an anchor, within caps and a deadline."""

    def __init__(
        self,
        anchors: Sequence[x509.Certificate],
        pool: Sequence[x509.Certificate],
        max_intermediates: int,
        deadline: float,
    ) -> None:
        self.max_intermediates = max_intermediates
        self.deadline = deadline
        self._anchors: dict[bytes, list[x509.Certificate]] = {}
        for a in anchors:
            self._anchors.setdefault(a.subject.public_bytes(), []).append(a)
        self._pool: dict[bytes, list[x509.Certificate]] = {}
        for c in pool:
            self._pool.setdefault(c.subject.public_bytes(), []).append(c)
        self._sig: dict[tuple[bytes, bytes], bool] = {}

    def _signed(self, child: x509.Certificate, parent: x509.Certificate) -> bool:
        key = (fingerprint(child), fingerprint(parent))
        if key not in self._sig:
            self._sig[key] = signed_by(child, parent)
        return self._sig[key]

    def _tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise BudgetExceeded()

    def paths(self, leaf: x509.Certificate) -> Iterator[list[x509.Certificate]]:
        """Yield [leaf, intermediates..., anchor] lists; raises BudgetExceeded."""
        yield from self._extend([leaf], {fingerprint(leaf)})

    def _extend(
        self, path: list[x509.Certificate], seen: set[bytes]
    ) -> Iterator[list[x509.Certificate]]:
        self._tick()
        tip = path[-1]
        issuer = tip.issuer.public_bytes()
        for anchor in self._anchors.get(issuer, ()):
            self._tick()
            if self._signed(tip, anchor):
                yield [*path, anchor]
        if len(path) - 1 >= self.max_intermediates:
            return
        for cand in self._pool.get(issuer, ()):
            self._tick()
            fp = fingerprint(cand)
            if fp in seen or not self._signed(tip, cand):
                continue
            seen.add(fp)
            yield from self._extend([*path, cand], seen)
            seen.discard(fp)


def _run_async(coro_factory: object) -> object:
    """Run a coroutine to completion from synchronous code, even inside a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro_factory())  # type: ignore[operator]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(coro_factory())).result()  # type: ignore[operator]


def _pyhanko_validate(path: list[x509.Certificate], at: datetime) -> tuple[str, str] | None:
    """RFC 5280 validation of one complete path; None if valid, else (status, reason)."""
    from asn1crypto import x509 as ax509
    from pyhanko_certvalidator import ValidationContext, errors
    from pyhanko_certvalidator.authority import CertTrustAnchor
    from pyhanko_certvalidator.path import ValidationPath
    from pyhanko_certvalidator.validate import async_validate_path

    conv = [ax509.Certificate.load(c.public_bytes(Encoding.DER)) for c in path]
    anchor = conv[-1]
    context = ValidationContext(
        trust_roots=[anchor],
        moment=at,
        allow_fetching=False,
        revocation_mode="none",
        time_tolerance=timedelta(0),
    )
    vpath = ValidationPath(CertTrustAnchor(anchor), list(reversed(conv[1:-1])), conv[0])

    async def go() -> None:
        await async_validate_path(context, vpath)

    try:
        _run_async(go)
    except (errors.ExpiredError, errors.NotYetValidError) as e:
        # Name the certificate by its subject (pyhanko says "intermediate certificate 1").
        for cert in path:
            bad = _validity_problem(cert, at)
            if bad:
                return bad
        status = v.EXPIRED if isinstance(e, errors.ExpiredError) else v.NOT_YET_VALID
        return status, _clean(str(e))
    except (errors.ValidationError, errors.PathError) as e:
        return v.INVALID_PATH, _clean(str(e))
    except ValueError as e:  # asn1crypto choking on an odd extension deep inside
        return v.MALFORMED, f"certificate could not be parsed for path validation: {e}"
    return None


def _clean(msg: str) -> str:
    text = " ".join(msg.split())
    for prefix in ("The path could not be validated because ", "The X.509 certificate provided "):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    return text


def _validity_problem(cert: x509.Certificate, at: datetime) -> tuple[str, str] | None:
    if at < cert.not_valid_before_utc:
        return v.NOT_YET_VALID, (
            f"{v.subject_text(cert)} is not valid until {cert.not_valid_before_utc.isoformat()}"
        )
    if at > cert.not_valid_after_utc:
        return v.EXPIRED, f"{v.subject_text(cert)} expired {cert.not_valid_after_utc.isoformat()}"
    return None


# How bad a failure is, to choose which one to report when every path fails: a path that
# failed only on dates tells more than one that failed on structure.
_RANK = {v.EXPIRED: 3, v.NOT_YET_VALID: 3, v.INVALID_PATH: 2, v.MALFORMED: 1}


def validate_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    *,
    at: datetime | None = None,
    max_intermediates: int = 8,
    max_pool: int = 64,
    budget_seconds: float = 5.0,
    max_paths: int = 16,
) -> PathOutcome:
    """Find a valid path from `leaf` to one of `anchors` (see the module docstring)."""
    at = at or datetime.now(UTC)
    warnings: list[str] = []
    if not anchors:
        return PathOutcome(v.UNTRUSTED, "no trust anchors configured", (leaf,))
    leaf_fp = fingerprint(leaf)
    for anchor in anchors:
        if fingerprint(anchor) == leaf_fp:
            # The certificate is itself trusted (typically self-signed): only its dates
            # matter; there is no path to validate.
            bad = _validity_problem(leaf, at)
            if bad:
                return PathOutcome(bad[0], bad[1], (leaf,))
            return PathOutcome(v.VALID, "certificate is itself a trust anchor", (leaf,))
    pool = [c for c in intermediates if fingerprint(c) != leaf_fp]
    if len(pool) > max_pool:
        warnings.append(f"only the first {max_pool} of {len(pool)} untrusted certificates used")
        pool = pool[:max_pool]
    deadline = time.monotonic() + budget_seconds
    builder = PathBuilder(anchors, pool, max_intermediates, deadline)
    failures: list[tuple[str, str, list[x509.Certificate]]] = []
    try:
        for n, path in enumerate(builder.paths(leaf)):
            if n >= max_paths:
                break
            problem = _pyhanko_validate(path, at)
            if problem is None:
                return PathOutcome(v.VALID, "path validated", tuple(path), tuple(warnings))
            failures.append((problem[0], problem[1], path))
            if time.monotonic() > deadline:
                raise BudgetExceeded()
    except BudgetExceeded:
        return PathOutcome(
            v.INVALID_PATH,
            f"validation budget of {budget_seconds:g} s exceeded",
            (leaf,),
            tuple(warnings),
        )
    if failures:
        status, reason, path = max(failures, key=lambda f: _RANK.get(f[0], 0))
        return PathOutcome(status, reason, tuple(path), tuple(warnings))
    if is_self_signed(leaf):
        return PathOutcome(
            v.UNTRUSTED, "self-signed certificate is not a trust anchor", (leaf,), tuple(warnings)
        )
    return PathOutcome(
        v.UNTRUSTED,
        f"no path to a trust anchor for issuer {leaf.issuer.rfc4514_string()}"
        f" (within {max_intermediates} intermediates)",
        (leaf,),
        tuple(warnings),
    )
