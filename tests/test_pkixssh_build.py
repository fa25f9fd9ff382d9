"""tests/pkixssh.py's build cache: keyed by the tarball, never a half-finished tree."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.pkixssh import PkixsshUnavailable, cache_root, pkixssh_build


def _tarball(tmp_path: Path, configure_ac: str) -> Path:
    src = tmp_path / "pkixssh-0.0"
    src.mkdir()
    (src / "configure.ac").write_text(configure_ac)
    tarball = tmp_path / "pkixssh-0.0.tar.xz"
    subprocess.run(["tar", "-cJf", str(tarball), "-C", str(tmp_path), src.name], check=True)
    return tarball


def test_a_failed_build_leaves_nothing_to_be_taken_for_a_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IDM_TEST_CACHE", str(tmp_path / "cache"))
    broken = _tarball(tmp_path, "this is not autoconf(\n")
    with pytest.raises(PkixsshUnavailable, match="building PKIX-SSH failed at `autoreconf -i`"):
        pkixssh_build(broken)
    # only the lock file remains: no prefix, no staging folder
    [left] = [p.name for p in cache_root().iterdir()]
    assert left.startswith("pkixssh-") and left.endswith(".lock")


def test_the_cache_is_keyed_by_the_tarball_sha256(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib

    monkeypatch.setenv("IDM_TEST_CACHE", str(tmp_path / "cache"))
    tarball = _tarball(tmp_path, "AC_INIT\n")
    key = hashlib.sha256(tarball.read_bytes()).hexdigest()[:16]
    prefix = cache_root() / f"pkixssh-{key}"
    # a finished tree (what the build renames into place) is taken as it is, not rebuilt
    (prefix / "bin").mkdir(parents=True)
    (prefix / "sbin").mkdir()
    (prefix / "bin" / "ssh").write_text("")
    (prefix / "sbin" / "sshd").write_text("")
    assert pkixssh_build(tarball).prefix == prefix
