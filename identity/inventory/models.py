"""SQLAlchemy 2 models of the inventory.

The schema itself is owned by the Alembic migrations in ``migrations/versions``; these
classes must match them (tests/test_inventory.py compares the two).
Times are stored as timezone-aware UTC. Serial numbers are lower-case hex strings, because
X.509 serials are up to 20 bytes and do not fit a 64-bit integer.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    true,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from idm.identity.inventory import CERT_STATUSES, TOKEN_STATES  # noqa: F401 - re-exported


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite keeps no zone itself)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the inventory; use UTC-aware times")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UtcDateTime}


class Token(Base):
    """A PKCS#11 token, identified by (manufacturer, model, serial, label), never by slot."""

    __tablename__ = "tokens"
    __table_args__ = (UniqueConstraint("manufacturer", "model", "serial", "label"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    manufacturer: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(64))
    serial: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(64))
    module_path: Mapped[str | None] = mapped_column(Text)
    first_seen: Mapped[datetime] = mapped_column(UtcDateTime)
    last_seen: Mapped[datetime] = mapped_column(UtcDateTime)
    state: Mapped[str] = mapped_column(String(16), default="present")

    certificates: Mapped[list[Certificate]] = relationship(back_populates="token")


class Certificate(Base):
    """An X.509 certificate known to idm, with its key's SSH identity and its status."""

    __tablename__ = "certificates"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    der: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    subject: Mapped[str] = mapped_column(Text)
    issuer: Mapped[str] = mapped_column(Text)
    serial: Mapped[str] = mapped_column(String(42))
    not_before: Mapped[datetime] = mapped_column(UtcDateTime)
    not_after: Mapped[datetime] = mapped_column(UtcDateTime)
    key_type: Mapped[str] = mapped_column(String(32))
    key_fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    key_blob: Mapped[bytes] = mapped_column(LargeBinary)
    cka_id: Mapped[str | None] = mapped_column(String(256))
    label: Mapped[str | None] = mapped_column(Text)
    self_signed: Mapped[bool] = mapped_column(Boolean, default=False)
    token_id: Mapped[int | None] = mapped_column(ForeignKey("tokens.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    status_reason: Mapped[str | None] = mapped_column(Text)
    status_time: Mapped[datetime] = mapped_column(UtcDateTime)
    verdict_status: Mapped[str | None] = mapped_column(String(32))
    verified_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    fresh_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    created: Mapped[datetime] = mapped_column(UtcDateTime)

    token: Mapped[Token | None] = relationship(back_populates="certificates")


class Crl(Base):
    """A usable CRL whose signature was checked once; its entries live in revoked_serials.

    `issuer_key` is the signer (subject and key), `issuer_name` the CRL's issuer field as
    idm.validator.names compares names, `scope` its issuingDistributionPoint and
    deltaCRLIndicator as text (idm.validator.revocation.scope).
    """

    __tablename__ = "crls"
    __table_args__ = (UniqueConstraint("issuer_key", "scope", "crl_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    issuer_key: Mapped[str] = mapped_column(String(128), index=True)
    crl_number: Mapped[str | None] = mapped_column(String(42))
    this_update: Mapped[datetime] = mapped_column(UtcDateTime)
    next_update: Mapped[datetime | None] = mapped_column(UtcDateTime)
    source: Mapped[str | None] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64), index=True, unique=True)
    issuer_name: Mapped[str] = mapped_column(String(64), index=True)
    scope: Mapped[str] = mapped_column(Text, default="", server_default="")
    entries: Mapped[int] = mapped_column(Integer, default=0)
    fetched_at: Mapped[datetime] = mapped_column(UtcDateTime)
    # The CRL's DER while its serials await indexing (see revocation.py), then NULL.
    der: Mapped[bytes | None] = mapped_column(LargeBinary)
    indexed: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())


class RevokedSerial(Base):
    """One entry of a cached CRL, indexed by (crl, serial) for point lookups.

    Compact on purpose (200,000 rows are written per large CRL): `serial` is the DER
    INTEGER content (minimal two's complement), `revoked_at` is ``YYYYMMDDHHMMSS`` in UTC
    (sorts and compares as text), `reason` is the CRLReason code or None.
    """

    __tablename__ = "revoked_serials"
    __table_args__ = (Index("ix_revoked_crl_serial", "crl_id", "serial"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    crl_id: Mapped[int] = mapped_column(ForeignKey("crls.id", ondelete="CASCADE"))
    serial: Mapped[bytes] = mapped_column(LargeBinary)
    revoked_at: Mapped[str] = mapped_column(String(14))
    reason: Mapped[int | None] = mapped_column(SmallInteger)
    # For an entry of an indirect CRL about another issuer than the CRL's: its name key.
    cert_issuer: Mapped[str | None] = mapped_column(String(64))


class ValidatedPath(Base):
    """A certification path that passed RFC 5280 validation (revocation not included).

    `key` is the SHA-256 of everything that determined the result (leaf, anchors and
    intermediates offered, purpose policy and caps); the result holds for validation
    times in [valid_from, valid_until]. `record` is JSON (idm.validator.memo.PathRecord).
    """

    __tablename__ = "validated_paths"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    valid_from: Mapped[datetime] = mapped_column(UtcDateTime)
    valid_until: Mapped[datetime] = mapped_column(UtcDateTime)
    record: Mapped[str] = mapped_column(Text)
    # HMAC of key and record under the writing user's private key (inventory/revocation.py)
    mac: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class OcspResponse(Base):
    """A verified OCSP response, kept until its nextUpdate (capped by a maximum age)."""

    __tablename__ = "ocsp_responses"
    __table_args__ = (UniqueConstraint("issuer_key", "serial"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    issuer_key: Mapped[str] = mapped_column(String(128))
    serial: Mapped[str] = mapped_column(String(42))
    status: Mapped[str] = mapped_column(String(16))
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    reason: Mapped[str | None] = mapped_column(String(32))
    this_update: Mapped[datetime] = mapped_column(UtcDateTime)
    next_update: Mapped[datetime | None] = mapped_column(UtcDateTime)
    produced_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    url: Mapped[str | None] = mapped_column(Text)
    der: Mapped[bytes] = mapped_column(LargeBinary)
    fetched_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Event(Base):
    """One change in the life of an identity or token: what, when, why, by which command."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    time: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    kind: Mapped[str] = mapped_column(String(32))
    certificate_id: Mapped[int | None] = mapped_column(
        ForeignKey("certificates.id", ondelete="SET NULL"), index=True
    )
    token_id: Mapped[int | None] = mapped_column(ForeignKey("tokens.id", ondelete="SET NULL"))
    reason: Mapped[str | None] = mapped_column(Text)
    command: Mapped[str | None] = mapped_column(Text)


class Principal(Base):
    """An explicit authorization: USER may log in with a certificate of this subject/principal."""

    __tablename__ = "principals"
    __table_args__ = (UniqueConstraint("username", "kind", "value"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(256), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "subject" or "principal"
    value: Mapped[str] = mapped_column(Text)
    created: Mapped[datetime] = mapped_column(UtcDateTime)
