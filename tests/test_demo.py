"""`make demo` as a test: the whole story (sample CA, SoftHSM2 cards, idm agent, sshd with
`idm authorized-keys`, card replacement, revocation) must run to the end, on a machine state
where sshd never ran: the demo runs in a private mount namespace whose /run is an empty
tmpfs, so nothing an earlier test (or a system sshd) left under /run can help it."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parent.parent / "sample-ca" / "demo.py"

# Runs "$@" with an empty /run of its own; fails if /run/sshd is visible there.
FRESH_RUN = 'mount -t tmpfs -o mode=0755 idm-demo-run /run && test ! -e /run/sshd && exec "$@"'


def fresh_run_prefix() -> list[str]:
    """`unshare -m` with a fresh tmpfs on /run, or a skip saying why it cannot be had."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare (util-linux) is not installed: cannot give the demo a fresh /run")
    prefix = [unshare, "--mount", "--propagation", "private", "sh", "-c", FRESH_RUN, "sh"]
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a private mount namespace here: {probe.stderr.strip()}")
    return prefix


@pytest.mark.sshd
@pytest.mark.softhsm
def test_demo_story_runs_to_the_end_without_run_sshd(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the demo starts sshd with an AuthorizedKeysCommand: it needs root")
    r = subprocess.run([*fresh_run_prefix(), sys.executable, str(DEMO),
                        "--workdir", str(tmp_path / "demo")],
                       capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    # two logins through the agent (first card, then the replacement), no server edit
    user = pwd.getpwuid(os.getuid()).pw_name
    assert out.count(f"logged in as {user} on") == 2, out
    assert "superseded" in out and "revoked" in out
    # the old card, tried with plain OpenSSH after its revocation, is refused by sshd
    assert "Permission denied (publickey)" in out
    assert "DENY" in out and "is revoked" in out
    assert "The story ran to the end" in out
    # the demo stops everything it started
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path / "demo")], capture_output=True)
    assert leftover.stdout == b""
    assert "123456" not in out and "246810" not in out  # PINs are never printed
    assert "\x1b" not in out  # into a pipe: no terminal escape codes
