"""The revocation cache in the inventory: idm.validator's `RevocationStore` on SQL tables.

A CRL's entries go into ``revoked_serials`` with an index on (issuer, serial), so a
200,000-entry CRL is parsed once and every later check is one indexed lookup. The bulk
insert goes straight to the driver (one ``executemany``), because building 200,000 ORM
objects would cost more than parsing the CRL did.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select

from idm.identity.inventory.models import Crl, OcspResponse, RevokedSerial
from idm.validator.revocation.store import CrlInfo, OcspRecord, RevokedEntry

if TYPE_CHECKING:
    from idm.identity.inventory.store import Inventory

_BATCH = 20_000


def _hex(n: int) -> str:
    return format(n, "x")


def _int(text: str | None) -> int | None:
    return None if text is None else int(text, 16)


def _crl_info(row: Crl) -> CrlInfo:
    return CrlInfo(
        issuer_key=row.issuer_key,
        crl_number=_int(row.crl_number),
        this_update=row.this_update,
        next_update=row.next_update,
        sha256=row.sha256,
        source=row.source or "",
        entries=row.entries,
    )


def _ocsp_record(row: OcspResponse) -> OcspRecord:
    return OcspRecord(
        issuer_key=row.issuer_key,
        serial=int(row.serial, 16),
        status=row.status,
        this_update=row.this_update,
        next_update=row.next_update,
        produced_at=row.produced_at or row.this_update,
        revoked_at=row.revoked_at,
        reason=row.reason,
        url=row.url or "",
        response_der=row.der,
    )


class SqlRevocationStore:
    """`idm.validator.revocation.store.RevocationStore` backed by the inventory."""

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory

    def crl_known(self, issuer_key: str, crl_number: int) -> CrlInfo | None:
        with self.inventory.reading() as s:
            row = s.scalars(
                select(Crl).filter_by(issuer_key=issuer_key, crl_number=_hex(crl_number))
            ).first()
            return _crl_info(row) if row else None

    def crl_by_sha256(self, sha256: str) -> CrlInfo | None:
        with self.inventory.reading() as s:
            row = s.scalars(select(Crl).filter_by(sha256=sha256)).first()
            return _crl_info(row) if row else None

    def store_crl(
        self, info: CrlInfo, revoked: Iterable[tuple[int, datetime, str | None]]
    ) -> None:
        fetched = datetime.now(UTC)
        with self.inventory.writing() as s:
            held = s.scalars(select(Crl).filter_by(sha256=info.sha256)).first()
            if held is None and info.crl_number is not None:
                held = s.scalars(
                    select(Crl).filter_by(
                        issuer_key=info.issuer_key, crl_number=_hex(info.crl_number)
                    )
                ).first()
            if held is not None:
                return
            row = Crl(
                issuer_key=info.issuer_key,
                crl_number=None if info.crl_number is None else _hex(info.crl_number),
                this_update=info.this_update,
                next_update=info.next_update,
                source=info.source,
                sha256=info.sha256,
                entries=info.entries,
                fetched_at=fetched,
            )
            s.add(row)
            s.flush()
            # Older CRLs of this issuer that have expired are superseded by this one (CRLs
            # are cumulative): drop them and their entries so the table does not grow daily.
            stale = select(Crl.id).where(
                Crl.issuer_key == info.issuer_key,
                Crl.id != row.id,
                Crl.next_update < fetched,
                Crl.this_update < info.this_update,
            )
            stale_ids = list(s.scalars(stale))
            if stale_ids:
                s.execute(delete(RevokedSerial).where(RevokedSerial.crl_id.in_(stale_ids)))
                s.execute(delete(Crl).where(Crl.id.in_(stale_ids)))
            conn = s.connection()
            sqlite = conn.dialect.name == "sqlite"
            sql = (
                "INSERT INTO revoked_serials (crl_id, issuer_key, serial, revoked_at, reason) "
                + ("VALUES (?, ?, ?, ?, ?)" if sqlite else "VALUES (%s, %s, %s, %s, %s)")
            )
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                for batch in _batches(row.id, info.issuer_key, revoked, sqlite):
                    cursor.executemany(sql, batch)
            finally:
                cursor.close()

    def current_crls(self, issuer_key: str, at: datetime) -> list[CrlInfo]:
        with self.inventory.reading() as s:
            rows = s.scalars(
                select(Crl)
                .where(
                    Crl.issuer_key == issuer_key,
                    Crl.this_update <= at,
                    Crl.next_update.is_not(None),
                    Crl.next_update >= at,
                )
                .order_by(Crl.this_update.desc())
            )
            return [_crl_info(r) for r in rows]

    def revoked(self, issuer_key: str, serial: int, at: datetime) -> RevokedEntry | None:
        with self.inventory.reading() as s:
            found = s.execute(
                select(RevokedSerial, Crl.crl_number, Crl.sha256)
                .join(Crl, RevokedSerial.crl_id == Crl.id)
                .where(
                    RevokedSerial.issuer_key == issuer_key,
                    RevokedSerial.serial == _hex(serial),
                    RevokedSerial.revoked_at <= at,
                )
                .order_by(RevokedSerial.revoked_at)
                .limit(1)
            ).first()
            if found is None:
                return None
            entry, number, sha = found
            return RevokedEntry(
                issuer_key=issuer_key,
                serial=serial,
                revoked_at=entry.revoked_at,
                reason=entry.reason,
                crl_number=_int(number),
                crl_sha256=sha,
            )

    def store_ocsp(self, record: OcspRecord) -> None:
        with self.inventory.writing() as s:
            row = s.scalars(
                select(OcspResponse).filter_by(
                    issuer_key=record.issuer_key, serial=_hex(record.serial)
                )
            ).first()
            if row is not None and row.this_update > record.this_update:
                return
            if row is None:
                row = OcspResponse(issuer_key=record.issuer_key, serial=_hex(record.serial))
                s.add(row)
            row.status = record.status
            row.revoked_at = record.revoked_at
            row.reason = record.reason
            row.this_update = record.this_update
            row.next_update = record.next_update
            row.produced_at = record.produced_at
            row.url = record.url
            row.der = record.response_der
            row.fetched_at = datetime.now(UTC)

    def ocsp(self, issuer_key: str, serial: int, at: datetime) -> OcspRecord | None:
        with self.inventory.reading() as s:
            row = s.scalars(
                select(OcspResponse).filter_by(issuer_key=issuer_key, serial=_hex(serial))
            ).first()
            if row is None or row.this_update > at:
                return None
            return _ocsp_record(row)


def _batches(
    crl_id: int,
    issuer_key: str,
    revoked: Iterable[tuple[int, datetime, str | None]],
    sqlite: bool,
) -> Iterator[list[tuple[Any, ...]]]:
    """Rows for the driver; SQLite gets SQLAlchemy's own naive-UTC text format."""
    batch: list[tuple[Any, ...]] = []
    for serial, revoked_at, reason in revoked:
        when: Any = revoked_at.astimezone(UTC)
        if sqlite:
            when = when.strftime("%Y-%m-%d %H:%M:%S.%f")
        batch.append((crl_id, issuer_key, _hex(serial), when, reason))
        if len(batch) >= _BATCH:
            yield batch
            batch = []
    if batch:
        yield batch
