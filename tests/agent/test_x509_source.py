"""The agent serving X.509 identities from an IdentitySource: per-socket lists, sign requests
in all three blob forms, and asyncssh logging in to an asyncssh server that trusts the CA.

The source here holds software keys with CA-issued certificates; it is the plug-in shape the
token-backed source implements, exercised end to end with real peers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from idm.identity import sshwire as w
from idm.identity.agent import protocol as p
from idm.identity.agent.identities import (
    AgentIdentity,
    BaseIdentitySource,
    IdentityError,
    IdentitySource,
    SocketKind,
)
from idm.identity.agent.server import AgentServer
from tests.agent.client import AgentClient
from tests.agent.conftest import GUARD_SECONDS, SSH_ADD, needs_openssh

SECURE_SHELL_CLIENT = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.21")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: w.PrivateKey, issuer: str, issuer_key: w.PrivateKey,
          ca: bool) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.CLIENT_AUTH, SECURE_SHELL_CLIENT]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass
class CertIdentity:
    key: w.PrivateKey
    chain: list[x509.Certificate]  # leaf first
    comment: str

    @property
    def self_signed(self) -> bool:
        return self.chain[0].issuer == self.chain[0].subject


class CertSource(BaseIdentitySource):
    """Software keys with certificates, listed per socket kind as the reference says."""

    def __init__(self, entries: Sequence[CertIdentity]) -> None:
        self.entries = list(entries)
        self.signed: list[str] = []

    def identities(self, kind: SocketKind) -> list[AgentIdentity]:
        out = []
        for e in self.entries:
            plain = AgentIdentity(w.public_key_blob(e.key.public_key()), e.comment, handle=e)
            if e.self_signed:
                out.append(plain)  # the downgrade: plain key only
            elif kind is SocketKind.STANDARD:
                out += [plain, AgentIdentity(w.x509_rfc6187_blob(e.chain), e.comment, handle=e)]
            else:
                out += [AgentIdentity(w.x509_raw_der_blob(e.chain[0]), e.comment, handle=e), plain]
        return out

    def sign(self, identity: AgentIdentity, request: w.KeyBlob, data: bytes,
             flags: int) -> bytes:
        entry = identity.handle
        if not isinstance(entry, CertIdentity):
            raise IdentityError("not one of ours")
        scheme = w.signature_scheme(request, flags)
        self.signed.append(scheme.name)
        return w.sign_with_private_key(entry.key, scheme, data)


@pytest.fixture(scope="module")
def pki() -> dict[str, object]:
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = _cert("Test CA", ca_key, "Test CA", ca_key, ca=True)
    rsa_key = rsa.generate_private_key(65537, 2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    self_key = ec.generate_private_key(ec.SECP256R1())
    return {
        "ca": ca,
        "rsa": CertIdentity(rsa_key, [_cert("alice", rsa_key, "Test CA", ca_key, False), ca],
                            "alice-rsa"),
        "ec": CertIdentity(ec_key, [_cert("alice", ec_key, "Test CA", ca_key, False), ca],
                           "alice-ec"),
        "self": CertIdentity(self_key, [_cert("bob", self_key, "bob", self_key, False)],
                             "bob-self-signed"),
    }


@dataclass
class RunningServer:
    server: AgentServer
    source: CertSource
    std: Path
    pkix: Path


@pytest.fixture
def x509_agent(pki: dict[str, object]) -> Iterator[RunningServer]:
    d = Path(tempfile.mkdtemp(prefix="idm-x-", dir="/tmp"))
    source = CertSource([pki["rsa"], pki["ec"], pki["self"]])  # type: ignore[list-item]
    assert isinstance(source, IdentitySource)
    server = AgentServer(sources=[source])
    std = server.listen(d / "std.sock", SocketKind.STANDARD)
    pkix = server.listen(d / "pkix.sock", SocketKind.PKIX)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield RunningServer(server, source, std, pkix)
    finally:
        server.shutdown()
        thread.join(GUARD_SECONDS)
        server.close()
        d.rmdir()


def _forms(sock: Path) -> list[tuple[str, str]]:
    with AgentClient(sock) as c:
        return [(w.parse_key_blob(b).algorithm, comment) for b, comment in c.identities()]


def test_identity_lists_per_socket(x509_agent: RunningServer) -> None:
    assert _forms(x509_agent.std) == [
        ("ssh-rsa", "alice-rsa"), ("x509v3-rsa2048-sha256", "alice-rsa"),
        ("ecdsa-sha2-nistp256", "alice-ec"), ("x509v3-ecdsa-sha2-nistp256", "alice-ec"),
        ("ecdsa-sha2-nistp256", "bob-self-signed"),
    ]
    assert _forms(x509_agent.pkix) == [
        ("x509v3-sign-rsa", "alice-rsa"), ("ssh-rsa", "alice-rsa"),
        ("x509v3-ecdsa-sha2-nistp256", "alice-ec"), ("ecdsa-sha2-nistp256", "alice-ec"),
        ("ecdsa-sha2-nistp256", "bob-self-signed"),
    ]


@pytest.mark.parametrize("sock_name", ["std", "pkix"])
@pytest.mark.parametrize(("who", "form", "flags", "sig_name"), [
    ("rsa", "plain", 0, "ssh-rsa"),
    ("rsa", "plain", w.SIGN_RSA_SHA2_256, "rsa-sha2-256"),
    ("rsa", "plain", w.SIGN_RSA_SHA2_512, "rsa-sha2-512"),
    ("rsa", "rfc6187", w.SIGN_RSA_SHA2_256, "rsa2048-sha256"),
    ("rsa", "x509v3-ssh-rsa", 0, "ssh-rsa"),
    ("rsa", "raw-der", w.SIGN_RSA_SHA2_256, "x509v3-sign-rsa"),
    ("ec", "plain", 0, "ecdsa-sha2-nistp256"),
    ("ec", "rfc6187", 0, "ecdsa-sha2-nistp256"),
    ("ec", "raw-der", 0, "ecdsa-sha2-nistp256"),
    ("ec", "rfc6187", w.SIGN_ECDSA_DER, "ecdsa-sha2-nistp256"),
])
def test_sign_requests_in_every_form_on_every_socket(
    x509_agent: RunningServer, pki: dict[str, object], sock_name: str, who: str, form: str,
    flags: int, sig_name: str,
) -> None:
    entry = pki[who]
    assert isinstance(entry, CertIdentity)
    blob = {
        "plain": lambda: w.KeyBlob.plain(entry.key.public_key()),
        "rfc6187": lambda: w.KeyBlob.rfc6187(entry.chain),
        "x509v3-ssh-rsa": lambda: w.KeyBlob.rfc6187(entry.chain, "x509v3-ssh-rsa"),
        "raw-der": lambda: w.KeyBlob.raw_der(entry.chain[0]),
    }[form]()
    sock = x509_agent.std if sock_name == "std" else x509_agent.pkix
    with AgentClient(sock) as c:
        resp = c.request(p.SignRequest(blob.blob, b"session data", flags))
    assert isinstance(resp, p.SignResponse)
    assert w.parse_signature_blob(resp.signature)[0] == sig_name
    w.verify_signature(blob, b"session data", resp.signature, flags)


@needs_openssh
def test_openssh_ssh_add_lists_standard_socket(x509_agent: RunningServer,
                                               pki: dict[str, object]) -> None:
    """OpenSSH skips the RFC 6187 entries and lists the plain keys (reference table)."""
    assert SSH_ADD is not None
    r = subprocess.run([SSH_ADD, "-L"], env={"SSH_AUTH_SOCK": str(x509_agent.std)},
                       capture_output=True, text=True, timeout=GUARD_SECONDS)
    assert r.returncode == 0, r.stderr
    names = [line.split()[0] for line in r.stdout.splitlines()]
    assert names == ["ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256"]


async def _asyncssh_login(agent_sock: Path, ca: x509.Certificate, algorithm: str,
                          tmp: Path) -> str:
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    (tmp / "ca.pem").write_bytes(ca_pem)
    auth = asyncssh.import_authorized_keys(f"{algorithm} subject=CN=alice\n")

    def process(proc: asyncssh.SSHServerProcess[str]) -> None:
        proc.stdout.write("x509-login\n")
        proc.exit(0)

    server = await asyncssh.listen(
        "127.0.0.1", 0, server_host_keys=[host_key], authorized_client_keys=auth,
        x509_trusted_certs=[str(tmp / "ca.pem")], process_factory=process,
        x509_purposes="secureShellClient",
    )
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncssh.connect(
            "127.0.0.1", port, username="alice", agent_path=str(agent_sock),
            known_hosts=None, config=[], connect_timeout=GUARD_SECONDS,
        ) as conn:
            result = await conn.run("anything", check=True)
            return str(result.stdout).strip()
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(("who", "algorithm", "sig_name"), [
    ("rsa", "x509v3-rsa2048-sha256", "rsa2048-sha256"),
    ("ec", "x509v3-ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256"),
])
def test_asyncssh_x509_login_through_agent(x509_agent: RunningServer, pki: dict[str, object],
                                           tmp_path: Path, who: str, algorithm: str,
                                           sig_name: str) -> None:
    entry = pki[who]
    assert isinstance(entry, CertIdentity)
    # serve only this identity so the login must use its certificate
    x509_agent.source.entries = [entry]
    ca = pki["ca"]
    assert isinstance(ca, x509.Certificate)
    out = asyncio.run(_asyncssh_login(x509_agent.std, ca, algorithm, tmp_path))
    assert out == "x509-login"
    assert sig_name in x509_agent.source.signed


def test_asyncssh_login_refused_for_untrusted_ca(x509_agent: RunningServer,
                                                 pki: dict[str, object], tmp_path: Path) -> None:
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_ca = _cert("Other CA", other_key, "Other CA", other_key, ca=True)
    x509_agent.source.entries = [pki["ec"]]  # type: ignore[list-item]
    with pytest.raises(asyncssh.PermissionDenied):
        asyncio.run(_asyncssh_login(x509_agent.std, other_ca, "x509v3-ecdsa-sha2-nistp256",
                                    tmp_path))


REJECTED = "rejects the whole list"


def _list_with(client: str, sock: Path, pkixssh: object) -> tuple[list[str] | str, str]:
    """The key types ``client`` reads from the agent at ``sock`` (or REJECTED), and why."""
    if client == "asyncssh":
        async def keys() -> list[str]:
            async with asyncssh.connect_agent(str(sock)) as agent:
                return [k.algorithm.decode() for k in await agent.get_keys()]
        try:
            return asyncio.run(keys()), ""
        except Exception as exc:  # noqa: BLE001 - the failure is the measurement
            return REJECTED, f"{type(exc).__name__}: {exc}"
    program = SSH_ADD if client == "openssh" else str(pkixssh.ssh_add)  # type: ignore[attr-defined]
    assert program is not None
    r = subprocess.run([program, "-L"], env={"SSH_AUTH_SOCK": str(sock)},
                       capture_output=True, text=True, timeout=GUARD_SECONDS)
    if r.returncode != 0:
        return REJECTED, r.stderr.strip()
    return [line.split()[0] for line in r.stdout.splitlines()], ""


# What each client makes of each list: measured, and the reason the agent has two sockets
# (docs/agent.md). No list carries X.509 identities to both PKIX-SSH and asyncssh.
CLIENT_LISTS = {
    "openssh": {  # OpenSSH 9.2: "error fetching identities: invalid format" on raw DER
        "standard": ["ssh-rsa", "ecdsa-sha2-nistp256"],  # skips the RFC 6187 entries
        "pkix": REJECTED,
        "plain": ["ssh-rsa", "ecdsa-sha2-nistp256"],
    },
    "pkixssh": {  # "invalid format" or "incomplete message" on an RFC 6187 blob
        "standard": REJECTED,
        "pkix": ["x509v3-rsa2048-sha256", "ssh-rsa", "x509v3-ecdsa-sha2-nistp256",
                 "ecdsa-sha2-nistp256"],  # ssh-add -L names X.509 keys by its first algorithm
        "plain": ["ssh-rsa", "ecdsa-sha2-nistp256"],
    },
    "asyncssh": {  # PacketDecodeError on raw DER
        "standard": ["ssh-rsa", "x509v3-rsa2048-sha256", "ecdsa-sha2-nistp256",
                     "x509v3-ecdsa-sha2-nistp256"],
        "pkix": REJECTED,
        "plain": ["ssh-rsa", "ecdsa-sha2-nistp256"],
    },
}


@pytest.mark.pkixssh
@needs_openssh
@pytest.mark.parametrize("client", sorted(CLIENT_LISTS))
def test_which_list_each_client_accepts(x509_agent: RunningServer, pki: dict[str, object],
                                        pkixssh: object, client: str) -> None:
    x509_agent.source.entries = [pki["rsa"], pki["ec"]]  # type: ignore[list-item]
    measured = {
        "standard": _list_with(client, x509_agent.std, pkixssh),
        "pkix": _list_with(client, x509_agent.pkix, pkixssh),
    }
    x509_agent.server.sources = [PlainSource(x509_agent.source)]
    measured["plain"] = _list_with(client, x509_agent.std, pkixssh)
    assert {k: v[0] for k, v in measured.items()} == CLIENT_LISTS[client], measured


class PlainSource(BaseIdentitySource):
    """Another source's identities, plain keys only (a list every client reads)."""

    def __init__(self, inner: CertSource) -> None:
        self.inner = inner

    def identities(self, kind: SocketKind) -> list[AgentIdentity]:
        return [i for i in self.inner.identities(kind) if not i.key.is_x509]
