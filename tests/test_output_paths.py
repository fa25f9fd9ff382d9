"""Options that name a file to write: the folder must exist, and idm creates none of it.

`idm krl --output /missing/dir/krl` used to exit 0 and create the folders while the docs
said it fails with `cannot write`. Every output option now refuses, before any work, with
`cannot write <PATH>: folder <DIR> does not exist` (exit 2), and leaves the disk as it was.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.softhsm import SoftHSM, softhsm  # noqa: F401  (fixture)
from tests.validator.pki import make_cert, pem

IDM = str(Path(sys.executable).with_name("idm"))


def idm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([IDM, *args], capture_output=True, text=True, timeout=120, env=env,
                          stdin=subprocess.DEVNULL)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pem(make_cert("Root", None, ca=True).cert))
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'db = "sqlite:///{tmp_path / "inv.sqlite"}"\n'
                   f'[validation]\nca = ["{ca}"]\n[revocation]\npolicy = "off"\n')
    assert idm("--config", str(cfg), "db", "upgrade").returncode == 0  # krl, refresh need one
    return cfg


def refused(proc: subprocess.CompletedProcess[str], path: Path, why: str) -> None:
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.splitlines()
    assert line.startswith("idm: error: ") and f"cannot write {path}: {why}" in line, line


@pytest.mark.parametrize("option", ["krl --output", "export --output", "refresh --snapshot"])
def test_output_into_a_missing_folder_is_refused(tmp_path: Path, config: Path,
                                                  option: str) -> None:
    missing = tmp_path / "missing" / "dir"
    target = missing / "out"
    proc = idm("--config", str(config), *option.split(), str(target))
    refused(proc, target, f"folder {missing} does not exist")
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("option", ["krl --output", "export --output", "refresh --snapshot"])
def test_output_onto_a_folder_is_refused(tmp_path: Path, config: Path, option: str) -> None:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    refused(idm("--config", str(config), *option.split(), str(folder)), folder,
            "it is a folder")


def test_outputs_into_existing_folders_are_written(tmp_path: Path, config: Path) -> None:
    krl = tmp_path / "revoked.krl"
    assert idm("--config", str(config), "krl", "--output", str(krl)).returncode == 0
    assert krl.read_bytes().startswith(b"SSHKRL\n\0")
    snap = tmp_path / "snapshot.sqlite"
    proc = idm("--config", str(config), "refresh", "--snapshot", str(snap))
    assert proc.returncode == 0 and snap.exists(), proc.stderr


def test_refresh_makes_only_its_default_folder(isolated_home: Path, config: Path) -> None:
    default = isolated_home / "state" / "idm" / "snapshot.sqlite"
    assert not default.parent.exists()
    proc = idm("--config", str(config), "refresh", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["snapshot"] == str(default) and default.exists()


@pytest.mark.softhsm
def test_csr_into_a_missing_folder_makes_no_key(softhsm: SoftHSM, tmp_path: Path,  # noqa: F811
                                                config: Path) -> None:
    tok = softhsm.init_token("csr-card")
    env = softhsm.env
    missing = tmp_path / "missing"
    proc = idm("--config", str(config), "enroll", "--token", tok.uri_with_pin, "--new-key",
               "ec-p256", "--subject", "CN=alice", "--csr", str(missing / "alice.csr"), env=env)
    refused(proc, missing / "alice.csr", f"folder {missing} does not exist")
    objects = idm("--config", str(config), "objects", tok.uri_with_pin, "--json", env=env)
    assert objects.returncode == 0 and objects.stdout == "", objects.stdout  # no key was made
    csr = tmp_path / "alice.csr"
    proc = idm("--config", str(config), "enroll", "--token", tok.uri_with_pin, "--new-key",
               "ec-p256", "--subject", "CN=alice", "--csr", str(csr), env=env)
    assert proc.returncode == 0, proc.stderr
    assert csr.read_text().startswith("-----BEGIN CERTIFICATE REQUEST-----")
