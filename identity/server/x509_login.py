"""The X.509 path of ``idm authorized-keys`` (PKIX-SSH's sshd presents a certificate).

Imported only when sshd passes an ``x509v3-…`` key type: this path validates the
presented certificate now, so it needs ``cryptography`` and the validator.

Revocation status is asked afresh at each login (OCSP, else the CRL distribution point),
as PKIX-SSH itself does with OCSP, with an in-memory store; the inventory's cache decides
only when that fails, within the cached data's nextUpdate. It is used when ``db`` is
configured and reachable (failures to write to it, e.g. a read-only SQLite file for the
AuthorizedKeysCommandUser, are ignored), else an in-memory one. Either way the policy is
applied in full: under hard-fail, status that cannot be had refuses the login.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from idm.identity import sshwire as w
from idm.identity.checker import CertificateChecker
from idm.identity.config import Config
from idm.identity.server.authorized_keys import Denied, _log
from idm.identity.server.mapping import Explicit, Mapper, MappingError, read_principals_dir
from idm.identity.server.snapshot import Snapshot, comment_for, expiry_epoch, key_digest
from idm.identity.server.strictmodes import check_strict_modes
from idm.validator.revocation.store import (
    CrlInfo,
    Entry,
    MemoryRevocationStore,
    OcspRecord,
    RevocationStore,
    RevokedEntry,
)


class _TolerantStore:
    """A revocation store that treats a failing cache as an empty one."""

    def __init__(self, inner: RevocationStore) -> None:
        self.inner = inner

    def _try(self, name: str, *args: Any, default: Any = None) -> Any:
        try:
            return getattr(self.inner, name)(*args)
        except Exception:  # noqa: BLE001 - the cache is an optimisation, never a decider
            return default

    def crl_known(self, issuer_key: str, scope: str, crl_number: int) -> CrlInfo | None:
        return self._try("crl_known", issuer_key, scope, crl_number)

    def crl_by_sha256(self, sha256: str) -> CrlInfo | None:
        return self._try("crl_by_sha256", sha256)

    def store_crl(self, info: CrlInfo, entries: Iterable[Entry]) -> None:
        self._try("store_crl", info, entries)

    def crls_named(self, issuer_name: str) -> list[CrlInfo]:
        return list(self._try("crls_named", issuer_name, default=[]))

    def crl_entries(self, crl_sha256s: Sequence[str], serial: int) -> list[RevokedEntry]:
        return list(self._try("crl_entries", crl_sha256s, serial, default=[]))

    def store_ocsp(self, record: OcspRecord) -> None:
        self._try("store_ocsp", record)

    def ocsp(self, issuer_key: str, serial: int, at: datetime) -> OcspRecord | None:
        return self._try("ocsp", issuer_key, serial, at)


def _store(config: Config) -> RevocationStore:
    import os

    url = os.environ.get("IDM_DB") or config.db
    if not url:
        return MemoryRevocationStore()
    try:
        from idm.identity.inventory.store import Inventory

        return _TolerantStore(Inventory(url, upgrade=False).revocation_store())
    except Exception:  # noqa: BLE001 - unreachable cache: validate without it
        return MemoryRevocationStore()


def parse_presented(key_type: str, raw: bytes) -> w.KeyBlob:
    """The presented X.509 key: raw DER (any x509v3 name) or an RFC 6187 blob."""
    import base64

    try:
        if raw[:1] == b"\x30":
            key = w.parse_public_key_line(f"{key_type} {base64.b64encode(raw).decode()}").key
        else:
            key = w.parse_key_blob(raw)
    except w.WireFormatError as exc:
        raise Denied(f"malformed X.509 key from sshd: {exc}") from None
    if not key.is_x509:
        raise Denied(f"key type {key_type} from sshd does not hold a certificate")
    if key.algorithm != key_type:
        raise Denied(f"key type {key_type} from sshd does not match its blob ({key.algorithm})")
    return key


def authorize_x509(
    user: str, key_type: str, raw: bytes, config: Config, snap: Snapshot, log_file: str | None
) -> list[str]:
    """The authorized_keys line for a presented certificate, or Denied."""
    key = parse_presented(key_type, raw)
    leaf_der = key.chain[0]
    sha = hashlib.sha256(leaf_der).hexdigest()
    cert = key.certificate
    assert cert is not None
    subject = cert.subject.rfc4514_string()
    what = f"user {user} certificate {sha[:16]} ({subject})"
    denial = snap.denied_certificate(sha)
    if denial is not None:
        why = f": {denial.reason}" if denial.reason else ""
        raise Denied(f"{what}: {denial.status} in the inventory{why}")
    for d in snap.denied_for_digest(key_digest(key.plain_blob)):
        if d.status == "revoked":
            raise Denied(f"{what}: its key is in revoked certificate {d.certificate[:16]}")
    try:
        # The anchors decide who logs in, like the snapshot: sshd's StrictModes apply.
        checker = CertificateChecker.from_config(config, file_check=check_strict_modes)
    except ValueError as exc:  # CheckerError, a malformed bundle or policy value
        raise Denied(f"configuration: {exc}") from None
    from cryptography import x509

    extra = []
    for der in key.chain[1:]:
        try:
            extra.append(x509.load_der_x509_certificate(der))
        except ValueError:
            raise Denied(f"{what}: a certificate of the presented chain is malformed") from None
    # Like `idm refresh`: ask the responder / distribution point afresh, so a revocation
    # counts at the next login. The inventory's cache (and the SQLAlchemy import it costs)
    # is opened only when they cannot be reached.
    checker.store = MemoryRevocationStore()
    verdict = checker.check(cert, intermediates=extra)
    if verdict.status == "revocation-unknown":
        checker.store = _store(config)
        verdict = checker.check(cert, intermediates=extra)
    if not verdict.valid:
        raise Denied(f"{what}: {verdict.status}: {verdict.reason}")
    try:
        explicit = [Explicit(*p) for p in snap.principals()]
        explicit += read_principals_dir(config.server.principals_dir, check_strict_modes)
        rule, users = Mapper(config.server.mapping, explicit).map(cert)
    except MappingError as exc:
        raise Denied(f"{what}: mapping: {exc}") from None
    if user not in users:
        mapped = ", ".join(sorted(users)) if users else "no user"
        raise Denied(f"{what}: mapped to {mapped}, not to {user}")
    until = expiry_epoch(
        cert.not_valid_after_utc,
        verdict.fresh_until,
        datetime.fromtimestamp(snap.info.deadline, UTC),
    )
    line = w.authorized_keys_line(
        key, comment_for(sha, subject), [w.expiry_time_option(datetime.fromtimestamp(until, UTC))]
    )
    _log(f"{what}: valid, rule {rule}", log_file, denied=False)
    return [line]
