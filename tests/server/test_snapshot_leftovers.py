"""Temporary snapshot files left by a refresh killed before its rename are cleaned up.

`write_snapshot` writes `.snapshot.sqlite.PID.XXXX.tmp` and renames it over the snapshot;
a refresh killed in between used to leave the file for good. The next refresh removes its
own leftovers (under its lock, only files of its snapshot whose writer is gone or that
nobody touched for a minute) and never a file a live writer is filling.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from idm.identity.server.snapshot import STALE_TEMP_SECONDS, remove_stale_temp_files
from tests.server.helpers import idm, write_config
from tests.validator.pki import make_cert, pem

# A writer that stops in the middle of writing its temporary file, to be killed there.
SLOW_WRITER = textwrap.dedent(
    """
    import sys, time
    from idm.identity.server.snapshot import KeyEntry, write_snapshot

    def entries():
        for i in range(100):
            yield KeyEntry(b"%032d" % i, "u", "ssh-ed25519", 0, "c", "s", "r", "line")
        print("writing", flush=True)
        time.sleep(600)

    write_snapshot(sys.argv[1], entries(), written_at=0, deadline=1)
    """
)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_refresh_removes_what_a_killed_writer_left(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    snapshot = state / "snapshot.sqlite"
    writer = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(snapshot)],
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None
    assert writer.stdout.readline().strip() == "writing"
    [left] = leftovers(state)
    assert left.startswith(f".snapshot.sqlite.{writer.pid}.")
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=30)
    assert leftovers(state) == [left] and not snapshot.exists()  # killed before its rename

    ca = tmp_path / "ca.pem"
    ca.write_bytes(pem(make_cert("Root", None, ca=True).cert))
    db = f"sqlite:///{tmp_path / 'inventory.sqlite'}"
    cfg = write_config(tmp_path / "config.toml", ca=ca, snapshot=snapshot, db=db)
    idm("db", "upgrade", config=cfg)
    idm("refresh", config=cfg)
    assert leftovers(state) == [] and snapshot.exists()


def test_only_stale_files_of_this_snapshot_are_removed(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    names = {
        "dead writer": f".snapshot.sqlite.{gone.pid}.abcd1234.tmp",
        "old, no pid": ".snapshot.sqlite.k2j3h4g5.tmp",
        "live writer": f".snapshot.sqlite.{os.getpid()}.zyxw9876.tmp",
        "young, no pid": ".snapshot.sqlite.q1w2e3r4.tmp",
        "another snapshot": f".other.sqlite.{gone.pid}.abcd1234.tmp",
        # snapshot.sqlite.x has its own lock and refresh: its temporary files are not ours
        "sibling, dead writer": f".snapshot.sqlite.x.{gone.pid}.abcd1234.tmp",
        "sibling, old": ".snapshot.sqlite.x.k2j3h4g5.tmp",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"partial")
    old = time.time() - STALE_TEMP_SECONDS - 5
    os.utime(tmp_path / names["old, no pid"], (old, old))
    os.utime(tmp_path / names["sibling, old"], (old, old))
    (tmp_path / f".snapshot.sqlite.{gone.pid}.folder.tmp").mkdir()  # not a file: kept

    assert remove_stale_temp_files(tmp_path / "snapshot.sqlite") == 2
    left = set(leftovers(tmp_path))
    assert names["dead writer"] not in left and names["old, no pid"] not in left
    assert {names["live writer"], names["young, no pid"], names["another snapshot"],
            names["sibling, dead writer"], names["sibling, old"]} <= left
