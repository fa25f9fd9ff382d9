"""The benchmarks of `make bench` still run: each once, on tiny inputs, to its last line.

Nothing here measures speed (docs/performance.md holds the measurements); a benchmark that
no longer starts, or whose peer comparison breaks, fails here instead of at the next
`make bench`. Each writes its generated inputs into a cache folder of its own that the
sshd helper's StrictModes accept (bench/authorized_keys.py reads a snapshot from there).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
GUARD = 300.0  # a ceiling against hangs, never a performance expectation

CASES = {
    "inventory.py": (["--count", "200", "--lookups", "20"], "lookup:  median"),
    "verify_crl.py": (["--runs", "1", "--entries", "500"], "revoked.pem"),
    "authorized_keys.py": (["--count", "100", "--runs", "3"], "ratio:"),
    "agent_sign.py": (["--signatures", "20", "--block", "10", "--lists", "10", "--clients",
                       "2", "--seconds", "1", "--rounds", "1"], "median ratio idm / ssh-agent"),
    "agent_held.py": (["--held", "20", "--runs", "3", "--guesses", "2"], "| idm agent | 2 |"),
}


@pytest.mark.softhsm
@pytest.mark.parametrize("script", sorted(CASES))
def test_benchmark_runs_to_its_result(script: str, safe_tmp: Path) -> None:
    args, last_words = CASES[script]
    env = {**os.environ, "XDG_CACHE_HOME": str(safe_tmp)}
    done = subprocess.run([sys.executable, str(BENCH / script), *args], env=env,
                          capture_output=True, text=True, timeout=GUARD,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    assert last_words in done.stdout, done.stdout
