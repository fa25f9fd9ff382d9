"""An inventory this idm cannot read: a newer idm's schema, or a damaged schema marker.

Before, an inventory marked with a revision this idm does not know failed with Alembic's
`Can't locate revision identified by …` and exit 1. Now every command says that a newer
idm wrote it and which revisions this idm knows (or that the marker is damaged), exits 2,
and changes nothing: the SQLite file stays byte for byte the same.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from idm.identity.inventory.store import SCHEMA_REVISION, Inventory, known_revisions
from tests.validator.pki import make_cert, pem

IDM = str(Path(sys.executable).with_name("idm"))
NEWER = "9999"  # not the next real revision: a number no idm of this line will use


def idm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([IDM, *args], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def execute(url: str, *statements: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        for sql in statements:
            conn.execute(text(sql))
    engine.dispose()


def snapshot_of(url: str) -> object:
    """What must not change: the SQLite file's bytes, or PostgreSQL's rows."""
    if url.startswith("sqlite"):
        return hashlib.sha256(Path(url.removeprefix("sqlite:///")).read_bytes()).hexdigest()
    engine = create_engine(url)
    with engine.connect() as conn:
        state = {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar()
                 for t in ("tokens", "certificates", "events", "principals")}
        if conn.execute(text("SELECT to_regclass('alembic_version')")).scalar():
            state["marker"] = sorted(r for (r,) in conn.execute(
                text("SELECT version_num FROM alembic_version")))
    engine.dispose()
    return state


@pytest.fixture
def inventory(inventory_url: str, tmp_path: Path) -> str:
    inv = Inventory(inventory_url)
    inv.allow("root", "principal", "alice@example.org", command="test")
    inv.close()
    return inventory_url


def commands(tmp_path: Path, url: str) -> list[list[str]]:
    root = make_cert("Root", None, ca=True)
    leaf = make_cert("alice", root)
    (tmp_path / "ca.pem").write_bytes(pem(root.cert))
    (tmp_path / "alice.pem").write_bytes(pem(leaf.cert))
    (tmp_path / "root.crl").write_bytes(root.crl())  # verify keeps it in the inventory
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'db = "{url}"\n[validation]\nca = ["{tmp_path / "ca.pem"}"]\n'
                   f'[revocation]\ncrl = ["{tmp_path / "root.crl"}"]\n')
    base = ["--config", str(cfg)]
    return [
        [*base, "list"],
        [*base, "db", "upgrade"],
        [*base, "events"],
        [*base, "allow", "bob", "--principal", "bob@example.org"],
        [*base, "enroll", "--token", "pkcs11:token=c;manufacturer=M;model=X;serial=1",
         "--cert", str(tmp_path / "alice.pem")],
        [*base, "verify", str(tmp_path / "alice.pem")],
        [*base, "refresh", "--snapshot", str(tmp_path / "snapshot.sqlite")],
        [*base, "krl", "--output", str(tmp_path / "revoked.krl")],
    ]


def test_known_revisions_end_at_this_idms_schema() -> None:
    known = known_revisions()
    assert known[-1] == SCHEMA_REVISION and NEWER not in known


def test_a_newer_idms_inventory_is_refused_and_left_alone(
    inventory: str, tmp_path: Path
) -> None:
    execute(inventory, f"UPDATE alembic_version SET version_num = '{NEWER}'")
    before = snapshot_of(inventory)
    for args in commands(tmp_path, inventory):
        proc = idm(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        [line] = proc.stderr.splitlines()
        assert f"has schema revision '{NEWER}': a newer idm wrote it" in line, line
        assert f"this idm knows revisions 0001 to {SCHEMA_REVISION} only" in line, line
        assert "Can't locate revision" not in line
        assert snapshot_of(inventory) == before, args


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (["DELETE FROM alembic_version"], "inconsistent schema marker (0 revisions: none)"),
        ([f"INSERT INTO alembic_version VALUES ('{SCHEMA_REVISION[:-1]}9')"],
         "inconsistent schema marker (2 revisions"),
        (["UPDATE alembic_version SET version_num = 'abc'"], "unknown schema revision 'abc'"),
        (["DROP TABLE alembic_version"], "has idm's tables but no schema marker"),
    ],
    ids=["empty", "two-rows", "not-a-revision", "no-marker"],
)
def test_a_damaged_schema_marker_is_refused_and_left_alone(
    inventory: str, tmp_path: Path, damage: list[str], words: str
) -> None:
    execute(inventory, *damage)
    before = snapshot_of(inventory)
    for args in commands(tmp_path, inventory)[:3]:
        proc = idm(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        [line] = proc.stderr.splitlines()
        assert words in line and "nothing was changed" in line, line
        assert snapshot_of(inventory) == before, args
