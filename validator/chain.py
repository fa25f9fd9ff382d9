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
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from idm.validator import verdict as v
from idm.validator.names import name_key
from idm.validator.policy import Policy
from idm.validator.signatures import is_self_signed, signed_by


class BudgetExceeded(Exception):
    """Raised inside path building when the wall-clock budget is spent."""


def fingerprint(cert: x509.Certificate) -> bytes:
    return cert.fingerprint(hashes.SHA256())


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
        # Indexed by subject as RFC 5280 §7.1 compares names (idm.validator.names).
        self._anchors: dict[str, list[x509.Certificate]] = {}
        for a in anchors:
            self._anchors.setdefault(name_key(a.subject), []).append(a)
        self._pool: dict[str, list[x509.Certificate]] = {}
        for c in pool:
            self._pool.setdefault(name_key(c.subject), []).append(c)
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
        issuer = name_key(tip.issuer)
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


def _anchor_qualifiers(anchor: object) -> object:
    """What the trust anchor's own certificate constrains (RFC 5937): its nameConstraints,
    policyConstraints and inhibitAnyPolicy set the path's initial inputs, and its
    pathLenConstraint caps the path. Its certificatePolicies are not made required."""
    from pyhanko_certvalidator.authority import TrustQualifiers
    from pyhanko_certvalidator.name_trees import process_general_subtrees
    from pyhanko_certvalidator.policy_decl import PKIXValidationParams

    cert = anchor
    permitted = excluded = None
    nc = cert.name_constraints_value  # type: ignore[attr-defined]
    if nc is not None:
        if nc["permitted_subtrees"].native is not None:
            permitted = process_general_subtrees(nc["permitted_subtrees"])
        if nc["excluded_subtrees"].native is not None:
            excluded = process_general_subtrees(nc["excluded_subtrees"])
    pc = cert.policy_constraints_value  # type: ignore[attr-defined]
    explicit = pc is not None and pc["require_explicit_policy"].native == 0
    no_mapping = pc is not None and pc["inhibit_policy_mapping"].native == 0
    iap = cert.inhibit_any_policy_value  # type: ignore[attr-defined]
    no_any = iap is not None and iap.native == 0
    params = None
    if permitted is not None or excluded is not None or explicit or no_mapping or no_any:
        params = PKIXValidationParams(
            initial_explicit_policy=explicit,
            initial_policy_mapping_inhibit=no_mapping,
            initial_any_policy_inhibit=no_any,
            initial_permitted_subtrees=permitted,
            initial_excluded_subtrees=excluded,
        )
    return TrustQualifiers(
        max_path_length=cert.max_path_length,  # type: ignore[attr-defined]
        standard_parameters=params,
    )


def _pyhanko_validate(path: list[x509.Certificate], at: datetime) -> tuple[str, str] | None:
    """RFC 5280 validation of one complete path; None if valid, else (status, reason).

    Never raises: whatever the libraries throw on hostile input is a refusal that says so.
    """
    from asn1crypto import x509 as ax509
    from pyhanko_certvalidator import ValidationContext, errors
    from pyhanko_certvalidator.authority import CertTrustAnchor
    from pyhanko_certvalidator.path import ValidationPath
    from pyhanko_certvalidator.validate import async_validate_path

    try:
        conv = [ax509.Certificate.load(c.public_bytes(Encoding.DER)) for c in path]
        anchor = conv[-1]
        trust = CertTrustAnchor(anchor, quals=_anchor_qualifiers(anchor))  # type: ignore[arg-type]
        context = ValidationContext(
            trust_roots=[trust],
            moment=at,
            allow_fetching=False,
            revocation_mode="none",
            time_tolerance=timedelta(0),
        )
        vpath = ValidationPath(trust, list(reversed(conv[1:-1])), conv[0])
    except Exception as e:  # noqa: BLE001 - hostile input must become a verdict
        return v.MALFORMED, f"certificate could not be parsed for path validation: {_one_line(e)}"

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
        return v.MALFORMED, f"certificate could not be parsed for path validation: {_one_line(e)}"
    except Exception as e:  # noqa: BLE001 - e.g. name trees failing on an odd constraint
        return v.INVALID_PATH, f"path could not be validated: {_one_line(e)}"
    return None


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:200]


