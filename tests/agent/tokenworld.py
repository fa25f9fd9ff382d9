"""A SoftHSM2 card with sample-ca identities, an inventory, and `idm agent` processes.

Shared by the agent tests that need a real card: the ``ca`` (module scope, its CRL/OCSP
server running), ``world`` and ``agents`` fixtures. Every agent is a real
`idm --config … --db … agent -d` process on a private socket; SIGUSR1 makes it
re-validate and poll the cards now, so no test waits for a timer. tests/agent/conftest.py
makes the fixtures available to every agent test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography import x509

from idm.identity import sshwire as w
from idm.identity.agent import protocol as p
from idm.identity.checker import CertificateChecker
from idm.identity.config import load_config
from idm.identity.inventory.store import Inventory
from idm.identity.tokens.enroll import enroll_token
from idm.identity.tokens.session import ProviderSet
from idm.identity.tokens.uri import Pkcs11Uri
from tests.agent.client import AgentClient
from tests.sample_ca_fixture import SampleCA, make_sample_ca, serving
from tests.softhsm import SOFTHSM_MODULE, SoftHSM, SoftHSMToken

if TYPE_CHECKING:
    from tests.agent.conftest import Askpass

GUARD = 30.0  # a ceiling against hangs, never a performance expectation
# -P: like the installed `idm` script, the working folder is not on the agent's sys.path.
IDM = [sys.executable, "-P", "-c", "from idm.cli.entry import main; main()"]


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SampleCA]:
    """One sample CA per module, its CRL/OCSP server running on 127.0.0.1."""
    authority = make_sample_ca(tmp_path_factory.mktemp("ca"))
    with serving(authority):
        yield authority


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def plain_line(cert: Path) -> str:
    return w.public_key_line(w.KeyBlob.plain(load_cert(cert).public_key()))  # type: ignore[arg-type]


@dataclass
class World:
    """A SoftHSM card with sample-ca identities, an inventory, a config file."""

    dir: Path
    ca: SampleCA
    hsm: SoftHSM
    card: SoftHSMToken
    config: Path
    db: str
    providers: list[str]

    def inventory(self) -> Inventory:
        return Inventory(self.db)

    def put(self, user: str, key_id: bytes, token: SoftHSMToken | None = None) -> None:
        """Import users/USER.key and .pem onto the card under CKA_ID key_id."""
        tok = token or self.card
        self.hsm.import_private_key(tok, self.ca.user_key(user), key_id=key_id, label=user)
        self.hsm.import_certificate(tok, self.ca.user_cert(user), key_id=key_id, label=user)

    def enroll(self, token: SoftHSMToken | None = None) -> list[str]:
        """`idm enroll --token` in-process: returns the certificates' statuses."""
        tok = token or self.card
        self.hsm.reinitialize()
        ps = ProviderSet([SOFTHSM_MODULE])
        info = ps.find_token(Pkcs11Uri.parse(tok.uri))
        inv = self.inventory()
        try:
            checker = CertificateChecker.from_config(load_config(self.config), inv)
            certs = ps.open(info).certificates()
            result = enroll_token(inv, checker, info, certs, command="test")
        finally:
            inv.close()
        return [c.status for c in result.certificates]


def write_config(path: Path, ca: SampleCA, providers: Sequence[str], pin_cache: int = 300) -> None:
    quoted = ", ".join(f'"{p}"' for p in providers)
    path.write_text(
        "[validation]\n"
        f'ca = ["{ca.ca_bundle}"]\n'
        f'untrusted = ["{ca.chain}"]\n'
        "[revocation]\n"
        'policy = "hard-fail"\n'
        "connect_timeout = 2.0\nread_timeout = 5.0\n"
        "[tokens]\n"
        f"providers = [{quoted}]\n"
        f"pin_cache = {pin_cache}\n"
    )


@pytest.fixture
def world(tmp_path: Path, ca: SampleCA, softhsm: SoftHSM) -> World:  # noqa: F811
    card = softhsm.init_token("alice-card-1", pin="1234")
    config = tmp_path / "config.toml"
    write_config(config, ca, [SOFTHSM_MODULE])
    return World(tmp_path, ca, softhsm, card, config, f"sqlite:///{tmp_path / 'inv.sqlite'}",
                 [SOFTHSM_MODULE])


@dataclass
class Agent:
    """A running `idm agent -d` with its socket, stderr log and askpass."""

    sock: Path
    proc: subprocess.Popen[bytes]
    log_path: Path
    askpass: Askpass
    pkix: Path | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def env(self) -> dict[str, str]:
        env = dict(os.environ, SSH_AUTH_SOCK=str(self.sock))
        env.pop("DISPLAY", None)
        return env

    def refresh(self) -> None:
        """SIGUSR1: re-validate afresh and poll the cards now."""
        self.proc.send_signal(signal.SIGUSR1)

    def listing(self, sock: Path | None = None) -> list[tuple[str, str]]:
        with AgentClient(sock or self.sock) as c:
            return [(w.parse_key_blob(b).algorithm, comment) for b, comment in c.identities()]

    def blobs(self) -> list[bytes]:
        with AgentClient(self.sock) as c:
            return [b for b, _ in c.identities()]

    def wait_for(self, predicate: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + GUARD
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; agent log:\n{self.log()[-3000:]}")

    def sign(self, blob: bytes, flags: int = 0, data: bytes = b"data") -> p.Response:
        with AgentClient(self.sock) as c:
            return c.request(p.SignRequest(blob, data, flags))

    def pin_prompts(self) -> list[str]:
        return [line for line in self.askpass.prompts() if line.startswith("|Enter PIN")]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(GUARD)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def agents(world: World, short_dir: Path, askpass: Askpass) -> Iterator[Callable[..., Agent]]:
    started: list[Agent] = []

    def start(*args: str, env: dict[str, str] | None = None, pkix: bool = False,
              config: Path | None = None, cwd: Path | None = None) -> Agent:
        n = len(started)
        sock = short_dir / f"a{n}.sock"
        pkix_sock = short_dir / f"p{n}.sock" if pkix else None
        full_env = dict(env or os.environ)
        full_env.update(SSH_ASKPASS=str(askpass.program), SSH_ASKPASS_REQUIRE="force")
        full_env.pop("DISPLAY", None)
        log_path = world.dir / f"agent{n}.log"
        cmd = [*IDM, "--config", str(config or world.config), "--db", world.db, "agent", "-d",
               "-a", str(sock), *args]
        if pkix_sock:
            cmd += ["--pkix-socket", str(pkix_sock)]
        with open(log_path, "wb") as err:
            proc = subprocess.Popen(cmd, env=full_env, stdout=subprocess.DEVNULL, stderr=err,
                                    stdin=subprocess.DEVNULL, cwd=cwd)
        agent = Agent(sock, proc, log_path, askpass, pkix_sock)
        started.append(agent)
        agent.wait_for(lambda: _accepts(sock) or proc.poll() is not None, "the agent socket")
        assert proc.poll() is None, agent.log()
        return agent

    yield start
    for agent in started:
        agent.stop()


def _accepts(sock: Path) -> bool:
    """True once the agent listens (the socket file exists a moment before listen())."""
    try:
        AgentClient(sock).close()
    except OSError:
        return False
    return True


