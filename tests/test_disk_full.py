"""A full disk under the SQLite inventory: say what failed, exit 2, lose nothing.

The inventory lives on a small tmpfs mounted by the test; a process holds it open (as a
running agent would, so its WAL and shared-memory files exist) while a filler file takes
every free block. Before, `idm enroll` and `idm allow` said "cannot open the inventory"
(it had opened) and exited 1, which for enroll means "not approved".
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.validator.pki import make_cert, pem

IDM = str(Path(sys.executable).with_name("idm"))


def idm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([IDM, *args], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "idm-test-disk",
                    str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == 28  # ENOSPC: the disk is full
    finally:
        os.close(fd)
    return filler


def test_writes_on_a_full_disk_say_so_and_lose_nothing(small_disk: Path,
                                                      tmp_path: Path) -> None:
    root = make_cert("Root", None, ca=True)
    leaf = make_cert("alice", root, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    (tmp_path / "ca.pem").write_bytes(pem(root.cert))
    (tmp_path / "alice.pem").write_bytes(pem(leaf.cert))
    db = small_disk / "inventory.sqlite"
    url = f"sqlite:///{db}"
    common = ["--db", url]
    assert idm(*common, "allow", "root", "--principal", "before@example.org").returncode == 0

    holder = sqlite3.connect(db)  # keeps the -wal and -shm files, as a running agent does
    holder.execute("SELECT count(*) FROM events").fetchall()
    filler = fill(small_disk)
    try:
        attempts = {
            "allow": idm(*common, "allow", "root", "--principal", "alice@example.org"),
            "enroll": idm(*common, "enroll", "--token",
                          "pkcs11:token=card;manufacturer=M;model=X;serial=1",
                          "--cert", str(tmp_path / "alice.pem"), "--ca",
                          str(tmp_path / "ca.pem"), "--revocation", "off"),
        }
        for name, proc in attempts.items():
            assert proc.returncode == 2, (name, proc.stderr)
            [line] = proc.stderr.splitlines()
            assert line == (f"idm: error: cannot write to the inventory at {url}: "
                            "database or disk is full"), (name, line)
        listed = idm(*common, "list", "--json")  # reading still works
        assert listed.returncode == 0 and "alice" not in listed.stdout
    finally:
        filler.unlink()
        holder.close()

    # Nothing was lost or half-written, and with space again the same commands work.
    check = sqlite3.connect(db)
    assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert check.execute("SELECT value FROM principals").fetchall() == [("before@example.org",)]
    check.close()
    assert idm(*common, "allow", "root", "--principal", "alice@example.org").returncode == 0
