"""Validated paths, remembered: an unchanged path is not built and validated again.

Path building and RFC 5280 validation (pyhanko-certvalidator) depend only on the
certificates offered (leaf, trust anchors, untrusted intermediates, in order), the purpose
policy and the caps, and on the validation time through the validity periods of the
chain. So a path that validated is remembered under `path_key` of those inputs, with the
window in which the result holds: from the latest notBefore to the earliest notAfter of
the chain. Only a path that validated and fits the purpose is remembered; any other
outcome is computed afresh every time. Revocation is never remembered here: it is
checked on every validation, from the revocation cache (an indexed lookup).

The record also keeps, per certificate of the path, what revocation checking needs
(`CertFacts`) and what `idm verify` prints. With it `express()` answers a validation from
the inventory alone, without parsing a certificate: no `cryptography`, no
pyhanko-certvalidator. It declines (returns None) whenever anything is new: a certificate
or CRL it has not seen, a path not remembered, revocation status that must be fetched.

A store that implements `PathMemo` (the inventory's SQL store, the memory store) gets
this automatically from `idm.validator.api.validate`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from idm.validator import verdict as v
from idm.validator.policy import OFF, Policy
from idm.validator.revocation.check import (
    CertFacts,
    NeedsFullValidation,
    RevocationCheck,
    revocation_verdict,
)
from idm.validator.revocation.scope import DistPoint
from idm.validator.revocation.store import RevocationStore
from idm.validator.verdict import Verdict

if TYPE_CHECKING:
    from cryptography import x509

_VERSION = "idm-path-3"


@runtime_checkable
class PathMemo(Protocol):
    """Where validated paths are kept (records are opaque JSON text to the store)."""

    def load_path(self, key: str, at: datetime) -> str | None:
        """The record saved under `key` whose window contains `at`, or None."""
        ...

    def save_path(self, key: str, valid_from: datetime, valid_until: datetime, record: str) -> None:
        """Keep `record` under `key` (replacing any) for times in [valid_from, valid_until]."""
        ...


def path_key(
    leaf_sha256: str,
    anchor_sha256s: Sequence[str],
    intermediate_sha256s: Sequence[str],
    policy: Policy,
) -> str:
    """The key of everything that decides path building and validation (hex SHA-256)."""
    parts = [
        _VERSION,
        leaf_sha256,
        "anchors:" + ",".join(anchor_sha256s),
        "untrusted:" + ",".join(intermediate_sha256s),
        f"purpose:{policy.purpose}:{','.join(policy.client_ekus)}",
        f"caps:{policy.max_intermediates}:{policy.max_pool}",
        # the key policy is part of path validation: a path valid under a looser one is
        # not valid under a stricter one
        f"keys:{policy.min_rsa_bits}:{','.join(sorted(policy.curves))}:{policy.allow_dsa}"
        f":{policy.allow_sha1}",
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


@dataclass(frozen=True)
class PathRecord:
    """A validated path: its certificates' SHA-256 and subjects (leaf first, anchor last),
    the facts for revocation of each certificate below the anchor, and the leaf's details."""

    chain_sha256: tuple[str, ...]
    chain_subjects: tuple[str, ...]
    facts: tuple[CertFacts, ...]
    leaf_issuer: str
    leaf_serial: int
    ssh_identity: str
    warnings: tuple[str, ...]
    valid_from: datetime
    valid_until: datetime

    def to_json(self) -> str:
        return json.dumps(
            {
                "chain_sha256": self.chain_sha256,
                "chain_subjects": self.chain_subjects,
                "facts": [_facts_json(f) for f in self.facts],
                "leaf_issuer": self.leaf_issuer,
                "leaf_serial": format(self.leaf_serial, "x"),
                "ssh_identity": self.ssh_identity,
                "warnings": self.warnings,
                "valid_from": self.valid_from.isoformat(),
                "valid_until": self.valid_until.isoformat(),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> PathRecord:
        d = json.loads(text)
        return cls(
            chain_sha256=tuple(d["chain_sha256"]),
            chain_subjects=tuple(d["chain_subjects"]),
            facts=tuple(_facts_from_json(f) for f in d["facts"]),
            leaf_issuer=d["leaf_issuer"],
            leaf_serial=int(d["leaf_serial"], 16),
            ssh_identity=d["ssh_identity"],
            warnings=tuple(d["warnings"]),
            valid_from=datetime.fromisoformat(d["valid_from"]),
            valid_until=datetime.fromisoformat(d["valid_until"]),
        )


def _facts_json(f: CertFacts) -> list[Any]:
    return [f.subject, format(f.serial, "x"), f.issuer_key, f.crl_urls, f.ocsp_urls,
            f.issuer_name, f.is_ca, [dp.to_json() for dp in f.dps], f.issuer_crl_sign]


def _facts_from_json(d: list[Any]) -> CertFacts:
    subject, serial, key, crls, ocsps, name, ca, dps, crl_sign = d
    return CertFacts(subject, int(serial, 16), key, tuple(crls), tuple(ocsps), name, bool(ca),
                     tuple(DistPoint.from_json(dp) for dp in dps), bool(crl_sign))


def record_for(
    chain: Sequence[x509.Certificate],
    facts: Sequence[CertFacts],
    ssh_identity: str,
    warnings: Sequence[str],
) -> PathRecord:
    """The record of a path that validated (chain: leaf first, anchor last)."""
    from cryptography.hazmat.primitives import hashes

    return PathRecord(
        chain_sha256=tuple(c.fingerprint(hashes.SHA256()).hex() for c in chain),
        chain_subjects=tuple(v.subject_text(c) for c in chain),
        facts=tuple(facts),
        leaf_issuer=chain[0].issuer.rfc4514_string(),
        leaf_serial=chain[0].serial_number,
        ssh_identity=ssh_identity,
        warnings=tuple(warnings),
        valid_from=max(c.not_valid_before_utc for c in chain),
        valid_until=min(c.not_valid_after_utc for c in chain),
    )


# -- certificates as bytes, the way idm.validator.bundle reads them -------------------------

_BEGIN = b"-----BEGIN CERTIFICATE-----"
_END = b"-----END CERTIFICATE-----"


def certificate_ders(data: bytes) -> list[bytes] | None:
    """The DER certificates in a file's bytes, or None when unsure.

    Mirrors `idm.validator.bundle.parse_certificates` for well-formed input only: PEM
    made of CERTIFICATE blocks (strict base64, nothing but whitespace around them), or
    one DER certificate. Anything else returns None, and the caller reads the file with
    `cryptography` instead (which then reports what is wrong). A DER blob that is not a
    certificate simply matches no remembered path.
    """
    if _BEGIN not in data:
        if b"-----BEGIN" in data or data[:1] != b"\x30":
            return None
        return [data]
    out = []
    rest = data
    while True:
        start = rest.find(_BEGIN)
        if start < 0:
            if rest.strip():
                return None
            break
        if rest[:start].strip():
            return None
        end = rest.find(_END, start)
        if end < 0:
            return None
        body = rest[start + len(_BEGIN) : end]
        if b"-" in body or b":" in body:  # PEM headers or a nested marker
            return None
        try:
            der = base64.b64decode(b"".join(body.split()), validate=True)
        except (binascii.Error, ValueError):
            return None
        if der[:1] != b"\x30":
            return None
        out.append(der)
        rest = rest[end + len(_END) :]
    return out or None


def sha256_hex(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def load_path_record(memo: PathMemo, key: str, at: datetime) -> PathRecord | None:
    """The path remembered under `key` that holds at `at`, or None (also for a record
    that no longer parses: it is then simply validated again)."""
    text = memo.load_path(key, at)
    if text is None:
        return None
    try:
        return PathRecord.from_json(text)
    except (ValueError, KeyError, TypeError):
        return None


def express(
    leaf_sha256: str,
    anchor_sha256s: Sequence[str],
    intermediate_sha256s: Sequence[str],
    *,
    policy: Policy,
    at: datetime | None,
    store: RevocationStore,
    supplied_crl_sha256s: Sequence[str] = (),
) -> tuple[Verdict, PathRecord] | None:
    """The verdict (and the path record, for the leaf's details) from the inventory's
    caches alone, or None (validate fully then).

    Same inputs as `idm.validator.api.validate` with certificates given by the SHA-256 of
    their DER (in the order the caller would pass them) and supplied CRLs by the SHA-256
    of their bytes. Gives exactly the verdict `validate` would, except that the verdict
    has `chain_subjects` but no parsed `chain` or `leaf`.
    """
    crls = store  # the RevocationStore face of the same object
    if policy.revocation == OFF or not isinstance(store, PathMemo):
        return None
    at = at or datetime.now(UTC)
    key = path_key(leaf_sha256, anchor_sha256s, intermediate_sha256s, policy)
    record = load_path_record(store, key, at)
    if record is None:
        return None
    check = RevocationCheck(policy=policy, at=at, store=crls, fetcher=None, candidates=[])
    for sha in supplied_crl_sha256s:
        info = crls.crl_by_sha256(sha)
        if info is None:
            return None  # a CRL never seen: it must be parsed and checked
        check.supplied.add(info.issuer_name)
    warnings = list(record.warnings)

    def make(status: str, reason: str, **kw: Any) -> Verdict:
        return Verdict(
            status == v.VALID,
            status,
            reason,
            warnings=tuple(warnings),
            ssh_identity=record.ssh_identity,
            chain_subjects=record.chain_subjects,
            **kw,
        )

    try:
        verdict = revocation_verdict(check, record.facts, None, record.valid_until, warnings, make)
    except NeedsFullValidation:
        return None
    return verdict, record
