"""`make demo` as a test: the whole story (sample CA, SoftHSM2 cards, idm agent, sshd with
`idm authorized-keys`, card replacement, revocation) must run to the end."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parent.parent / "sample-ca" / "demo.py"


@pytest.mark.sshd
@pytest.mark.softhsm
def test_demo_story_runs_to_the_end(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the demo starts sshd with an AuthorizedKeysCommand: it needs root")
    r = subprocess.run([sys.executable, str(DEMO), "--workdir", str(tmp_path / "demo")],
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
