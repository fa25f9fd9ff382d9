"""The fast paths: the CRL DER walker, the signature check over raw TBS bytes, deferred
indexing in the inventory, the validated-path cache, and `idm verify` answered from the
inventory alone (same output as the full validation)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from idm.validator import chain as chain_module
from idm.validator.api import validate
from idm.validator.policy import Policy
from idm.validator.revocation.crl import CrlError, find_crl_signer, load_crl, lookup_der
from idm.validator.revocation.crlder import entries_from_der, raw_entries
from idm.validator.revocation.store import CrlInfo, MemoryRevocationStore
from idm.validator.signatures import crl_signature_ok
from tests.validator.pki import NOW, der, make_cert, make_pki, name, pem

LATER = dt.datetime(2060, 1, 1, tzinfo=dt.UTC)
REASONS = [None, x509.ReasonFlags.key_compromise, x509.ReasonFlags.certificate_hold]


def _crl(key, serials, *, when=NOW - dt.timedelta(hours=2), algorithm=None) -> bytes:
    b = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(name("CRL Issuer"))
        .last_update(NOW - dt.timedelta(minutes=5))
        .next_update(NOW + dt.timedelta(days=1))
        .add_extension(x509.CRLNumber(7), critical=False)
    )
    for n, serial in enumerate(serials):
        entry = x509.RevokedCertificateBuilder().serial_number(serial)
        # UTCTime before 2050, GeneralizedTime after: both forms are walked.
        entry = entry.revocation_date(when if n % 5 else dt.datetime(2051, 3, 4, 5, 6, 7))
        reason = REASONS[n % 3]
        if reason is not None:
            entry = entry.add_extension(x509.CRLReason(reason), critical=False)
        if n % 4 == 1:
            entry = entry.add_extension(x509.InvalidityDate(dt.datetime(2020, 1, 1)), False)
        b = b.add_revoked_certificate(entry.build())
    return der(b.sign(key, algorithm))


SERIALS = [1, 127, 128, 255, 256, 0x7FFF, 0x8000, 2**63, 2**158 + 12345, 3, 99, 2**64 - 1]


def test_der_walker_reads_what_cryptography_reads():
    data = _crl(ec.generate_private_key(ec.SECP256R1()), SERIALS, algorithm=hashes.SHA256())
    expected = [
        (
            rc.serial_number,
            rc.revocation_date_utc,
            next(
                (e.value.reason.name for e in rc.extensions if isinstance(e.value, x509.CRLReason)),
                None,
            ),
        )
        for rc in load_crl(data)
    ]
    assert list(entries_from_der(data)) == expected
    assert len(raw_entries(data)) == len(SERIALS)
    empty = _crl(ec.generate_private_key(ec.SECP256R1()), [], algorithm=hashes.SHA256())
    assert raw_entries(empty) == []


def test_der_walker_refuses_what_it_does_not_understand():
    data = bytearray(_crl(ec.generate_private_key(ec.SECP256R1()), [5], algorithm=hashes.SHA256()))
    with pytest.raises(ValueError):
        raw_entries(bytes(data[:40]))


@pytest.mark.parametrize("kind", ["ec", "rsa", "ed25519"])
def test_crl_signature_over_the_bytes_as_received(kind):
    def key():
        if kind == "ec":
            return ec.generate_private_key(ec.SECP256R1())
        if kind == "rsa":
            return rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return ed25519.Ed25519PrivateKey.generate()

    signer, other = key(), key()
    algorithm = None if kind == "ed25519" else hashes.SHA256()
    data = _crl(signer, [5, 6], algorithm=algorithm)
    crl = load_crl(data)
    assert crl_signature_ok(crl, signer.public_key(), data)
    assert not crl_signature_ok(crl, other.public_key(), data)
    assert crl_signature_ok(crl, signer.public_key(), None)  # re-encoded by cryptography
    # One byte changed inside the TBS (a revocation date digit): the signature fails.
    tampered = bytearray(data)
    i = tampered.find(b"Z", 100)
    tampered[i - 1] ^= 1
    assert not crl_signature_ok(load_crl(bytes(tampered)), signer.public_key(), bytes(tampered))


def test_lookup_in_der_agrees_with_cryptography():
    key = ec.generate_private_key(ec.SECP256R1())
    data = _crl(key, SERIALS, algorithm=hashes.SHA256())
    for serial in SERIALS:
        hit = lookup_der(data, serial)
        assert hit is not None
    for serial in (0, 2, 129, 2**63 + 1, 2**158 + 12346):
        assert lookup_der(data, serial) is None
    when, reason = lookup_der(data, SERIALS[1])
    assert reason == "key_compromise"


def _sql_store(url: str, **kw):
    from idm.identity.inventory.revocation import open_revocation_store

    return open_revocation_store(url, **kw)


@pytest.mark.parametrize("light", [True, False])
def test_deferred_indexing_answers_from_the_der_then_from_the_index(
    inventory_url: str, light: bool
):
    from idm.identity.inventory.store import Inventory

    inv = Inventory(inventory_url)  # creates the schema
    try:
        if light and inventory_url.startswith("sqlite"):
            store = _sql_store(inventory_url, defer_indexing_above=1)
            assert store.inventory is None  # plain sqlite3, no SQLAlchemy
        else:
            store = inv.revocation_store()
            store.defer_indexing_above = 1
        key = ec.generate_private_key(ec.SECP256R1())
        data = _crl(key, SERIALS, algorithm=hashes.SHA256())
        info = CrlInfo(
            "ab" * 32,
            7,
            NOW - dt.timedelta(minutes=5),
            NOW + dt.timedelta(days=1),
            "cd" * 32,
            "test.crl",
            len(SERIALS),
            issuer_name="ef" * 16,
        )
        store.store_crl_der(info, data)  # large: kept in memory for now
        assert store.pending and store.crl_by_sha256("cd" * 32) == info
        assert store.crls_named("ef" * 16) == [info]

        def lookup(s, n):
            found = s.crl_entries(["cd" * 32], n)
            assert len(found) <= 1
            return found[0] if found else None

        def answers(s):
            return [
                (e.revoked_at, e.reason, e.crl_sha256) if e else None
                for e in (lookup(s, n) for n in [*SERIALS, 2, 4])
            ]

        before = answers(store)
        assert before[-2:] == [None, None] and all(before[:-2])
        # Stored as DER only: another store (another process) answers from the DER...
        store.store_unindexed(info, data)
        other = inv.revocation_store()
        assert other.pending_count() == 1 and other.crl_by_sha256("cd" * 32) == info
        assert answers(other) == before
        # ... until the indexer has run.
        assert other.index_pending() == 1
        assert other.pending_count() == 0 and other.index_pending() == 0
        assert answers(other) == before
        assert answers(store) == before
        assert lookup(store, SERIALS[0]).revoked_at.year == 2051
        store.close()
    finally:
        inv.close()


def test_path_cache_skips_path_validation_but_not_revocation(tmp_path, monkeypatch):
    from idm.identity.inventory.store import Inventory

    root, inter, leaf = make_pki()
    inv = Inventory(f"sqlite:///{tmp_path / 'inv.sqlite'}")
    store = inv.revocation_store()
    kw = dict(anchors=[root.cert], intermediates=[inter.cert], store=store)
    first = validate(leaf.cert, crls=[inter.crl(), root.crl()], **kw)
    assert first.valid, first.reason

    calls = []
    real = chain_module._pyhanko_validate
    monkeypatch.setattr(chain_module, "_pyhanko_validate", lambda *a: calls.append(1) or real(*a))
    again = validate(leaf.cert, **kw)
    assert again == first and again.chain == first.chain
    assert not calls
    # Revocation is checked every time: a new CRL listing the leaf revokes it at once.
    inter.revoke(leaf.cert)
    revoked = validate(leaf.cert, crls=[inter.crl()], **kw)
    assert revoked.status == "revoked" and not calls
    # Other inputs or a time outside the chain's validity: validated afresh.
    validate(leaf.cert, policy=Policy(purpose="any"), **kw)
    assert len(calls) == 1
    validate(leaf.cert, at=NOW + dt.timedelta(days=3650), **kw)
    assert len(calls) == 2
    inv.close()


def test_failed_paths_are_not_remembered(monkeypatch):
    root, inter, leaf = make_pki(not_after=NOW - dt.timedelta(days=1))
    store = MemoryRevocationStore()
    kw = dict(anchors=[root.cert], intermediates=[inter.cert], store=store)
    assert validate(leaf.cert, **kw).status == "expired"
    calls = []
    real = chain_module._pyhanko_validate
    monkeypatch.setattr(chain_module, "_pyhanko_validate", lambda *a: calls.append(1) or real(*a))
    assert validate(leaf.cert, **kw).status == "expired"
    assert calls


# -- idm verify: the same answer from the inventory alone ------------------------------------


@pytest.fixture
def files(tmp_path):
    root, inter, leaf = make_pki()
    bad = make_cert("mallory", inter, eku=[x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH])
    inter.revoke(bad.cert)
    d = tmp_path / "pki"
    d.mkdir()
    (d / "ca.pem").write_bytes(pem(root.cert))
    (d / "leaf.pem").write_bytes(pem(leaf.cert) + pem(inter.cert))
    (d / "bad.pem").write_bytes(pem(bad.cert) + pem(inter.cert))
    (d / "inter.crl").write_bytes(inter.crl())
    (d / "root.crl").write_bytes(root.crl())
    return d


def _verify(db: str, *args: str) -> tuple[int, list[dict]]:
    """Run `idm verify --json` in a new process; (exit code, JSON lines)."""
    code = (
        "import sys; from idm.cli.main import COMMANDS, run; "
        "COMMANDS.setdefault('verify', 'idm.cli.verify:verify'); run()"
    )
    env = dict(os.environ, IDM_DB=db, XDG_CONFIG_HOME="/nonexistent")
    env.pop("IDM_CONFIG", None)
    proc = subprocess.run(
        [sys.executable, "-c", code, "verify", "--json", *args],
        env=env,
        capture_output=True,
        text=True,
    )
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()]


def test_verify_answers_from_the_inventory_exactly_as_the_full_way(files, tmp_path):
    db = f"sqlite:///{tmp_path / 'inv.sqlite'}"
    args = [
        "--ca",
        str(files / "ca.pem"),
        "--crl",
        str(files / "inter.crl"),
        "--crl",
        str(files / "root.crl"),
        str(files / "leaf.pem"),
        str(files / "bad.pem"),
    ]
    cold = _verify(db, *args)
    warm = _verify(db, *args)
    assert cold[0] == warm[0] == 1
    assert [o["status"] for o in cold[1]] == ["valid", "revoked"]
    assert cold == warm
    full = _verify(db, "--no-cache", *args)
    assert [o["status"] for o in full[1]] == ["valid", "revoked"]


def test_warm_verify_imports_no_cryptography_sqlalchemy_or_pyhanko(files, tmp_path):
    db = f"sqlite:///{tmp_path / 'inv.sqlite'}"
    args = [
        "--ca",
        str(files / "ca.pem"),
        "--crl",
        str(files / "inter.crl"),
        "--crl",
        str(files / "root.crl"),
        str(files / "leaf.pem"),
    ]
    assert _verify(db, *args)[0] == 0
    probe = (
        "import sys, atexit\n"
        "def report():\n"
        "    heavy = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'cryptography', 'sqlalchemy', 'pyhanko_certvalidator', 'alembic', 'requests'})\n"
        "    sys.stderr.write('HEAVY=' + ','.join(heavy) + '\\n')\n"
        "atexit.register(report)\n"
        "from idm.cli.main import COMMANDS, run\n"
        "COMMANDS.setdefault('verify', 'idm.cli.verify:verify')\n"
        "run()\n"
    )
    env = dict(os.environ, IDM_DB=db, XDG_CONFIG_HOME="/nonexistent")
    env.pop("IDM_CONFIG", None)
    proc = subprocess.run(
        [sys.executable, "-c", probe, "verify", *args], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY=\n" in proc.stderr, proc.stderr


def test_large_crl_is_indexed_in_the_background(files, tmp_path, monkeypatch):
    from idm.cli import main as cli_main
    from idm.cli import verify as verify_module
    from idm.identity.inventory.revocation import open_revocation_store

    monkeypatch.setattr(verify_module, "DEFER_INDEXING_ABOVE", 0)
    monkeypatch.setitem(cli_main.COMMANDS, "verify", "idm.cli.verify:verify")
    db = f"sqlite:///{tmp_path / 'inv.sqlite'}"
    monkeypatch.setenv("IDM_DB", db)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("IDM_CONFIG", raising=False)
    args = [
        "verify",
        "--ca",
        str(files / "ca.pem"),
        "--crl",
        str(files / "inter.crl"),
        "--crl",
        str(files / "root.crl"),
        str(files / "bad.pem"),
    ]
    r = CliRunner().invoke(cli_main.cli, args, catch_exceptions=False)
    assert r.exit_code == 1 and "revoked" in r.output  # answered from the stored DER
    sha = hashlib.sha256((files / "inter.crl").read_bytes()).hexdigest()
    store = open_revocation_store(db)
    deadline = time.monotonic() + 60
    while (store.crl_by_sha256(sha) is None or store.pending_count()) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert store.crl_by_sha256(sha) is not None and store.pending_count() == 0
    store.close()
    r = CliRunner().invoke(cli_main.cli, args, catch_exceptions=False)
    assert r.exit_code == 1 and "revoked" in r.output  # now from the index


def test_find_crl_signer_by_name_and_key():
    root, inter, _ = make_pki()
    impostor = make_cert("Test Intermediate", root, ca=True)  # same name, other key
    data = inter.crl()
    crl = load_crl(data)
    assert find_crl_signer(crl, [root.cert, impostor.cert, inter.cert], data) is inter.cert
    with pytest.raises(CrlError, match="not signed by any known CA"):
        find_crl_signer(crl, [root.cert, impostor.cert], data)


def test_forked_indexer_of_a_single_threaded_verify(files, tmp_path):
    """`idm verify` as users run it (one thread): the CRL is written by a forked child."""
    from idm.identity.inventory.revocation import open_revocation_store

    db = f"sqlite:///{tmp_path / 'inv.sqlite'}"
    code = (
        "import idm.cli.verify as v; v.DEFER_INDEXING_ABOVE = 0\n"
        "from idm.cli.main import COMMANDS, run\n"
        "COMMANDS.setdefault('verify', 'idm.cli.verify:verify')\n"
        "run()\n"
    )
    env = dict(os.environ, IDM_DB=db, XDG_CONFIG_HOME="/nonexistent")
    env.pop("IDM_CONFIG", None)
    args = [
        "verify",
        "--ca",
        str(files / "ca.pem"),
        "--crl",
        str(files / "inter.crl"),
        "--crl",
        str(files / "root.crl"),
        str(files / "bad.pem"),
    ]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1 and "revoked" in proc.stdout, proc.stderr
    sha = hashlib.sha256((files / "inter.crl").read_bytes()).hexdigest()
    store = open_revocation_store(db)
    deadline = time.monotonic() + 60
    while store.crl_by_sha256(sha) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.crl_by_sha256(sha) is not None and store.pending_count() == 0
    store.close()
    again = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 1 and again.stdout == proc.stdout
