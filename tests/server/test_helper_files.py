"""What `idm authorized-keys` reads: its snapshot and configuration, under attack.

- a FIFO, a device or a folder as the snapshot or configuration is refused at once (a
  FIFO used to hold the login until sshd's LoginGraceTime);
- sshd's StrictModes: the file and every folder up to / must be owned by root or the
  helper's uid and writable by neither group nor others;
- a snapshot written in the future (a refresh run with a clock ahead) is refused.

Every run has a timeout, so a hang fails instead of stalling the suite.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from idm.identity.server.snapshot import MAX_CLOCK_SKEW, KeyEntry, key_digest, write_snapshot
from tests.server.helpers import HelperInstall, helper

NOBODY = 65534
TIMEOUT = 20


def keygen(folder: Path, name: str) -> tuple[str, str]:
    path = folder / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)],
                   check=True)
    key_type, b64 = (folder / f"{name}.pub").read_text().split()[:2]
    return key_type, b64


def write(path: Path, key: tuple[str, str], *, written_at: int | None = None) -> Path:
    now = int(time.time()) if written_at is None else written_at
    key_type, b64 = key
    line = f"{key_type} {b64} idm:alice"
    entry = KeyEntry(key_digest(base64.b64decode(b64)), "alice", key_type, now + 3600,
                     "a1" * 32, "CN=alice", "email", line)
    write_snapshot(path, [entry], written_at=now, deadline=now + 3600, source="test")
    return path


@pytest.fixture
def key(tmp_path: Path) -> tuple[str, str]:
    return keygen(tmp_path, "alice")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from idm.cli.entry import main; main()", "authorized-keys",
         *args],
        capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL,
    )


def denied(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    assert proc.returncode == 1 and proc.stdout == "", proc.stderr
    [line] = proc.stderr.splitlines()
    assert line.startswith("idm authorized-keys: DENY: "), line
    for w in words:
        assert w in line, line
    return line


def test_the_safe_layout_is_accepted(safe_tmp: Path, key: tuple[str, str]) -> None:
    (safe_tmp / "state").mkdir()
    snap = write(safe_tmp / "state" / "snapshot.sqlite", key)
    proc = helper("--snapshot", str(snap), "alice", *key)
    assert proc.returncode == 0 and key[1] in proc.stdout, proc.stderr


def special(path: Path, kind: str) -> Path:
    """A FIFO or a folder at ``path``, or /dev/zero."""
    if kind == "fifo":
        os.mkfifo(path, 0o644)
    elif kind == "folder":
        path.mkdir()
    else:
        return Path("/dev/zero")
    return path


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "folder"])
@pytest.mark.parametrize("option", ["--snapshot", "--config"])
def test_special_file_as_snapshot_or_config_is_refused_at_once(
    safe_tmp: Path, key: tuple[str, str], option: str, kind: str
) -> None:
    target = special(safe_tmp / "file", kind)
    words = ["configuration"] if option == "--config" else []
    denied(run(option, str(target), "alice", *key), *words, str(target), "not a regular file")


def test_fifo_as_log_file_does_not_hold_the_login(safe_tmp: Path, key: tuple[str, str]) -> None:
    snap = write(safe_tmp / "snapshot.sqlite", key)
    log = safe_tmp / "log"
    os.mkfifo(log)
    proc = run("--snapshot", str(snap), "--log-file", str(log), "alice", *key)
    assert proc.returncode == 0 and key[1] in proc.stdout


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        ("file-group-writable", ("the file is writable by group or others (mode 0664)",)),
        ("file-world-writable", ("the file is writable by group or others (mode 0646)",)),
        ("file-owned-by-nobody", (f"the file is owned by uid {NOBODY}",)),
        ("folder-world-writable", ("folder", "is writable by group or others (mode 0777)")),
        ("folder-sticky-like-tmp", ("folder", "(mode 1777)")),
        ("folder-owned-by-nobody", ("folder", f"is owned by uid {NOBODY}")),
        ("grandparent-group-writable", ("folder", "(mode 0775)")),
        ("symlink-in-open-folder", ("folder", "(mode 0777)")),
    ],
)
def test_strict_modes_refuse_and_say_why(
    safe_tmp: Path, key: tuple[str, str], damage: str, words: tuple[str, ...]
) -> None:
    state = safe_tmp / "outer" / "state"
    state.mkdir(parents=True)
    snap = write(state / "snapshot.sqlite", key)
    given = snap
    damages = {
        "file-group-writable": lambda: snap.chmod(0o664),
        "file-world-writable": lambda: snap.chmod(0o646),
        "file-owned-by-nobody": lambda: os.chown(snap, NOBODY, -1),
        "folder-world-writable": lambda: state.chmod(0o777),
        "folder-sticky-like-tmp": lambda: state.chmod(0o1777),
        "folder-owned-by-nobody": lambda: os.chown(state, NOBODY, -1),
        "grandparent-group-writable": lambda: state.parent.chmod(0o775),
    }
    if damage in damages:
        damages[damage]()
    else:  # the file is safe, but the symlink naming it sits where anyone can replace it
        open_dir = safe_tmp / "open"
        open_dir.mkdir()
        open_dir.chmod(0o777)
        given = open_dir / "snapshot.sqlite"
        given.symlink_to(snap)
    line = denied(run("--snapshot", str(given), "alice", *key), "StrictModes", *words)
    assert str(given) in line


def test_strict_modes_apply_to_the_config(safe_tmp: Path, key: tuple[str, str]) -> None:
    snap = write(safe_tmp / "snapshot.sqlite", key)
    cfg = safe_tmp / "config.toml"
    cfg.write_text(f'[server]\nsnapshot = "{snap}"\n')
    cfg.chmod(0o644)
    proc = run("--config", str(cfg), "alice", *key)
    assert proc.returncode == 0, proc.stderr
    cfg.chmod(0o664)
    denied(run("--config", str(cfg), "alice", *key), "configuration", str(cfg), "StrictModes",
           "mode 0664")
    cfg.chmod(0o644)
    os.chown(cfg, NOBODY, -1)
    denied(run("--config", str(cfg), "alice", *key), "StrictModes", f"owned by uid {NOBODY}")


def test_files_of_the_helpers_own_uid_are_accepted() -> None:
    """Run as nobody (sshd's AuthorizedKeysCommandUser): a snapshot owned by nobody is
    accepted, one owned by another unprivileged user is not."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the helper as nobody")
    install = HelperInstall.create()
    try:
        folder = install.root / "keys"
        folder.mkdir()
        key = keygen(folder, "alice")
        write(install.snapshot, key)
        install.config.write_text("")
        install.config.chmod(0o644)

        def as_nobody() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                 str(install.wrapper), "alice", *key],
                capture_output=True, text=True, timeout=TIMEOUT, env={"PATH": "/usr/bin:/bin"},
            )

        os.chown(install.snapshot, NOBODY, -1)
        proc = as_nobody()
        assert proc.returncode == 0 and key[1] in proc.stdout, proc.stderr
        os.chown(install.snapshot, 1, -1)  # daemon: neither root nor the helper
        denied(as_nobody(), "StrictModes", "owned by uid 1, not root or uid 65534")
    finally:
        install.remove()


def test_snapshot_written_in_the_future_is_refused(safe_tmp: Path, key: tuple[str, str]) -> None:
    now = int(time.time())
    ahead = write(safe_tmp / "ahead.sqlite", key, written_at=now + 86400)
    denied(run("--snapshot", str(ahead), "alice", *key), "written in the future",
           "clock ahead")
    # A small skew between the refresh's clock and the helper's is tolerated.
    near = write(safe_tmp / "near.sqlite", key, written_at=now + MAX_CLOCK_SKEW - 60)
    proc = run("--snapshot", str(near), "alice", *key)
    assert proc.returncode == 0, proc.stderr
