"""Reusable test helpers for the demo PKI in sample-ca/ (stable API: other tests import it).

Import from a test module under tests/ (pytest puts tests/ on sys.path)::

    from sample_ca_fixture import SampleCA, make_sample_ca, serving

    def test_something(tmp_path):
        ca = make_sample_ca(tmp_path)            # runs `sample_ca.py init` on a free port
        ca.user_cert("alice")                    # -> Path to users/alice.pem
        ca.run("user", "carol", "--eku", "serverAuth")   # DIR is inserted for you
        ca.revoke(ca.user_cert("alice"), reason="keyCompromise")
        with serving(ca) as server:              # CRL/OCSP HTTP server on 127.0.0.1:ca.port
            ...  # server.ocsp_url, server.base_url, or ca.ocsp_url / ca.crl_url("root")

API (keep it stable):

- ``make_sample_ca(tmp_path, port=None, days=None, subdir="sample-ca") -> SampleCA``:
  creates the PKI in ``tmp_path / subdir``. ``port`` defaults to a free 127.0.0.1 port;
  it is written into the certificates' CRL/OCSP URLs, so `serving` must use the same one.
- ``SampleCA`` (frozen dataclass): ``dir``, ``port``, ``root``, ``root_key``,
  ``intermediate``, ``intermediate_key``, ``ocsp``, ``ocsp_key``, ``chain``
  (intermediate only), ``ca_bundle`` (root only), ``users`` (the users/ folder),
  ``crl_root``, ``crl_intermediate`` (DER), ``state`` (state.json); properties
  ``base_url``, ``ocsp_url``; methods ``crl_url(ca)``, ``user_cert(name)``,
  ``user_key(name)``, ``user_chain(name)``, ``run(command, *args, check=True)``,
  ``user(name, *options) -> Path``, ``revoke(cert_or_serial, reason=None)``,
  ``records()`` (state.json certificate records), ``serial_of(path) -> str``.
  ``run`` runs ``sample_ca.py COMMAND DIR ARGS...`` (DIR inserted after the command) and
  returns the CompletedProcess (text); with check=True a non-zero exit raises
  SampleCAToolError whose message holds the tool's stderr. ``run_raw(*args)`` inserts
  nothing.
- ``serving(ca, port=None) -> ContextManager[SampleCAServer]``: starts ``serve`` as a
  subprocess, waits for its ``serving http://127.0.0.1:PORT`` line, yields a
  ``SampleCAServer`` (``process``, ``port``, ``base_url``, ``ocsp_url``, ``log``) and
  terminates it on exit.  The server re-reads state.json per OCSP request, so
  ``ca.revoke(...)`` takes effect while it runs.
- pytest fixtures ``sample_ca`` (a fresh SampleCA) and ``served_sample_ca`` (a SampleCA
  whose server is running).  tests/conftest.py registers this module as a plugin, so
  every test can ask for them (importing the names would trip ruff's F811).
- ``run_tool(*args, check=True)``, ``free_port()``, ``SampleCAToolError``, ``TOOL``.

Users made by init: alice (RSA-2048) and bob (EC P-256), subject ``CN=<name>,O=idm
demo,C=XX``, SAN ``<name>@example.org``, EKU clientAuth.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.ports import free_port

TOOL = Path(__file__).resolve().parent.parent / "sample-ca" / "sample_ca.py"
# How long to wait for the server's ready line. Not a test assertion: a ceiling so a
# broken server fails the test instead of hanging it.
READY_TIMEOUT = 30.0


class SampleCAToolError(RuntimeError):
    """sample_ca.py exited non-zero; the message carries its command line and stderr."""

    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.proc = proc
        cmd = " ".join(str(a) for a in proc.args[1:])
        super().__init__(f"{cmd} exited {proc.returncode}: {proc.stderr.strip()}")




def run_tool(*args: str | os.PathLike[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run sample_ca.py with exactly these arguments."""
    proc = subprocess.run(
        [sys.executable, str(TOOL), *(str(a) for a in args)],
        capture_output=True,
        text=True,
        check=False,
    )
    if check and proc.returncode != 0:
        raise SampleCAToolError(proc)
    return proc


