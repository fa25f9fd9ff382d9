"""The snapshot and the plain-key path of `idm authorized-keys`, without sshd.

Snapshots here are written with synthetic entries (the format is the contract between
`idm refresh` and the helper); keys are real ones made by ssh-keygen.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from pathlib import Path

import pytest

from idm.identity.server.snapshot import (
    DeniedEntry,
    KeyEntry,
    Snapshot,
    SnapshotError,
    key_digest,
    write_snapshot,
)
from tests.server.helpers import helper

HEAVY = ("sqlalchemy", "pyhanko_certvalidator", "requests", "click", "cryptography",
         "asn1crypto", "alembic")


def keygen(tmp_path: Path, name: str, kind: str = "ed25519") -> tuple[str, str]:
    path = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", name, "-f", str(path)],
                   check=True)
    key_type, b64 = (tmp_path / f"{name}.pub").read_text().split()[:2]
    return key_type, b64


def entry(key_type: str, b64: str, user: str, *, valid_for: int = 3600,
          cert: str = "ab" * 32, x509_line: str = "") -> KeyEntry:
    until = int(time.time()) + valid_for
    line = f'expiry-time="{time.strftime("%Y%m%d%H%M%S", time.gmtime(until))}Z" ' \
           f"{key_type} {b64} idm:{cert[:16]} CN={user}"
    return KeyEntry(key_digest(base64.b64decode(b64)), user, key_type, until, cert,
                    f"CN={user}", "email", line, x509_line)


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, tuple[str, str]]:
    keys = {n: keygen(tmp_path, n) for n in ("alice", "bob", "revoked", "stranger")}
    keys["carol"] = keygen(tmp_path, "carol", "rsa")
    return keys


@pytest.fixture
def snapshot(safe_tmp: Path, keys: dict[str, tuple[str, str]]) -> Path:
    path = safe_tmp / "state" / "snapshot.sqlite"
    path.parent.mkdir()
    now = int(time.time())
    entries = [
        entry(*keys["alice"], "alice", cert="a1" * 32),
        entry(*keys["alice"], "root", cert="a1" * 32),
        entry(*keys["bob"], "bob", valid_for=-10, cert="b0" * 32),
        # (the line idm refresh writes for PKIX-SSH holds a certificate; any text does here)
        entry(*keys["carol"], "carol", cert="c0" * 32, x509_line="x509v3-sign-rsa MIIB carol"),
    ]
    denied = [DeniedEntry("dd" * 32, key_digest(base64.b64decode(keys["revoked"][1])),
                          "revoked", "keyCompromise")]
    info = write_snapshot(path, entries, denied, written_at=now, deadline=now + 600,
                          source="test")
    assert info.entries == 4
    assert path.stat().st_mode & 0o777 == 0o644
    return path


def run(snapshot: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return helper("--snapshot", str(snapshot), *args)


def test_authorized_key_prints_its_line(snapshot: Path, keys: dict) -> None:
    proc = run(snapshot, "alice", *keys["alice"])
    assert proc.returncode == 0, proc.stderr
    [line] = proc.stdout.splitlines()
    assert line.startswith('expiry-time="') and f"{keys['alice'][1]} idm:a1a1" in line


def test_user_alone_prints_every_fresh_key(snapshot: Path, keys: dict) -> None:
    proc = run(snapshot, "root")
    assert proc.returncode == 0 and keys["alice"][1] in proc.stdout
    assert run(snapshot, "bob").returncode == 1  # bob's only entry is no longer fresh
    assert run(snapshot, "nobody-here").returncode == 1


@pytest.mark.parametrize(
    ("user", "key", "why"),
    [
        ("bob", "alice", "is mapped to alice, root, not to bob"),
        ("bob", "bob", "is no longer fresh"),
        ("alice", "revoked", "is revoked: keyCompromise"),
        ("alice", "stranger", "no approved, valid certificate holds this key"),
    ],
)
def test_refusals_say_why_in_one_line(snapshot: Path, keys: dict, user: str, key: str,
                                      why: str) -> None:
    proc = run(snapshot, user, *keys[key])
    assert proc.returncode == 1 and proc.stdout == ""
    [line] = proc.stderr.splitlines()
    assert line.startswith("idm authorized-keys: DENY: ") and why in line, line


def test_key_type_must_match(snapshot: Path, keys: dict) -> None:
    proc = run(snapshot, "alice", "ssh-rsa", keys["alice"][1])
    assert proc.returncode == 1 and "key type does not match" in proc.stderr


@pytest.mark.parametrize("x509_type", ["x509v3-sign-rsa", "x509v3-ssh-rsa",
                                       "x509v3-rsa2048-sha256"])
def test_pkixssh_sshd_x509_type_with_plain_key_gets_the_x509_line(
    snapshot: Path, keys: dict, x509_type: str
) -> None:
    # PKIX-SSH's sshd passes %t = an X.509 key type and %k = the plain key (docs/server.md)
    proc = run(snapshot, "carol", x509_type, keys["carol"][1])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "x509v3-sign-rsa MIIB carol\n"


@pytest.mark.parametrize(("user", "x509_type", "key", "why"), [
    ("carol", "x509v3-ecdsa-sha2-nistp256", "carol",
     "x509v3-ecdsa-sha2-nistp256 is not an X.509 key type of a ssh-rsa key"),
    ("alice", "x509v3-ssh-ed25519", "alice", "is not an X.509 key type of a ssh-ed25519 key"),
    ("bob", "x509v3-sign-rsa", "carol", "is mapped to carol, not to bob"),
])
def test_pkixssh_sshd_refusals(snapshot: Path, keys: dict, user: str, x509_type: str,
                               key: str, why: str) -> None:
    proc = run(snapshot, user, x509_type, keys[key][1])
    assert proc.returncode == 1 and proc.stdout == ""
    assert why in proc.stderr, proc.stderr


def test_pkixssh_sshd_needs_the_x509_line(safe_tmp: Path, keys: dict) -> None:
    path = safe_tmp / "no-x509.sqlite"
    now = int(time.time())
    write_snapshot(path, [entry(*keys["carol"], "carol")], written_at=now, deadline=now + 60)
    assert run(path, "carol", "ssh-rsa", keys["carol"][1]).returncode == 0
    proc = run(path, "carol", "x509v3-sign-rsa", keys["carol"][1])
    assert proc.returncode == 1 and "no X.509 line for this key" in proc.stderr


def test_stale_snapshot_refuses(safe_tmp: Path, keys: dict) -> None:
    path = safe_tmp / "stale.sqlite"
    now = int(time.time())
    write_snapshot(path, [entry(*keys["alice"], "alice")], written_at=now - 7200,
                   deadline=now - 3600)
    proc = run(path, "alice", *keys["alice"])
    assert proc.returncode == 1 and proc.stdout == ""
    assert "is stale" in proc.stderr and "idm refresh" in proc.stderr


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "missing", "not-sqlite"])
def test_damaged_snapshot_refuses(snapshot: Path, keys: dict, damage: str) -> None:
    data = snapshot.read_bytes()
    if damage == "truncate":
        snapshot.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        snapshot.write_bytes(data[:100] + b"\x00" * (len(data) - 100))
    elif damage == "empty":
        snapshot.write_bytes(b"")
    elif damage == "missing":
        snapshot.unlink()
    else:
        snapshot.write_text("alice ssh-ed25519 AAAA\n" * 10)
    proc = run(snapshot, "alice", *keys["alice"])
    assert proc.returncode == 1 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr
    assert ("missing" if damage == "missing" else "corrupt") in proc.stderr, proc.stderr


def test_snapshot_reader_api(snapshot: Path, keys: dict) -> None:
    with Snapshot(snapshot) as snap:
        snap.check_fresh()
        assert {e.username for e in snap.keys_for_digest(
            key_digest(base64.b64decode(keys["alice"][1])))} == {"alice", "root"}
        assert snap.denied_certificate("dd" * 32) is not None
    with pytest.raises(SnapshotError, match="stale"):
        Snapshot(snapshot, now=time.time() + 601).check_fresh()


def test_help_and_usage(snapshot: Path) -> None:
    proc = helper("--help")
    assert proc.returncode == 0 and proc.stdout.startswith("usage: idm authorized-keys")
    proc = helper("--snapshot", str(snapshot))
    assert proc.returncode == 2 and "usage" in proc.stderr and proc.stdout == ""
    proc = helper("--snapshot", str(snapshot), "a", "b", "c", "d")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_config_errors_refuse(safe_tmp: Path, keys: dict) -> None:
    bad = safe_tmp / "bad.toml"
    bad.write_text("[server\n")
    proc = helper("--config", str(bad), "alice", *keys["alice"])
    assert proc.returncode == 1 and "configuration" in proc.stderr and "TOML" in proc.stderr
    proc = helper("--config", str(safe_tmp / "none.toml"), "alice", *keys["alice"])
    assert proc.returncode == 1 and "does not exist" in proc.stderr


def test_log_file_gets_the_same_line(snapshot: Path, keys: dict, tmp_path: Path) -> None:
    log = tmp_path / "helper.log"
    proc = helper("--snapshot", str(snapshot), "--log-file", str(log), "bob",
                  *keys["stranger"])
    assert proc.returncode == 1
    assert proc.stderr.strip() in log.read_text()


_PROBE = """
import atexit, sys
heavy = {heavy!r}
def report():
    loaded = sorted({{m.split('.')[0] for m in sys.modules}} & set(heavy))
    sys.__stderr__.write('HEAVY=' + ','.join(loaded) + '\\n')
