"""`idm krl`: checked by OpenSSH itself (ssh-keygen -Q, and sshd's RevokedKeys)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from sample_ca_fixture import make_sample_ca

from idm.identity.inventory.store import Inventory
from idm.identity.server.krl import build_krl
from tests.server.helpers import enroll, idm, plain_pub_line
from tests.sshd import SshdUnavailable, start_sshd


def keygen_q(krl: Path, pub_line: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    pub = tmp_path / "query.pub"
    pub.write_text(pub_line + "\n")
    return subprocess.run(["ssh-keygen", "-Q", "-f", str(krl), str(pub)],
                          capture_output=True, text=True, check=False)


def test_krl_lists_revoked_and_superseded_keys(tmp_path: Path) -> None:
    ca = make_sample_ca(tmp_path)
    db = f"sqlite:///{tmp_path / 'inventory.sqlite'}"
    inv = Inventory(db)
    enroll(inv, ca.user("k-good"))
    enroll(inv, ca.user("k-revoked", "--key", "ec-p256"), status="revoked")
    enroll(inv, ca.user("k-superseded"), status="superseded")
    enroll(inv, ca.user("k-pending"), status="pending")
    inv.close()
    krl = tmp_path / "revoked.krl"
    proc = idm("krl", "--output", str(krl), db=db)
    assert "2 revoked key(s)" in proc.stdout
    assert krl.stat().st_mode & 0o777 == 0o644

    for name, revoked in [("k-good", False), ("k-revoked", True), ("k-superseded", True),
                          ("k-pending", False)]:
        q = keygen_q(krl, plain_pub_line(ca.user_cert(name)), tmp_path)
        assert (q.returncode != 0) == revoked, (name, q.stdout, q.stderr)
        verdict = q.stdout.strip().rsplit(": ", 1)[-1]
        assert verdict == ("REVOKED" if revoked else "ok"), q.stdout


def test_empty_krl_is_valid(tmp_path: Path) -> None:
    krl = tmp_path / "empty.krl"
    krl.write_bytes(build_krl([]))
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")],
                   check=True)
    q = keygen_q(krl, (tmp_path / "k.pub").read_text().strip(), tmp_path)
    assert q.returncode == 0 and q.stdout.strip().endswith(": ok")


@pytest.mark.sshd
def test_sshd_revokedkeys_refuses_a_revoked_key(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("sshd needs root here")
    ca = make_sample_ca(tmp_path)
    db = f"sqlite:///{tmp_path / 'inventory.sqlite'}"
    inv = Inventory(db)
    good, bad = ca.user("s-good"), ca.user("s-bad")
    enroll(inv, good)
    enroll(inv, bad, status="revoked")
    inv.close()
    krl = tmp_path / "revoked.krl"
    idm("krl", "--output", str(krl), db=db)
    authorized = plain_pub_line(good) + "\n" + plain_pub_line(bad) + "\n"
    try:
        sshd = start_sshd(tmp_path / "sshd", authorized_keys=authorized,
                          extra_config=[f"RevokedKeys {krl}"])
    except SshdUnavailable as exc:
        pytest.skip(str(exc))
    try:
        def login(cert: Path) -> int:
            key = str(cert)[: -len(".pem")] + ".key"
            cmd = sshd.ssh_command("true", options=[f"IdentityFile={key}",
                                                    "IdentitiesOnly=yes", "IdentityAgent=none"])
            return subprocess.run(cmd, capture_output=True, timeout=60,
                                  stdin=subprocess.DEVNULL, check=False).returncode

        assert login(good) == 0
        assert login(bad) == 255
        assert "revoked" in sshd.log_text().lower()
    finally:
        sshd.stop()