@dataclass(frozen=True)
class SampleCA:
    """A demo PKI created by `sample_ca.py init`, with paths to its files."""

    dir: Path
    port: int
    root: Path
    root_key: Path
    intermediate: Path
    intermediate_key: Path
    ocsp: Path
    ocsp_key: Path
    chain: Path
    ca_bundle: Path
    users: Path
    crl_root: Path
    crl_intermediate: Path
    state: Path

    @classmethod
    def at(cls, directory: Path, port: int) -> SampleCA:
        """Describe an existing sample CA directory."""
        d = Path(directory)
        return cls(
            dir=d,
            port=port,
            root=d / "root.pem",
            root_key=d / "root.key",
            intermediate=d / "intermediate.pem",
            intermediate_key=d / "intermediate.key",
            ocsp=d / "ocsp.pem",
            ocsp_key=d / "ocsp.key",
            chain=d / "chain.pem",
            ca_bundle=d / "ca-bundle.pem",
            users=d / "users",
            crl_root=d / "crl" / "root.crl",
            crl_intermediate=d / "crl" / "intermediate.crl",
            state=d / "state.json",
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ocsp_url(self) -> str:
        return f"{self.base_url}/ocsp"

    def crl_url(self, ca: str = "intermediate") -> str:
        """URL of crl/<ca>.crl ("root" or "intermediate") as written into certificates."""
        return f"{self.base_url}/crl/{ca}.crl"

    def user_cert(self, name: str) -> Path:
        return self.users / f"{name}.pem"

    def user_key(self, name: str) -> Path:
        return self.users / f"{name}.key"

    def user_chain(self, name: str) -> Path:
        return self.users / f"{name}-chain.pem"

    def run(
        self, command: str, *args: str | os.PathLike[str], check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run `sample_ca.py COMMAND DIR ARGS...` (DIR is inserted after COMMAND)."""
        return run_tool(command, self.dir, *args, check=check)

    def run_raw(
        self, *args: str | os.PathLike[str], check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run `sample_ca.py ARGS...` with nothing inserted."""
        return run_tool(*args, check=check)

    def user(self, name: str, *options: str) -> Path:
        """Issue users/NAME.pem (+ .key, -chain.pem) with `user` OPTIONS; return the cert."""
        self.run("user", name, *options)
        return self.user_cert(name)

    def revoke(self, cert_or_serial: Path | str, reason: str | None = None) -> None:
        """Revoke by certificate file (Path) or hex serial (str)."""
        args: list[str | os.PathLike[str]] = (
            [cert_or_serial] if isinstance(cert_or_serial, Path) else ["--serial", cert_or_serial]
        )
        if reason:
            args += ["--reason", reason]
        self.run("revoke", *args)

    def records(self) -> list[dict[str, Any]]:
        """The certificate records of state.json."""
        data = json.loads(self.state.read_text())
        return list(data["certs"])

    def serial_of(self, cert: Path) -> str:
        """The state.json serial (upper-case hex) recorded for a certificate file."""
        target = cert.resolve()
        for r in self.records():
            path = Path(r["file"])
            if (path if path.is_absolute() else self.dir / path).resolve() == target:
                return str(r["serial"])
        raise KeyError(f"{cert} is not recorded in {self.state}")


def make_sample_ca(
    tmp_path: Path, port: int | None = None, days: int | None = None, subdir: str = "sample-ca"
) -> SampleCA:
    """Create a fresh demo PKI under tmp_path/subdir (see the module docstring)."""
    directory = Path(tmp_path) / subdir
    chosen = free_port() if port is None else port
    args: list[str | os.PathLike[str]] = ["init", directory, "--port", str(chosen)]
    if days is not None:
        args += ["--days", str(days)]
    run_tool(*args)
    return SampleCA.at(directory, chosen)


@dataclass(frozen=True)
class SampleCAServer:
    """A running `sample_ca.py serve` subprocess."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ocsp_url(self) -> str:
        return f"{self.base_url}/ocsp"


def _wait_ready(proc: subprocess.Popen[bytes], log: Path) -> int:
    assert proc.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"sample_ca serve did not become ready; log: {log}")
            if not sel.select(remaining):
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                proc.wait()
                raise RuntimeError(
                    f"sample_ca serve exited {proc.returncode}: {log.read_text().strip()}"
                )
            buf += chunk
    line = buf.split(b"\n", 1)[0].decode()
    prefix = "serving http://127.0.0.1:"
    if not line.startswith(prefix):
        raise RuntimeError(f"unexpected first line from sample_ca serve: {line!r}")
    return int(line[len(prefix) :])


@contextlib.contextmanager
def serving(ca: SampleCA, port: int | None = None) -> Iterator[SampleCAServer]:
    """Run `sample_ca.py serve` for `ca` (on ca.port unless given) while the block runs."""
    log = ca.dir / "serve.log"
    args = [sys.executable, str(TOOL), "serve", str(ca.dir)]
    if port is not None:
        args += ["--port", str(port)]
    with open(log, "ab") as log_file:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log_file)
    try:
        actual = _wait_ready(proc, log)
        yield SampleCAServer(process=proc, port=actual, log=log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture
def sample_ca(tmp_path: Path) -> SampleCA:
    """A fresh demo PKI in tmp_path/sample-ca on a free port (server not running)."""
    return make_sample_ca(tmp_path)


@pytest.fixture
def served_sample_ca(sample_ca: SampleCA) -> Iterator[SampleCA]:
    """A fresh demo PKI whose CRL/OCSP server is running on ca.port."""
    with serving(sample_ca):
        yield sample_ca
