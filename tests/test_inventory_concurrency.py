"""Eight `idm` processes writing one inventory at once, on SQLite and on PostgreSQL.

A fleet's clients enroll, administrators run `idm allow`, and servers run `idm refresh`
against the same PostgreSQL inventory. Each step below starts 8 processes doing the same
thing to the same rows at the same moment, which is where check-then-insert races: before,
7 of 83 such attempts failed with exit 1 and a raw `duplicate key value violates unique
constraint` (for `idm enroll`, exit 1 means "not approved"). Now every attempt must
succeed and every row and event must be there exactly once.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import create_engine, text

from tests.validator.pki import make_cert, pem

IDM = str(Path(sys.executable).with_name("idm"))
WRITERS = 8
ROUNDS = 3


def at_once(commands: list[list[str]]) -> list[subprocess.CompletedProcess[str]]:
    """Start every command, then wait for all: they reach the database together."""
    procs = [subprocess.Popen([IDM, *c], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True) for c in commands]
    done = []
    for cmd, p in zip(commands, procs, strict=True):
        out, err = p.communicate(timeout=600)
        done.append(subprocess.CompletedProcess([IDM, *cmd], p.returncode, out, err))
    return done


@pytest.fixture
def world(tmp_path: Path, inventory_url: str) -> tuple[Path, list[Path]]:
    root = make_cert("Concurrency Root", None, ca=True)
    (tmp_path / "ca.pem").write_bytes(pem(root.cert))
    (tmp_path / "root.crl").write_bytes(root.crl())  # one CRL every check stores in the cache
    leaves = []
    for k in range(ROUNDS):
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"user{k}")])
        leaf = make_cert("x", root, subject_name=subject, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
        path = tmp_path / f"user{k}.pem"
        path.write_bytes(pem(leaf.cert))
        leaves.append(path)
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'db = "{inventory_url}"\n'
        f'[validation]\nca = ["{tmp_path / "ca.pem"}"]\n'
        f'[revocation]\npolicy = "hard-fail"\ncrl = ["{tmp_path / "root.crl"}"]\n'
        '[server]\nmapping = ["principals"]\n'
    )
    # The schema first, as the first command of any installation would.
    assert subprocess.run([IDM, "--config", str(cfg), "db", "upgrade"],
                          capture_output=True, check=False).returncode == 0
    return cfg, leaves


def counts(url: str) -> dict[str, object]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            one = lambda sql: conn.execute(text(sql)).scalar()  # noqa: E731
            return {
                "tokens": one("SELECT count(*) FROM tokens"),
                "certificates": one("SELECT count(*) FROM certificates"),
                "approved": one("SELECT count(*) FROM certificates WHERE status = 'approved'"),
                "principals": one("SELECT count(*) FROM principals"),
                "crls": one("SELECT count(*) FROM crls"),
                "events": Counter(k for (k,) in conn.execute(text("SELECT kind FROM events"))),
            }
    finally:
        engine.dispose()


def test_eight_writers_enroll_allow_and_refresh_without_a_failure(
    world: tuple[Path, list[Path]], inventory_url: str, tmp_path: Path
) -> None:
    cfg, leaves = world
    common = ["--config", str(cfg)]
    results: list[subprocess.CompletedProcess[str]] = []
    for k, leaf in enumerate(leaves):
        token = f"pkcs11:token=card{k};manufacturer=M;model=X;serial={k:04d}"
        results += at_once([[*common, "enroll", "--token", token, "--cert", str(leaf)]] * WRITERS)
        results += at_once([[*common, "allow", f"user{k}", "--principal", f"user{k}"]] * WRITERS)
        results += at_once([[*common, "refresh", "--snapshot", str(tmp_path / f"snap{w}.sqlite")]
                            for w in range(WRITERS)])
        results += at_once([[*common, "verify", str(leaf)]] * WRITERS)
    failed = [(r.args[3:5], r.returncode, r.stderr.strip()[-300:]) for r in results
              if r.returncode != 0]
    assert failed == [], f"{len(failed)} of {len(results)} attempts failed: {failed[:4]}"
    assert not any("duplicate key" in r.stderr or "UNIQUE constraint" in r.stderr
                   for r in results)

    found = counts(inventory_url)
    events = found.pop("events")
    assert found == {"tokens": ROUNDS, "certificates": ROUNDS, "approved": ROUNDS,
                     "principals": ROUNDS, "crls": 1}
    assert isinstance(events, Counter)
    for kind in ("token-added", "token-absent", "enrolled", "approved", "allowed"):
        assert events[kind] == ROUNDS, (kind, events)
