"""PKIX-SSH (the X.509 fork of OpenSSH) for tests: built once from its source tarball.

Debian does not package PKIX-SSH, so the tests build it from ``tests/vendor/pkixssh-*.tar.xz``
(its unchanged source, committed so that a fresh clone anywhere has it; IDM_PKIXSSH_TARBALL
names another) into a cache outside the checkout::

    ~/.cache/idm-tests/pkixssh-<sha256[:16] of the tarball>/   (IDM_TEST_CACHE overrides the base)
        bin/ssh  bin/ssh-add  bin/ssh-agent  sbin/sshd  etc/  var/empty/

The build runs ``autoreconf -i``, ``configure`` with a private prefix, sysconfdir and privsep
path, ``make`` and ``make install-nokeys`` into a staging folder; the staged tree is renamed
into place only when everything succeeded, so a half-finished build is never taken for a
finished one. A lock file keeps concurrent test processes from building at the same time.

When it cannot be built (no tarball, no compiler, configure fails), ``PkixsshUnavailable`` says
why; the fixtures skip with that reason (:func:`unavailable`), unless IDM_REQUIRE_PKIXSSH=1
(CI), where they fail.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

TARBALL_GLOB = "pkixssh-*.tar.xz"
BUILD_TOOLS = ("autoreconf", "make", "cc")
# Build packages, for the error message (the Makefile's DEBIAN_PACKAGES installs them).
BUILD_PACKAGES = "build-essential autoconf automake libssl-dev zlib1g-dev"
# A guard against a wedged build step, not a performance expectation.
STEP_GUARD_SECONDS = 1800
REQUIRED = os.environ.get("IDM_REQUIRE_PKIXSSH") == "1"


class PkixsshUnavailable(Exception):
    """PKIX-SSH cannot be built or found here; the message says why."""


def unavailable(reason: str) -> NoReturn:
    """Skip a PKIX-SSH test that cannot run here, or fail it where it must run (CI)."""
    if REQUIRED:
        pytest.fail(f"the PKIX-SSH tests must run (IDM_REQUIRE_PKIXSSH=1), but: {reason}")
    pytest.skip(reason)


@dataclass(frozen=True)
class PkixsshBuild:
    """An installed PKIX-SSH tree (private prefix)."""

    prefix: Path

    @property
    def ssh(self) -> Path:
        return self.prefix / "bin" / "ssh"

    @property
    def ssh_add(self) -> Path:
        return self.prefix / "bin" / "ssh-add"

    @property
    def ssh_agent(self) -> Path:
        return self.prefix / "bin" / "ssh-agent"

    @property
    def ssh_keygen(self) -> Path:
        return self.prefix / "bin" / "ssh-keygen"

    @property
    def sshd(self) -> Path:
        return self.prefix / "sbin" / "sshd"

    def version(self) -> str:
        """``ssh -V`` (e.g. ``PKIX-SSH 16.1.1, OpenSSH_10.0p2``)."""
        r = subprocess.run([str(self.ssh), "-V"], capture_output=True, text=True, timeout=30)
        return (r.stderr or r.stdout).strip()


def find_tarball() -> Path:
    """The PKIX-SSH source tarball: IDM_PKIXSSH_TARBALL, or the one in ``tests/vendor/``."""
    named = os.environ.get("IDM_PKIXSSH_TARBALL")
    if named:
        if not Path(named).is_file():
            raise PkixsshUnavailable(f"IDM_PKIXSSH_TARBALL={named} is not a file")
        return Path(named)
    found = sorted((Path(__file__).resolve().parent / "vendor").glob(TARBALL_GLOB))
    if found:
        return found[-1]
    raise PkixsshUnavailable("no PKIX-SSH source tarball in tests/vendor; set IDM_PKIXSSH_TARBALL")


def cache_root() -> Path:
    """Where built test dependencies live: IDM_TEST_CACHE or ``~/.cache/idm-tests``."""
    return Path(os.environ.get("IDM_TEST_CACHE") or Path.home() / ".cache" / "idm-tests")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _complete(prefix: Path) -> bool:
    return (prefix / "sbin" / "sshd").is_file() and (prefix / "bin" / "ssh").is_file()


def pkixssh_build(tarball: Path | None = None) -> PkixsshBuild:
    """The PKIX-SSH build for ``tarball`` (default :func:`find_tarball`), building it if needed."""
    tarball = tarball or find_tarball()
    prefix = cache_root() / f"pkixssh-{_sha256(tarball)[:16]}"
    if _complete(prefix):
        return PkixsshBuild(prefix)
    missing = [tool for tool in BUILD_TOOLS if shutil.which(tool) is None]
    if missing:
        raise PkixsshUnavailable(f"cannot build PKIX-SSH: {', '.join(missing)} missing "
                                 f"(apt-get install {BUILD_PACKAGES})")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with open(prefix.parent / f"{prefix.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same tree
        if not _complete(prefix):
            _build(tarball, prefix)
    return PkixsshBuild(prefix)


def _build(tarball: Path, prefix: Path) -> None:
    """Build into a staging folder beside ``prefix``; rename it into place at the end."""
    work = Path(tempfile.mkdtemp(prefix=f".{prefix.name}-build-", dir=prefix.parent))
    log = work / "build.log"
    try:
        src = work / "src"
        src.mkdir()
        stage = work / "stage"
        configure = [
            "./configure", f"--prefix={prefix}", f"--sysconfdir={prefix}/etc",
            f"--with-privsep-path={prefix}/var/empty", "--with-privsep-user=nobody",
            f"--with-pid-dir={prefix}/var/run",
        ]
        steps = [
            ["tar", "-xf", str(tarball), "-C", str(src), "--strip-components=1"],
            ["autoreconf", "-i"],
            configure,
            ["make", "-j2"],
            # install-nokeys: no host keys in the prefix (each test sshd makes its own)
            ["make", "install-nokeys", f"DESTDIR={stage}"],
        ]
        with open(log, "wb") as out:
            for step in steps:
                r = subprocess.run(step, cwd=src, stdout=out, stderr=subprocess.STDOUT,
                                   timeout=STEP_GUARD_SECONDS)
                if r.returncode != 0:
                    tail = log.read_text(errors="replace")[-1500:]
                    raise PkixsshUnavailable(
                        f"building PKIX-SSH failed at `{' '.join(step)}` (exit {r.returncode}); "
                        f"needs {BUILD_PACKAGES}: ...{tail}"
                    )
        staged = stage / prefix.relative_to(prefix.anchor)
        if not _complete(staged):
            raise PkixsshUnavailable(f"PKIX-SSH install left no sshd/ssh under {staged}")
        # sshd chroots its privsep child into var/empty: root-owned, not writable by others
        (staged / "var" / "empty").chmod(0o755)
        staged.chmod(0o755)
        staged.rename(prefix)
    finally:
        shutil.rmtree(work, ignore_errors=True)
