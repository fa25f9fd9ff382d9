"""Inventory benchmark: bulk-insert synthetic certificates, then look them up by SSH key
fingerprint. Goals (issue 2, on the 2-core reference machine): the import of 100,000 in
≤ 60 s, one lookup in ≤ 5 ms.

    .venv/bin/python bench/inventory.py [--count 100000] [--lookups 2000] [--db URL]

Without --db it uses a fresh SQLite file in a temporary folder (the default backend).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import statistics
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from idm.identity.inventory.store import CertificateRecord, Inventory


def synthetic(count: int, seed: int = 7512) -> Iterator[CertificateRecord]:
    """Certificate-sized records (≈ 900-byte DER, 280-byte key blob), all distinct."""
    rng = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(count):
        der = b"\x30\x82\x03\x80" + rng.randbytes(896)
        blob = b"\x00\x00\x00\x07ssh-rsa" + rng.randbytes(268)
        key_fp = "SHA256:" + hashlib.sha256(blob).digest().hex()[:43]
        yield CertificateRecord(
            sha256=hashlib.sha256(der).hexdigest(),
            der=der,
            subject=f"CN=user{i:06d},OU=People,O=Example Corp,C=XX",
            issuer="CN=Example Issuing CA 1,O=Example Corp,C=XX",
            serial=format(rng.getrandbits(127), "x"),
            not_before=start,
            not_after=start + timedelta(days=365),
            key_type="ssh-rsa",
            key_fingerprint=key_fp,
            key_blob=blob,
            self_signed=False,
            status="approved",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--lookups", type=int, default=2000)
    parser.add_argument("--db", help="SQLAlchemy URL (default: a new SQLite file)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        url = args.db or f"sqlite:///{os.path.join(tmp, 'bench.sqlite')}"
        inv = Inventory(url)
        t0 = time.perf_counter()
        inserted = inv.add_certificates(synthetic(args.count), command="bench/inventory.py")
        import_s = time.perf_counter() - t0

        keys = [r.key_fingerprint for r in synthetic(args.count)]
        rng = random.Random(1)
        sample = [rng.choice(keys) for _ in range(args.lookups)]
        times = []
        for fp in sample:
            t = time.perf_counter()
            found = inv.by_key_fingerprint(fp)
            times.append(time.perf_counter() - t)
            assert len(found) == 1, fp
        inv.close()

    med = statistics.median(times) * 1000
    p99 = sorted(times)[int(len(times) * 0.99) - 1] * 1000
    backend = url.split(":", 1)[0]
    print(f"backend: {backend}; certificates: {inserted}")
    print(f"import:  {import_s:8.2f} s   ({inserted / import_s:,.0f}/s)   goal ≤ 60 s  "
          f"-> {import_s / 60:.2f}x of the budget")
    print(f"lookup:  median {med:6.3f} ms, p99 {p99:6.3f} ms over {len(times)} lookups   "
          f"goal ≤ 5 ms -> {med / 5:.2f}x of the budget")


if __name__ == "__main__":
    main()
