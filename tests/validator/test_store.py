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


def _crl(number, this_update, next_update, sha, issuer="aa" * 32, scope=""):
    return CrlInfo(issuer, number, this_update, next_update, sha, "test", 2, "nn" * 16, scope)


def test_protocol(store):
    assert isinstance(store, RevocationStore)


def test_crls_and_their_entries(store):
    k = "aa" * 32
    old = _crl(1, NOW - 48 * H, NOW - 24 * H, "01" * 32)
    cur = _crl(2, NOW - H, NOW + 24 * H, "02" * 32)
    store.store_crl(old, [(5, NOW - 72 * H, None, None), (7, NOW - 60 * H, "key_compromise", None)])
    store.store_crl(cur, iter([(5, NOW - 70 * H, None, None), (9, NOW + H, None, "ii" * 16)]))
    store.store_crl(cur, [(11, NOW - H, None, None)])  # already held: a no-op
    assert store.crl_by_sha256("02" * 32).crl_number == 2
    assert store.crl_known(k, "", 2).sha256 == "02" * 32
    assert store.crl_known(k, "", 3) is None
    assert store.crl_known(k, "other scope", 2) is None
    assert sorted(c.crl_number for c in store.crls_named("nn" * 16)) == [1, 2]
    assert store.crls_named("zz" * 16) == []
    both = store.crl_entries(["01" * 32, "02" * 32], 5)
    assert sorted((e.crl_sha256, e.revoked_at) for e in both) == [
        ("01" * 32, NOW - 72 * H), ("02" * 32, NOW - 70 * H)]
    (nine,) = store.crl_entries(["02" * 32], 9)
    assert nine.cert_issuer == "ii" * 16 and nine.reason is None
    assert store.crl_entries(["01" * 32], 9) == []
    assert store.crl_entries(["02" * 32], 11) == []
    assert store.crl_entries([], 5) == []
    big = 2**159 + 12345  # 20-octet serials must round-trip
    store.store_crl(_crl(3, NOW, NOW + H, "03" * 32), [(big, NOW - H, None, None)])
    assert store.crl_entries(["03" * 32], big)[0].serial == big
    neg = -1  # PKITS 4.4.14/15: negative serials round-trip too
    store.store_crl(_crl(4, NOW, NOW + H, "04" * 32), [(neg, NOW - H, "key_compromise", None)])
    assert store.crl_entries(["04" * 32], neg)[0].reason == "key_compromise"


def test_same_number_other_scope_is_another_crl(store):
    a = _crl(1, NOW - H, NOW + H, "05" * 32, scope="")
    b = _crl(1, NOW - H, NOW + H, "06" * 32, scope='{"s":"x","d":null}')
    store.store_crl(a, [])
    store.store_crl(b, [(3, NOW - H, None, None)])
    assert {c.sha256 for c in store.crls_named("nn" * 16)} == {"05" * 32, "06" * 32}


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


def test_an_expired_crl_is_replaced_by_a_newer_one_of_its_lineage(tmp_path):
    """The inventory drops an expired CRL when a newer one of the same signer and lineage
    arrives: a complete CRL by a complete one, a delta CRL by a delta of any base."""
    from idm.identity.inventory.store import open_inventory
    from idm.validator.revocation.scope import CrlScope

    now = dt.datetime.now(dt.UTC)
    delta = [CrlScope(delta_base=n).to_text() for n in (1, 2)]
    inv = open_inventory(f"sqlite:///{tmp_path / 'inv.sqlite'}")
    store = inv.revocation_store()
    store.store_crl(_crl(1, now - 50 * H, now - 26 * H, "01" * 32), [(5, now - 60 * H, None, None)])
    store.store_crl(_crl(2, now - 50 * H, now - 26 * H, "02" * 32, scope=delta[0]), [])
    store.store_crl(_crl(3, now - H, now + H, "03" * 32, scope=delta[1]), [])
    assert {c.sha256 for c in store.crls_named("nn" * 16)} == {"01" * 32, "03" * 32}
    store.store_crl(_crl(4, now - H, now + H, "04" * 32), [])
    assert {c.sha256 for c in store.crls_named("nn" * 16)} == {"03" * 32, "04" * 32}
    assert store.crl_entries(["01" * 32], 5) == []
    inv.close()
