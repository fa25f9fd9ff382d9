"""The RevocationStore contract, on the in-memory store and on the inventory's SQL store."""

from __future__ import annotations

import datetime as dt

import pytest

from idm.validator.revocation.store import (
    CrlInfo,
    MemoryRevocationStore,
    OcspRecord,
    RevocationStore,
)

NOW = dt.datetime(2030, 1, 10, 12, 0, tzinfo=dt.UTC)
H = dt.timedelta(hours=1)


@pytest.fixture(params=["memory", "sqlite"])
def store(request, tmp_path):
    if request.param == "memory":
        yield MemoryRevocationStore()
        return
    from idm.identity.inventory.store import open_inventory

    inv = open_inventory(f"sqlite:///{tmp_path / 'inv.sqlite'}")
    try:
        yield inv.revocation_store()
    finally:
        inv.close()


def _crl(number, this_update, next_update, sha, issuer="aa" * 32):
    return CrlInfo(issuer, number, this_update, next_update, sha, "test", 2)


def test_protocol(store):
    assert isinstance(store, RevocationStore)


def test_crls_and_revoked_serials(store):
    k = "aa" * 32
    old = _crl(1, NOW - 48 * H, NOW - 24 * H, "01" * 32)
    cur = _crl(2, NOW - H, NOW + 24 * H, "02" * 32)
    store.store_crl(old, [(5, NOW - 72 * H, None), (7, NOW - 60 * H, "key_compromise")])
    store.store_crl(cur, iter([(5, NOW - 70 * H, None), (9, NOW + H, None)]))
    store.store_crl(cur, [(11, NOW - H, None)])  # already held: a no-op
    assert store.crl_by_sha256("02" * 32).crl_number == 2
    assert store.crl_known(k, 2).sha256 == "02" * 32
    assert store.crl_known(k, 3) is None
    assert [c.crl_number for c in store.current_crls(k, NOW)] == [2]
    assert store.current_crls(k, NOW + 48 * H) == []
    assert store.current_crls("bb" * 32, NOW) == []
    hit = store.revoked(k, 5, NOW)
    assert hit is not None and hit.revoked_at == NOW - 72 * H  # the earliest listing
    assert store.revoked(k, 9, NOW) is None  # revoked after `at`
    assert store.revoked(k, 9, NOW + 2 * H) is not None
    assert store.revoked(k, 11, NOW) is None
    assert store.revoked("bb" * 32, 5, NOW) is None
    big = 2**159 + 12345  # 20-octet serials must round-trip
    store.store_crl(_crl(3, NOW, NOW + H, "03" * 32), [(big, NOW - H, None)])
    assert store.revoked(k, big, NOW).serial == big


def test_ocsp_records(store):
    k = "cc" * 32

    def rec(status, tu):
        return OcspRecord(k, 42, status, tu, tu + 2 * H, tu, None, None, "http://x", b"der")

    store.store_ocsp(rec("good", NOW - H))
    assert store.ocsp(k, 42, NOW).status == "good"
    assert store.ocsp(k, 42, NOW - 2 * H) is None
    store.store_ocsp(rec("revoked", NOW))
    assert store.ocsp(k, 42, NOW).status == "revoked"
    store.store_ocsp(rec("good", NOW - 5 * H))  # older than held: ignored
    assert store.ocsp(k, 42, NOW).status == "revoked"
    assert store.ocsp(k, 43, NOW) is None