def _explicit_curve(cert: x509.Certificate) -> bool:
    """True for an EC key whose curve is given by explicit parameters rather than named
    (`cryptography` maps well-known explicit curves to named ones; the encoding says)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(cert.public_key(), ec.EllipticCurvePublicKey):
        return False
    from asn1crypto import x509 as ax509

    spki = ax509.Certificate.load(cert.public_bytes(Encoding.DER))["tbs_certificate"][
        "subject_public_key_info"
    ]
    return bool(spki["algorithm"]["parameters"].name != "named")


def path_policy_problem(path: Sequence[x509.Certificate], policy: Policy) -> str | None:
    """Why the key policy refuses the path (leaf first, anchor last), or None.

    Every key is checked, the anchor's too (it signs the next certificate); every
    signature below the anchor is checked for its hash.
    """
    for i, cert in enumerate(path):
        who = v.subject_text(cert)
        try:
            key = cert.public_key()
        except (ValueError, UnsupportedAlgorithm) as e:
            return f"key of {who} cannot be used ({_one_line(e)}); explicit curve parameters "\
                "and unknown key types are refused"
        problem = policy.key_problem(key)
        if problem is None and _explicit_curve(cert):
            problem = "EC key with explicit curve parameters, refused by the key policy"
        if problem:
            return f"{who}: {problem}"
        if i < len(path) - 1:
            try:
                algorithm = cert.signature_hash_algorithm
            except UnsupportedAlgorithm:
                algorithm = None
            problem = policy.hash_problem(algorithm.name if algorithm else None, who)
            if problem:
                return problem
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
    policy: Policy | None = None,
    deadline: float | None = None,
    max_paths: int = 16,
) -> PathOutcome:
    """Find a valid path from `leaf` to one of `anchors` (see the module docstring).

    `policy` gives the caps and the key policy; `deadline` (a `time.monotonic()` value,
    default now + the policy's budget) bounds the work.
    """
    at = at or datetime.now(UTC)
    policy = policy or Policy()
    max_intermediates, max_pool = policy.max_intermediates, policy.max_pool
    warnings: list[str] = []
    if leaf.serial_number <= 0:  # kept with a remembered path, so every path says it
        warnings.append(f"serial number {leaf.serial_number} is not positive "
                        "(RFC 5280 requires a positive serial)")
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
            refusal = path_policy_problem([leaf], policy)
            if refusal:
                return PathOutcome(v.INVALID_PATH, refusal, (leaf,))
            return PathOutcome(v.VALID, "certificate is itself a trust anchor", (leaf,))
    pool = [c for c in intermediates if fingerprint(c) != leaf_fp]
    if len(pool) > max_pool:
        warnings.append(f"only the first {max_pool} of {len(pool)} untrusted certificates used")
        pool = pool[:max_pool]
    if deadline is None:
        deadline = time.monotonic() + policy.budget_seconds
    builder = PathBuilder(anchors, pool, max_intermediates, deadline)
    failures: list[tuple[str, str, list[x509.Certificate]]] = []
    try:
        for n, path in enumerate(builder.paths(leaf)):
            if n >= max_paths:
                break
            refused = path_policy_problem(path, policy)
            problem = (v.INVALID_PATH, refused) if refused else _pyhanko_validate(path, at)
            if problem is None:
                return PathOutcome(v.VALID, "path validated", tuple(path), tuple(warnings))
            failures.append((problem[0], problem[1], path))
            if time.monotonic() > deadline:
                raise BudgetExceeded()
    except BudgetExceeded:
        return PathOutcome(
            v.INVALID_PATH,
            f"validation budget of {policy.budget_seconds:g} s exceeded",
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
