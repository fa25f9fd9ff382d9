"""The inventory on SQLite and on a real PostgreSQL server: same code, same behaviour."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from idm.identity.inventory.store import CertificateRecord, Inventory, InventoryError
from idm.validator.revocation.store import CrlInfo, OcspRecord


def synthetic_cert(i: int, *, token_id: int | None = None) -> CertificateRecord:
    der = b"\x30\x82" + i.to_bytes(8, "big") * 8
    now = datetime.now(UTC).replace(microsecond=0)
    return CertificateRecord(
        sha256=hashlib.sha256(der).hexdigest(),
        der=der,
        subject=f"CN=user{i},O=Example",
        issuer="CN=Example CA",
        serial=format(1000 + i, "x"),
        not_before=now - timedelta(days=1),
        not_after=now + timedelta(days=365),
        key_type="ssh-rsa",
        key_fingerprint=f"SHA256:fp{i:08d}",
        key_blob=b"blob%d" % i,
        self_signed=False,
        cka_id=f"{i:02x}",
        label=f"key {i}",
        token_id=token_id,
    )


@pytest.fixture
def inv(inventory_url: str) -> Inventory:
    inventory = Inventory(inventory_url)
    yield inventory
    inventory.close()


def test_schema_is_created_on_first_use_and_upgrade_is_idempotent(inventory_url: str) -> None:
    from idm.identity.inventory.store import SCHEMA_REVISION

    first = Inventory(inventory_url)
    assert first.schema_revision() == SCHEMA_REVISION
    assert first.upgrade() == (SCHEMA_REVISION, SCHEMA_REVISION)
    first.close()


def test_schema_revision_matches_alembic_head() -> None:
    from pathlib import Path

    from alembic.config import Config
    from alembic.script import ScriptDirectory

    import idm.identity.inventory.migrations as migrations
    from idm.identity.inventory.store import SCHEMA_REVISION

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    assert ScriptDirectory.from_config(cfg).get_current_head() == SCHEMA_REVISION


def test_migrations_match_models(inventory_url: str) -> None:
    """The models and the Alembic migrations describe the same schema."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from idm.identity.inventory.models import Base

    inventory = Inventory(inventory_url)
    with inventory.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    inventory.close()
    assert diff == []


def test_token_identity_is_not_the_slot(inv: Inventory) -> None:
    a = inv.record_token(
        "SoftHSM", "SoftHSM v2", "0001", "alice", module_path="/m.so", command="test"
    )
    again = inv.record_token("SoftHSM", "SoftHSM v2", "0001", "alice", command="test")
    assert a.id == again.id
    assert again.last_seen >= a.last_seen
    inv.set_token_state(a.id, "absent", command="test")
    back = inv.record_token("SoftHSM", "SoftHSM v2", "0001", "alice", command="test")
    assert back.state == "present"
    kinds = [e.kind for e in inv.events()]
    assert kinds == ["token-added", "token-absent", "token-present"]


def test_certificate_life_is_recorded_as_events(inv: Inventory) -> None:
    token = inv.record_token("M", "X", "1", "card", command="test")
    rec, added = inv.add_certificate(synthetic_cert(1, token_id=token.id), command="enroll")
    assert added and rec.status == "pending"
    _, added_again = inv.add_certificate(synthetic_cert(1, token_id=token.id), command="enroll")
    assert not added_again
    assert inv.set_status(rec.sha256, "approved", "valid: chain and CRL ok", command="enroll")
    assert not inv.set_status(rec.sha256, "approved", "again", command="enroll")
    inv.set_status(rec.sha256, "revoked", "serial listed in CRL 3", command="refresh")
    got = inv.certificate(rec.sha256[:12])
    assert got is not None and got.status == "revoked"
    assert got.status_reason == "serial listed in CRL 3"
    events = inv.events(certificate=rec.sha256)
    assert [e.kind for e in events] == ["enrolled", "approved", "revoked"]
    assert events[-1].command == "refresh"
    assert inv.certificate("SHA256:fp00000001") == got
    assert inv.by_key_fingerprint("SHA256:fp00000001")[0].sha256 == rec.sha256
    assert inv.certificates(status="approved") == []
    assert [c.sha256 for c in inv.certificates(token_id=token.id)] == [rec.sha256]