atexit.register(report)
sys.argv = ['idm', 'authorized-keys', *{args!r}]
from idm.cli.entry import main
main()
"""


@pytest.mark.parametrize("mode", ["allowed", "denied", "user-only", "stale", "pkixssh"])
def test_plain_key_path_imports_nothing_heavy(snapshot: Path, keys: dict, mode: str,
                                              tmp_path: Path) -> None:
    args = {
        "allowed": ["--snapshot", str(snapshot), "alice", *keys["alice"]],
        "denied": ["--snapshot", str(snapshot), "alice", *keys["revoked"]],
        "user-only": ["--snapshot", str(snapshot), "root"],
        "stale": ["--snapshot", str(tmp_path / "missing.sqlite"), "alice", *keys["alice"]],
        "pkixssh": ["--snapshot", str(snapshot), "carol", "x509v3-rsa2048-sha256",
                    keys["carol"][1]],
    }[mode]
    proc = subprocess.run([sys.executable, "-c", _PROBE.format(heavy=HEAVY, args=args)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == (0 if mode in ("allowed", "user-only", "pkixssh") else 1), \
        proc.stderr
    assert "HEAVY=\n" in proc.stderr, proc.stderr


def test_readers_never_see_a_partial_snapshot_while_refreshes_replace_it(
    tmp_path: Path, keys: dict
) -> None:
    import threading

    path = tmp_path / "busy.sqlite"
    now = int(time.time())
    filler = [entry("ssh-ed25519", base64.b64encode(b"k%05d" % i).decode(), f"u{i}")
              for i in range(2000)]
    target = entry(*keys["alice"], "alice")
    write_snapshot(path, [target, *filler], written_at=now, deadline=now + 600)
    digest = key_digest(base64.b64decode(keys["alice"][1]))
    errors: list[str] = []
    done = threading.Event()

    def reader() -> None:
        lookups = 0
        while not done.is_set() or lookups < 50:
            try:
                with Snapshot(path) as snap:
                    snap.check_fresh()
                    if [e.username for e in snap.keys_for_digest(digest)] != ["alice"]:
                        errors.append("lookup missed")
            except SnapshotError as exc:
                errors.append(str(exc))
            lookups += 1

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(30):
        write_snapshot(path, [*filler[i:], target], written_at=now, deadline=now + 600)
    done.set()
    for t in threads:
        t.join()
    assert errors == []
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
