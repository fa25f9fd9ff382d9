"""Shared pieces of the server tests: enrolling sample-ca certificates, configurations,
and a root-owned install of the helper that sshd's AuthorizedKeysCommandUser can run."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from idm.identity.checker import certificate_record
from idm.identity.inventory.store import CertificateRecord, Inventory

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def enroll(inv: Inventory, cert_path: Path, status: str = "approved") -> CertificateRecord:
    """Put a certificate into the inventory with a status (what `idm enroll` would do)."""
    record, _ = inv.add_certificate(certificate_record(load_cert(cert_path)), command="test")
    if status != "pending":
        inv.set_status(record.sha256, status, "test", command="test")
    return record


def plain_pub_line(cert_path: Path) -> str:
    """`ssh-keygen -y` of the user's key: the plain public key line OpenSSH uses."""
    key = Path(str(cert_path)[: -len(".pem")] + ".key")
    out = subprocess.run(["ssh-keygen", "-y", "-f", str(key)], capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


@contextmanager
def hung_listener(port: int) -> Iterator[socket.socket]:
    """A TCP server on 127.0.0.1:PORT that accepts connections and never answers (a hung
    CRL/OCSP responder): the kernel completes each handshake, nothing is ever read or sent."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(64)
        yield s


def write_config(
    path: Path,
    *,
    ca: Path,
    snapshot: Path,
    untrusted: Path | None = None,
    db: str | None = None,
    policy: str = "hard-fail",
    lifetime: int = 3600,
    read_timeout: float = 5.0,
    mapping: tuple[str, ...] = ("principals", "email", "upn", "cn"),
    principals_dir: Path | None = None,
    crl: Path | None = None,
    extra: str = "",
) -> Path:
    lines = []
    if db:
        lines.append(f'db = "{db}"')
    lines += [
        "[validation]",
        f'ca = ["{ca}"]',
        *([f'untrusted = ["{untrusted}"]'] if untrusted else []),
        "[revocation]",
        f'policy = "{policy}"',
        "connect_timeout = 2.0",
        f"read_timeout = {read_timeout}",
    ]
    if crl:
        lines.append(f'crl = ["{crl}"]')
    lines += [
        "[server]",
        f'snapshot = "{snapshot}"',
        f"snapshot_lifetime = {lifetime}",
        "mapping = [" + ", ".join(f'"{m}"' for m in mapping) + "]",
    ]
    if principals_dir:
        lines.append(f'principals_dir = "{principals_dir}"')
    path.write_text("\n".join(lines) + "\n" + extra)
    os.chmod(path, 0o644)
    # The snapshot's folder, as an administrator makes /var/lib/idm: idm refresh writes a
    # named snapshot only into a folder that exists.
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    return path


def idm(*args: str, config: Path | None = None, db: str | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the `idm` CLI as a user would (a new process)."""
    cmd = [sys.executable, "-c", "from idm.cli.entry import main; main()"]
    if db:
        cmd += ["--db", db]
    if config:
        cmd += ["--config", str(config)]
    cmd += list(args)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"idm {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def helper(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `idm authorized-keys ARGS` through the console entry point."""
    cmd = [sys.executable, "-c", "from idm.cli.entry import main; main()", "authorized-keys",
           *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)


SAFE_BASE = Path("/run/idm-server-tests")


def safe_folder() -> Path:
    """A new folder the helper's StrictModes check accepts: root-owned and 0755 up to /.

    Under /run, not /tmp: /tmp is world-writable (1777), and sshd's rules, which the
    helper follows, refuse any file below a folder that others can write."""
    SAFE_BASE.mkdir(mode=0o755, exist_ok=True)
    os.chmod(SAFE_BASE, 0o755)
    root = Path(tempfile.mkdtemp(prefix="t-", dir=SAFE_BASE))
    os.chmod(root, 0o755)
    return root


@dataclass
class HelperInstall:
    """The helper installed the way sshd needs it: a root-owned 0755 folder, not in /tmp.

    ``wrapper`` runs the real entry point (idm.cli.entry) with the system Python, so the
    AuthorizedKeysCommandUser (nobody) can execute it; ``pylib`` holds a copy of the idm
    sources (the helper's login path needs only the standard library). ``state`` holds
    the snapshot and config (readable by all); ``log`` is the helper's --log-file
    (writable by all).
    """

    root: Path
    wrapper: Path
    state: Path
    config: Path
    snapshot: Path
    log: Path

    @classmethod
    def create(cls) -> HelperInstall:
        root = safe_folder()
        # A copy, not links: the checkout may sit where nobody cannot read (/root/...).
        pylib = root / "pylib" / "idm"
        for name in ("identity", "validator", "cli"):
            shutil.copytree(REPO / name, pylib / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        subprocess.run(["chmod", "-R", "a+rX,go-w", str(root / "pylib")], check=True)
        state = root / "state"
        state.mkdir(mode=0o755)
        logdir = root / "log"
        logdir.mkdir()
        os.chmod(logdir, 0o777)
        log = logdir / "helper.log"
        log.touch()
        os.chmod(log, 0o666)
        config = state / "config.toml"
        snapshot = state / "snapshot.sqlite"
        bindir = root / "bin"
        bindir.mkdir(mode=0o755)
        wrapper = bindir / "idm-authorized-keys"
        # Byte-compiled once, into a cache of the install's own (as a package install
        # would be): nobody cannot write __pycache__ next to the sources.
        pycache = root / "pycache"
        subprocess.run(
            [SYSTEM_PYTHON, "-X", f"pycache_prefix={pycache}", "-m", "compileall", "-q",
             str(pylib / "identity" / "__init__.py"), str(pylib / "identity" / "config.py"),
             str(pylib / "identity" / "server"), str(pylib / "cli" / "__init__.py"),
             str(pylib / "cli" / "entry.py")],
            check=True, capture_output=True,
        )
        subprocess.run(["chmod", "-R", "a+rX", str(pycache)], check=True)
        wrapper.write_text(
            f"#!{SYSTEM_PYTHON} -I\n"
            "import sys\n"
            f"sys.pycache_prefix = {str(pycache)!r}\n"
            f"sys.path.insert(0, {str(root / 'pylib')!r})\n"
            "from idm.cli.entry import main\n"
            f"sys.argv = ['idm', 'authorized-keys', '--snapshot', {str(snapshot)!r},\n"
            f"            '--config', {str(config)!r},\n"
            f"            '--log-file', {str(log)!r}, *sys.argv[1:]]\n"
            "main()\n"
        )
        os.chmod(wrapper, 0o755)
        return cls(root, wrapper, state, config, snapshot, log)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")
