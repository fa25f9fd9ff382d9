"""docs/enrollment.md, "What a certificate needs": its openssl configuration and commands,
run as written (on a free port instead of 8080), give a certificate idm accepts and maps by
its e-mail and UPN; the variants the page names are refused for the reason it gives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ports import free_port
from tests.server.helpers import idm

DOC = Path(__file__).resolve().parent.parent / "docs" / "enrollment.md"
SECTION = DOC.read_text().split("## What a certificate needs", 1)[1].split("\n## ", 1)[0]


def fenced(language: str, containing: str) -> str:
    """The fenced block of `language` in the section that contains `containing`."""
    opened: str | None = None
    lines: list[str] = []
    for line in SECTION.splitlines():
        if line.startswith("```"):
            if opened is None:
                opened, lines = line[3:].strip(), []
                continue
            block = "\n".join(lines) + "\n"
            if opened == language and containing in block:
                return block
            opened = None
        elif opened is not None:
            lines.append(line)
    raise AssertionError(f"docs/enrollment.md has no {language!r} block with {containing!r}")


@pytest.fixture
def issued(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """The page's commands run in tmp_path; yields (folder, port) while its CRL is served."""
    port = free_port()
    (tmp_path / "idm-user.cnf").write_text(
        fenced("ini", "[idm_user]").replace("127.0.0.1:8080", f"127.0.0.1:{port}"))
    script = fenced("sh", "openssl x509 -req")
    # the server's pid is kept to stop it; its output goes to a file, not to our pipes
    script = script.replace("8080 --bind 127.0.0.1 &", f"{port} --bind 127.0.0.1 "
                            ">server.log 2>&1 &\necho $! > server.pid; sleep 1")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    pid_file = tmp_path / "server.pid"
    try:
        r = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        expected = fenced("", "alice.pem: valid").strip()
        assert r.stdout.strip().splitlines()[-1] == expected, r.stdout
        yield tmp_path, port
    finally:
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGTERM)


def test_the_pages_certificate_maps_by_email_and_by_upn(issued: tuple[Path, int]) -> None:
    folder, _ = issued
    for rule in ("email", "upn"):
        config = folder / f"{rule}.toml"
        config.write_text(
            f'db = "sqlite:///{folder / rule}.sqlite"\n[validation]\nca = ["{folder / "ca.pem"}"]\n'
            f'[server]\nsnapshot = "{folder / rule}-snapshot.sqlite"\nmapping = ["{rule}"]\n')
        idm("enroll", "--token",
            "pkcs11:token=alice;manufacturer=Example;model=Card;serial=0001",
            "--cert", str(folder / "alice.pem"), config=config)
        out = idm("refresh", config=config).stdout
        assert f"alice  CN=alice,O=Example  valid; mapped by rule {rule}" in out, out


@pytest.mark.parametrize(("line", "replacement", "reason"), [
    ("extendedKeyUsage = clientAuth", "extendedKeyUsage = serverAuth",
     "extendedKeyUsage has none of"),
    ("keyUsage = critical, digitalSignature", "keyUsage = critical, keyEncipherment",
     "keyUsage does not allow digitalSignature"),
])
def test_the_variants_the_page_names_are_refused(
    issued: tuple[Path, int], line: str, replacement: str, reason: str
) -> None:
    folder, _ = issued
    cnf = folder / "idm-user.cnf"
    assert line in cnf.read_text()
    cnf.write_text(cnf.read_text().replace(line, replacement))
    subprocess.run(["openssl", "x509", "-req", "-in", "alice.csr", "-CA", "ca.pem", "-CAkey",
                    "ca.key", "-CAcreateserial", "-days", "365", "-extfile", "idm-user.cnf",
                    "-extensions", "idm_user", "-out", "variant.pem"], cwd=folder,
                   capture_output=True, check=True)
    r = idm("verify", "--ca", str(folder / "ca.pem"), str(folder / "variant.pem"), check=False)
    assert r.returncode == 1 and "invalid-path" in r.stdout and reason in r.stdout, r.stdout


def test_without_a_revocation_source_only_require_refuses(tmp_path: Path,
                                                          issued: tuple[Path, int]) -> None:
    folder, _ = issued
    cnf = folder / "idm-user.cnf"
    cnf.write_text("\n".join(line for line in cnf.read_text().splitlines()
                             if not line.startswith("crlDistributionPoints")) + "\n")
    subprocess.run(["openssl", "x509", "-req", "-in", "alice.csr", "-CA", "ca.pem", "-CAkey",
                    "ca.key", "-CAcreateserial", "-days", "365", "-extfile", "idm-user.cnf",
                    "-extensions", "idm_user", "-out", "bare.pem"], cwd=folder,
                   capture_output=True, check=True)
    args = ["verify", "--ca", str(folder / "ca.pem"), "--no-cache", str(folder / "bare.pem")]
    hard = idm(*args, check=False)
    assert hard.returncode == 0 and "0 of 1 certificate(s) with fresh status" in hard.stdout
    required = idm(*args, "--revocation", "require", check=False)
    assert required.returncode == 1 and "revocation-unknown" in required.stdout
    assert "no CRL distribution point, no OCSP responder and no CRL held" in required.stdout
