"""`idm doctor` on a broken and on a good set-up: real files, sshd's own reading of its
configuration (`sshd -T -f FILE`), the helper run as the AuthorizedKeysCommandUser, a
real idm agent behind SSH_AUTH_SOCK."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sample_ca_fixture import make_sample_ca

from idm.identity.inventory.store import Inventory
from idm.identity.server.snapshot import write_snapshot
from idm.identity.syslog_socket import syslog_reachable
from tests.server.helpers import HelperInstall, enroll, idm, write_config
from tests.softhsm import SOFTHSM_MODULE, SoftHSM
from tests.sshd import ensure_privsep_dir
from tests.terminal import IDM

pytestmark = pytest.mark.sshd


@pytest.fixture
def root() -> None:
    if os.geteuid() != 0:
        pytest.skip("the helper install and running it as nobody need root")
    ensure_privsep_dir()  # `sshd -T` refuses to run without it


def sshd_config(path: Path, command: str, user: str) -> Path:
    host_key = path.parent / "host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)],
                   check=True)
    path.write_text(f"HostKey {host_key}\nAuthorizedKeysCommand {command}\n"
                    f"AuthorizedKeysCommandUser {user}\n")
    return path


def doctor(config: Path, sshd: Path, env: dict[str, str]) -> tuple[int, dict[str, dict]]:
    proc = subprocess.run([*IDM, "--config", str(config), "doctor", "--sshd-config", str(sshd),
                           "--json"], capture_output=True, text=True, env=env, timeout=300,
                          check=False)
    report = json.loads(proc.stdout)
    assert report["ok"] is (proc.returncode == 0)
    # one finding per check name here (one anchor path, one provider)
    return proc.returncode, {f["check"]: f for f in report["checks"]}


def test_doctor_on_a_broken_set_up(tmp_path: Path, root: None) -> None:
    helper = tmp_path / "idm-helper"  # under /tmp, which everyone may write
    helper.write_text("#!/bin/sh\nexit 1\n")
    helper.chmod(0o755)
    config = tmp_path / "config.toml"
    config.write_text(
        f'db = "sqlite:///{tmp_path / "typo.sqlite"}"\n'
        f'[validation]\nca = ["{tmp_path / "missing-ca.pem"}"]\n'
        f'[tokens]\nproviders = ["{tmp_path / "nosuch-pkcs11.so"}"]\n'
        f'[server]\nsnapshot = "{tmp_path / "snapshot.sqlite"}"\n')
    # The helper's own --snapshot: fresh, but under /tmp, which StrictModes refuses. The
    # doctor's configuration names the same file: it must check what the helper opens, as
    # the helper checks it.
    snapshot = tmp_path / "snapshot.sqlite"
    write_snapshot(snapshot, [], written_at=int(time.time()),
                   deadline=int(time.time()) + 3600, source="test")
    sshd = sshd_config(tmp_path / "sshd_config",
                       f"{helper} authorized-keys --snapshot {snapshot} %u %t %k",
                       "idm-no-such-user")
    stale_socket = tmp_path / "agent.sock"
    stale_socket.write_text("")
    env = {**os.environ, "SSH_AUTH_SOCK": str(stale_socket)}

    code, checks = doctor(config, sshd, env)
    assert code == 1
    assert checks["trust anchors"]["status"] == "fail"
    assert "missing-ca.pem" in checks["trust anchors"]["detail"]
    assert checks["PKCS#11 provider"]["status"] == "fail"
    assert checks["inventory"]["status"] == "fail"
    assert "no inventory at" in checks["inventory"]["detail"]
    assert checks["sshd"]["status"] == "ok"
    path = checks["helper path"]
    assert path["status"] == "fail" and "PREFIX" in path["fix"]
    assert "refused by StrictModes: folder /tmp is writable by group or others (mode 1777)" \
        in path["detail"]
    assert checks["AuthorizedKeysCommandUser"]["status"] == "fail"
    assert "idm-no-such-user" in checks["AuthorizedKeysCommandUser"]["detail"]
    assert checks["snapshot"]["status"] == "fail"
    assert f"{snapshot}: refused by StrictModes: folder /tmp" in checks["snapshot"]["detail"]
    assert checks["agent"]["status"] == "fail" and "no agent answers" in checks["agent"]["detail"]
    assert checks["syslog"]["status"] == ("ok" if syslog_reachable() else "warn")
    assert all(f["fix"] for f in checks.values() if f["status"] == "fail")

    proc = subprocess.run([*IDM, "--config", str(config), "doctor", "--sshd-config", str(sshd)],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert len(lines) == len(checks)  # one line per finding
    assert any(line.startswith("fail  helper path: sshd refuses to run it: ") and "; fix: "
               in line for line in lines)


@pytest.fixture
def install() -> Iterator[HelperInstall]:
    made = HelperInstall.create()
    yield made
    made.remove()


def test_doctor_on_a_good_set_up(tmp_path: Path, root: None, install: HelperInstall,
                                 softhsm: SoftHSM) -> None:
    ca = make_sample_ca(tmp_path)
    db = f"sqlite:///{tmp_path / 'inventory.sqlite'}"
    config = write_config(install.config, ca=ca.ca_bundle, untrusted=ca.chain,
                          snapshot=install.snapshot, db=db, policy="off",
                          extra=f'[tokens]\nproviders = ["{SOFTHSM_MODULE}"]\n')
    inv = Inventory(db)
    enroll(inv, ca.user("good"))
    inv.close()
    idm("refresh", config=config)
    # The helper's --config, as sshd passes it; the doctor's own configuration names another
    # snapshot (missing): the doctor checks the helper's.
    sshd = sshd_config(tmp_path / "sshd_config",
                       f"{install.wrapper} --config {install.config} %u %t %k", "nobody")
    own = tmp_path / "own.toml"
    own.write_text(config.read_text().replace(str(install.snapshot),
                                              str(tmp_path / "no-such-snapshot.sqlite")))
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)}
    started = subprocess.run([*IDM, "--config", str(config), "agent"], capture_output=True,
                             text=True, env=env, timeout=60, check=True).stdout
    agent = dict(part.split("=", 1) for part in started.replace("\n", " ").split("; ")
                 if part.startswith(("SSH_AUTH_SOCK=", "SSH_AGENT_PID=")))
    env.update(agent)
    try:
        code, checks = doctor(own, sshd, env)
    finally:
        subprocess.run([*IDM, "agent", "-k"], env=env, capture_output=True, check=False)
    failed = {k: f for k, f in checks.items() if f["status"] not in ("ok", "warn")}
    assert code == 0 and not failed, failed
    assert checks["helper path"]["status"] == "ok"
    assert checks["helper as AuthorizedKeysCommandUser"]["detail"] == \
        "nobody runs it and it reads a fresh snapshot"
    assert checks["snapshot"]["status"] == "ok" and "1 key line(s)" in checks["snapshot"]["detail"]
    assert checks["agent"]["status"] == "ok" and "idm agent (pid" in checks["agent"]["detail"]
    assert all(f["status"] == "ok" for k, f in checks.items() if k != "syslog")