def test_certificate_registered_before_its_token_is_attached_later(inv: Inventory) -> None:
    rec, _ = inv.add_certificate(synthetic_cert(7), command="enroll --cert")
    assert rec.token_id is None
    token = inv.record_token("M", "X", "9", "later", command="enroll")
    attached, added = inv.add_certificate(synthetic_cert(7, token_id=token.id))
    assert not added and attached.token_id == token.id


def test_bad_lookups_are_clear_errors(inv: Inventory) -> None:
    with pytest.raises(InventoryError, match="not a certificate fingerprint"):
        inv.certificate("xyz")
    assert inv.certificate("deadbeefdeadbeef") is None
    with pytest.raises(InventoryError, match="no certificate"):
        inv.set_status("00" * 32, "approved", None)


def test_failed_transaction_leaves_nothing(
    inv: Inventory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after the certificate row is written but before its event: neither stays."""

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("crash in the middle")

    monkeypatch.setattr(Inventory, "_event", staticmethod(crash))
    with pytest.raises(RuntimeError):
        inv.add_certificate(synthetic_cert(3), command="enroll")
    monkeypatch.undo()
    assert inv.events() == [] and inv.count_certificates() == 0
    _, added = inv.add_certificate(synthetic_cert(3), command="enroll")
    assert added and [e.kind for e in inv.events()] == ["enrolled"]


def test_principals(inv: Inventory) -> None:
    assert inv.allow("alice", "principal", "alice@example.org", command="allow")
    assert not inv.allow("alice", "principal", "alice@example.org")
    inv.allow("alice", "subject", "CN=alice,O=Example")
    assert [p.value for p in inv.principals("alice")] == ["alice@example.org", "CN=alice,O=Example"]
    assert inv.disallow("alice", "subject", "CN=alice,O=Example")
    assert len(inv.principals()) == 1


def test_bulk_import_and_lookup(inv: Inventory) -> None:
    assert inv.add_certificates((synthetic_cert(i) for i in range(2500)), command="bench") == 2500
    assert inv.count_certificates() == 2500
    assert inv.by_key_fingerprint("SHA256:fp00002499")[0].subject == "CN=user2499,O=Example"


def test_revocation_store_holds_a_crl_once_and_finds_serials(inv: Inventory) -> None:
    store = inv.revocation_store()
    now = datetime.now(UTC).replace(microsecond=0)
    info = CrlInfo(
        "ab" * 32,
        5,
        now - timedelta(hours=1),
        now + timedelta(days=1),
        "cd" * 32,
        "http://127.0.0.1/crl",
        3,
        issuer_name="12" * 16,
    )
    entries = [
        (2**159 + 1, now - timedelta(days=2), "key_compromise", None),
        (42, now - timedelta(days=1), None, None),
    ]
    store.store_crl(info, iter(entries))
    store.store_crl(info, iter(entries))  # already held: a no-op
    assert store.crl_known("ab" * 32, "", 5) == info
    assert store.crl_by_sha256("cd" * 32) == info
    assert store.crls_named("12" * 16) == [info]
    (hit,) = store.crl_entries(["cd" * 32], 2**159 + 1)
    assert hit.reason == "key_compromise" and hit.revoked_at == now - timedelta(days=2)
    assert len(store.crl_entries(["cd" * 32], 42)) == 1
    assert store.crl_entries(["ef" * 32], 42) == []  # another CRL


def test_revocation_store_keeps_the_newest_ocsp_response(inv: Inventory) -> None:
    store = inv.revocation_store()
    now = datetime.now(UTC).replace(microsecond=0)

    def rec(status: str, this_update: datetime) -> OcspRecord:
        return OcspRecord(
            "ab" * 32,
            77,
            status,
            this_update,
            this_update + timedelta(hours=1),
            this_update,
            None,
            None,
            "http://127.0.0.1/ocsp",
            b"\x30\x00",
        )

    store.store_ocsp(rec("good", now - timedelta(minutes=5)))
    store.store_ocsp(rec("revoked", now))
    store.store_ocsp(rec("good", now - timedelta(minutes=10)))  # older: ignored
    held = store.ocsp("ab" * 32, 77, now)
    assert held is not None and held.status == "revoked"
    assert store.ocsp("ab" * 32, 77, now - timedelta(minutes=1)) is None
