"""sshd helper benchmark: wall time of one `idm authorized-keys USER KEYTYPE KEYBLOB` with a
snapshot of 100,000 certificates, against `python -c pass` of the same interpreter in the
same run. Goal (issue 6): median ≤ 2.5 × the bare interpreter's start.

    .venv/bin/python bench/authorized_keys.py [--count 100000] [--runs 60]

The snapshot is written through idm's own writer with synthetic RSA-2048-sized keys and
certificate names; every lookup asks for a random key that is in it (the allow path, which
does the most work: meta check, indexed lookup, freshness, one line printed).

The modules on the helper's path are byte-compiled first (`compileall`), as any install
(pip, a distribution package) does; without that, an environment with
PYTHONDONTWRITEBYTECODE=1 would compile them from source at every run.
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from idm.identity import sshwire as w
from idm.identity.server.snapshot import KeyEntry, key_digest, write_snapshot


def synthetic(count: int, until: int, seed: int = 6) -> Iterator[tuple[KeyEntry, str]]:
    rng = random.Random(seed)
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(until))
    for i in range(count):
        n = rng.getrandbits(2048) | (1 << 2047) | 1
        blob = w.pack_string("ssh-rsa") + w.pack_mpint(65537) + w.pack_mpint(n)
        b64 = base64.b64encode(blob).decode()
        cert = rng.randbytes(32).hex()
        subject = f"CN=user{i:06d},OU=People,O=Example Corp,C=XX"
        line = f'expiry-time="{stamp}Z" ssh-rsa {b64} idm:{cert[:16]} {subject}'
        yield KeyEntry(key_digest(blob), f"user{i:06d}", "ssh-rsa", until, cert, subject,
                       "email", line), b64


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, check=False)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])}… failed: {proc.stderr.decode().strip()}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--no-compile", action="store_true",
                        help="skip byte-compiling the helper's modules first")
    args = parser.parse_args()

    import compileall

    import idm.cli.entry
    import idm.identity.server.authorized_keys

    if not args.no_compile:
        for module in (idm.cli.entry, idm.identity.server.authorized_keys):
            compileall.compile_dir(os.path.dirname(module.__file__ or ""), quiet=1)
        compileall.compile_file(os.path.join(os.path.dirname(module.__file__ or ""), "..",
                                             "__init__.py"), quiet=1)

    idm = shutil.which("idm", path=os.path.dirname(sys.executable))
    if idm is None:
        raise SystemExit("the idm console script is not installed next to this interpreter")
    # The helper refuses a snapshot below a group- or world-writable folder, as sshd's
    # StrictModes does (/tmp is one): the snapshot lives in the user's cache folder.
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "idm-bench"
    cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        snap = Path(tmp) / "snapshot.sqlite"
        now = int(time.time())
        keys: list[tuple[str, str]] = []

        def entries() -> Iterator[KeyEntry]:
            for e, b64 in synthetic(args.count, now + 86400):
                keys.append((e.username, b64))
                yield e

        t0 = time.perf_counter()
        info = write_snapshot(snap, entries(), written_at=now, deadline=now + 86400,
                              source="bench")
        write_s = time.perf_counter() - t0
        size_mb = snap.stat().st_size / 1e6

        rng = random.Random(1)
        bare_cmd = [sys.executable, "-c", "pass"]
        helper_times: list[float] = []
        bare_times: list[float] = []
        for _ in range(3):  # warm the page cache for both
            timed(bare_cmd)
            user, b64 = rng.choice(keys)
            timed([idm, "authorized-keys", "--snapshot", str(snap), user, "ssh-rsa", b64])
        for _ in range(args.runs):  # interleaved, so drift hits both alike
            bare_times.append(timed(bare_cmd))
            user, b64 = rng.choice(keys)
            helper_times.append(
                timed([idm, "authorized-keys", "--snapshot", str(snap), user, "ssh-rsa", b64])
            )

    bare = statistics.median(bare_times)
    helper = statistics.median(helper_times)
    p90 = sorted(helper_times)[int(0.9 * len(helper_times)) - 1]
    print(f"snapshot: {info.entries} entries, {size_mb:.1f} MB, written in {write_s:.1f} s")
    print(f"python -c pass:       median {bare * 1000:.1f} ms")
    print(f"idm authorized-keys:  median {helper * 1000:.1f} ms (p90 {p90 * 1000:.1f} ms)")
    print(f"ratio: {helper / bare:.2f}x (goal <= 2.5x) over {args.runs} runs each")


if __name__ == "__main__":
    main()
