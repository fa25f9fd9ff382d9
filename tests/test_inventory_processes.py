"""The inventory across processes: a writer killed mid-transaction, two writers at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from idm.identity.inventory.store import Inventory

WRITER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from test_inventory import synthetic_cert
    from idm.identity.inventory.store import Inventory
    from idm.identity.inventory.models import Certificate
    inv = Inventory({url!r})
    inv.add_certificate(synthetic_cert(0), command="committed before the crash")
    from sqlalchemy import insert
    with inv.writing() as s:
        for i in range(1, 400):
            inv._event(s, "enrolled", reason="never committed")
        s.execute(insert(Certificate.__table__), [
            dict(sha256=c.sha256, der=c.der, subject=c.subject, issuer=c.issuer, serial=c.serial,
                 not_before=c.not_before, not_after=c.not_after, key_type=c.key_type,
                 key_fingerprint=c.key_fingerprint, key_blob=c.key_blob, self_signed=False,
                 status="pending", status_time=c.not_before, created=c.not_before)
            for c in (synthetic_cert(i) for i in range(1, 400))])
        s.flush()
        print("in-transaction", flush=True)
        time.sleep(60)
    """
)


def test_writer_killed_mid_transaction_leaves_inventory_consistent(inventory_url: str) -> None:
    tests = os.path.dirname(__file__)
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER.format(url=inventory_url, tests=tests)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "in-transaction", line
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    inv = Inventory(inventory_url)
    try:
        # Only what was committed before the crash is there.
        assert inv.count_certificates() == 1
        assert [e.reason for e in inv.events()] == [None]
        if inventory_url.startswith("sqlite"):
            with inv.engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
        # The killed writer's lock is gone: writing works at once.
        from tests.test_inventory import synthetic_cert

        _, added = inv.add_certificate(synthetic_cert(1), command="after the crash")
        assert added
    finally:
        inv.close()


CONCURRENT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from test_inventory import synthetic_cert
    from idm.identity.inventory.store import Inventory
    inv = Inventory({url!r})
    for i in range({start}, {start} + 150):
        rec, _ = inv.add_certificate(synthetic_cert(i), command="writer {start}")
        inv.set_status(rec.sha256, "approved", "ok", command="writer {start}")
        inv.certificates(status="approved")
    print("done", flush=True)
    """
)


@pytest.mark.parametrize("writers", [2])
def test_two_processes_writing_at_once_never_see_database_locked(
    inventory_url: str, writers: int
) -> None:
    Inventory(inventory_url).close()  # schema first, as any first command would
    tests = os.path.dirname(__file__)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                CONCURRENT.format(url=inventory_url, tests=tests, start=1000 * (n + 1)),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(writers)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-2000:]
        assert "locked" not in err
        assert out.strip() == "done"
    inv = Inventory(inventory_url)
    assert len(inv.certificates(status="approved")) == 150 * writers
    assert len(inv.events()) == 2 * 150 * writers
    inv.close()
