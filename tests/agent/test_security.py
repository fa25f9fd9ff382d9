"""The agent under attack (issue 14, agent section): each test is one defence of
docs/security.md, against the real `idm agent` process, OpenSSH's ssh-add and SoftHSM2.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.x509.oid import NameOID

from idm.identity import sshwire as w
from idm.identity.agent import protocol as p
from idm.identity.display import printable
from tests.agent.client import AgentClient
from tests.agent.conftest import (
    AS_NOBODY,
    NOBODY,
    SETPRIV,
    SSH_ADD,
    Askpass,
    IdmAgent,
    make_key,
    start_agent,
)
from tests.agent.tokenworld import GUARD, Agent, World, write_config
from tests.softhsm import SOFTHSM_MODULE
from tests.sshd import SshdServer
from tests.testlibs import GCC, build_library

# ------------------------------------------------------------------ comments


def _hostile_certificate(world: World, tmp_path: Path) -> tuple[rsa.RSAPrivateKey, Path, str]:
    """A sample-ca certificate whose O= holds a newline and a whole ed25519 key line."""
    intruder = ed25519.Ed25519PrivateKey.generate().public_key()
    intruder_line = w.public_key_line(w.KeyBlob.plain(intruder)) + " intruder@evil"
    key = rsa.generate_private_key(65537, 2048)
    subject = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, "mallory"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"x\n{intruder_line}\n\x1b]0;owned\x07"),
    ])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    csr_path = tmp_path / "mallory.csr"
    csr_path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    cert_path = tmp_path / "mallory.pem"
    world.ca.run("issue", "--csr", csr_path, "--out", cert_path)
    issued = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert "\n" in issued.subject.rfc4514_string()  # the CA kept the newline
    return key, cert_path, intruder_line.split()[1]


@pytest.mark.softhsm
def test_hostile_subject_gives_one_ssh_add_line_per_identity(
    world: World, agents: Callable[..., Agent], tmp_path: Path,
) -> None:
    world.put("alice", b"\x01")
    key, cert_path, intruder_b64 = _hostile_certificate(world, tmp_path)
    world.hsm.import_private_key(world.card, key, key_id=b"\x02", label="mallory")
    world.hsm.import_certificate(world.card, cert_path, key_id=b"\x02", label="mallory")
    assert world.enroll() == ["approved", "approved"]
    agent = agents()
    agent.wait_for(lambda: len(agent.blobs()) == 4, "both identities (2 blobs each)")

    assert SSH_ADD is not None
    listed = subprocess.run([SSH_ADD, "-L"], env=agent.env(), capture_output=True, text=True,
                            timeout=GUARD, check=True).stdout
    lines = listed.splitlines()
    # two identities (OpenSSH prints the plain key of each; it skips the RFC 6187 blobs)
    assert len(lines) == 2, listed
    assert intruder_b64 not in [part for line in lines for part in line.split()[:2]]
    assert not any("\x1b" in line for line in lines)
    comments = [comment for _, comment in agent.listing()]
    assert all(c == printable(c) for c in comments)
    assert any("O=x?ssh-ed25519 " in c for c in comments), comments
    # the log names the certificate on one line too: no line starts with the key
    assert not any(line.startswith("ssh-ed25519") for line in agent.log().splitlines())


# ------------------------------------------------------------------ memory

# Looks for a byte string in another process's memory, as an attacker of the same uid
# would: /proc/PID/maps for the mapped ranges, /proc/PID/mem to read them.
MEMORY_READER = r"""
import json, sys
pid, needle = int(sys.argv[1]), bytes.fromhex(sys.argv[2])
try:
    mem = open(f"/proc/{pid}/mem", "rb", buffering=0)
except OSError as exc:
    print(json.dumps({"open_errno": exc.errno})); sys.exit(0)
found = read = 0
with mem, open(f"/proc/{pid}/maps") as maps:
    for line in maps:
        span, perms = line.split()[:2]
        if not perms.startswith("r"):
            continue
        start, end = (int(x, 16) for x in span.split("-"))
        for at in range(start, end, 1 << 22):
            try:
                mem.seek(at)
                chunk = mem.read(min(end - at, (1 << 22) + len(needle)))
            except OSError:
                break
            read += len(chunk)
            found += needle in chunk
print(json.dumps({"found": found, "read": read}))
"""


def _read_memory(pid: int, needle: bytes, prefix: list[str]) -> dict[str, int]:
    proc = subprocess.run([*prefix, sys.executable, "-c", MEMORY_READER, str(pid), needle.hex()],
                          capture_output=True, text=True, timeout=GUARD, check=False)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


# The interpreter may sit where nobody cannot go (a pyenv under /root, a checkout in a 0700
# folder): the agent and the readers run as nobody with CAP_DAC_READ_SEARCH as an ambient
# capability, which lets them read those files and gives no ptrace rights (reading another
# process's memory needs the same uid, a dumpable target and, caps being equal, nothing more).
AS_NOBODY_READING = [*AS_NOBODY, "--inh-caps=+dac_read_search",
                     "--ambient-caps=+dac_read_search"]


def _nobody_can_run_python() -> bool:
    if os.geteuid() != 0 or SETPRIV is None:
        return False
    probe = subprocess.run([*AS_NOBODY_READING, sys.executable, "-c",
                            "import idm.identity.agent.server"],
                           capture_output=True, timeout=GUARD, check=False)
    return probe.returncode == 0


@pytest.mark.skipif(not _nobody_can_run_python(), reason="needs root and setpriv")
def test_agent_memory_is_not_readable_by_its_own_user(tmp_path: Path) -> None:
    run_dir = Path(tempfile.mkdtemp(prefix="idm-nobody-", dir="/tmp"))  # nobody can reach it
    os.chown(run_dir, NOBODY, NOBODY)
    agent = start_agent(tmp_path, sock=run_dir / "agent.sock", prefix=AS_NOBODY_READING)
    bystander = subprocess.Popen(
        [*AS_NOBODY_READING, sys.executable, "-c",
         "import sys, time; marker = bytes.fromhex(sys.argv[1]) * 2; time.sleep(120)",
         "5ec12e7c0ffee15b"], stdin=subprocess.DEVNULL)
    try:
        key_path = make_key(tmp_path, "ed25519")
        added = agent.ssh_add(str(key_path))
        assert added.returncode == 0, added.stderr + agent.log()
        key = serialization.load_ssh_private_key(key_path.read_bytes(), None)
        assert isinstance(key, ed25519.Ed25519PrivateKey)
        seed = key.private_bytes_raw()

        status = Path(f"/proc/{agent.pid}/status").read_text()
        assert f"Uid:\t{NOBODY}\t" in status  # the agent runs as nobody
        # another process of the same uid cannot read the agent's memory ...
        assert _read_memory(agent.pid, seed, AS_NOBODY_READING) == {"open_errno": 13}  # EACCES
        assert os.stat(f"/proc/{agent.pid}/mem").st_uid == 0  # not dumpable: root's file
        # ... although it reads a plain process of that uid (so the refusal is the agent's)
        assert _read_memory(bystander.pid, bytes.fromhex("5ec12e7c0ffee15b") * 2,
                            AS_NOBODY_READING)["found"] >= 1
        # and the key is there to be found by one who may read it (root)
        assert _read_memory(agent.pid, seed, [])["found"] >= 1
    finally:
        bystander.kill()
        bystander.wait()
        agent.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


# ------------------------------------------------------------------ many connections


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + GUARD
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


HELD = 1000


def test_held_and_dripping_connections_never_lock_out_a_new_client(idm_agent: IdmAgent) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < HELD + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * HELD), hard))
    with AgentClient(idm_agent.sock) as c:
        assert c.identities() == []
        baseline = _open_fds(idm_agent.pid) - 1  # without this connection
    _wait_until(lambda: _open_fds(idm_agent.pid) == baseline, "the first client to go")
    held: list[socket.socket] = []
    stop = threading.Event()

    def drip(sock: socket.socket) -> None:
        # a message that never ends: one byte of it every 0.1 s
        sock.sendall(struct.pack(">I", 1000))
        while not stop.wait(0.1):
            try:
                sock.sendall(b"\x0d")
            except OSError:
                return

    drippers = []
    try:
        for i in range(HELD):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(idm_agent.sock))
            if i % 100 == 0:  # a few stalled in the middle of a message ...
                s.sendall(b"\x00\x00\x00\x20\x0d")
            held.append(s)
        for s in held[1:200:20]:  # ... and a few sending a byte at a time
            t = threading.Thread(target=drip, args=(s,), daemon=True)
            t.start()
            drippers.append(t)
        _wait_until(lambda: _open_fds(idm_agent.pid) >= baseline + HELD,
                    f"the agent to hold {HELD} connections")

        # a new client is served (the time is reported; bench/agent_idle.py measures it)
        started = time.monotonic()
        listed = idm_agent.ssh_add("-l")
        took = time.monotonic() - started
        assert listed.returncode == 1 and "no identities" in listed.stdout, listed
        print(f"ssh-add -l with {HELD} connections held: {took * 1000:.0f} ms")
        with AgentClient(idm_agent.sock) as c:
            assert c.identities() == []
    finally:
        stop.set()
        for t in drippers:
            t.join(GUARD)
        for s in held:
            s.close()
    # every descriptor is given back
    _wait_until(lambda: _open_fds(idm_agent.pid) == baseline,
                f"the agent's descriptors to return to {baseline}")
    with AgentClient(idm_agent.sock) as c:
        assert c.identities() == []



# ------------------------------------------------------------------ unlock guessing


def test_parallel_unlock_guesses_wait_for_one_global_delay(idm_agent: IdmAgent) -> None:
    guesses = 5
    with AgentClient(idm_agent.sock) as c:
        assert isinstance(c.request(p.Lock(b"correct horse")), p.Success)
    clients = [AgentClient(idm_agent.sock) for _ in range(guesses)]
    answers: list[p.Response] = []
    barrier = threading.Barrier(guesses)

    def guess(c: AgentClient, i: int) -> None:
        barrier.wait()
        answers.append(c.request(p.Unlock(b"guess %d" % i)))

    threads = [threading.Thread(target=guess, args=(c, i)) for i, c in enumerate(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(GUARD)
    took = time.monotonic() - started
    for c in clients:
        c.close()
    assert len(answers) == guesses and all(isinstance(a, p.Failure) for a in answers)
    # 0.1 s more per failure, and one guess at a time from every connection: the guesses
    # took at least 0.1 + 0.2 + ... + 0.5 s (in parallel, per-connection delays: 0.5 s)
    assert took >= sum(0.1 * n for n in range(1, guesses + 1)) - 0.05, took
    # the passphrase still works, and the agent serves again
    with AgentClient(idm_agent.sock) as c:
        assert isinstance(c.request(p.Unlock(b"correct horse")), p.Success)
        assert c.identities() == []
    assert "failure 5; every unlock waits 0.5 s" in idm_agent.log()


# ------------------------------------------------------------------ PKCS#11 providers

TRIES = 300  # ssh-add -s requests while a link flips (the flaw this closes took 3)


@pytest.fixture
def allowed_dir() -> Iterator[Path]:
    """A fresh folder inside an allowed folder (/usr/local/lib), removed afterwards."""
    if os.geteuid() != 0 or GCC is None:
        pytest.skip("needs root (to write under /usr/local/lib) and gcc")
    base = Path("/usr/local/lib")
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="idm-test-", dir=base))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def _forwarded_bind() -> p.Extension:
    """A valid session-bind@openssh.com with is_forwarding=1, as ssh sends for ssh -A."""
    host = ed25519.Ed25519PrivateKey.generate()
    session_id = os.urandom(32)
    signature = w.sign_with_private_key(
        host, w.signature_scheme(w.KeyBlob.plain(host.public_key())), session_id)
    bind = p.SessionBind(w.public_key_blob(host.public_key()), session_id, signature, True)
    return p.Extension(p.SESSION_BIND, bind.encode_contents())


def _agent_pid(agent: Agent) -> int:
    return agent.proc.pid


@pytest.mark.softhsm
@pytest.mark.sshd
def test_forwarded_agent_cannot_load_a_provider(
    world: World, agents: Callable[..., Agent], askpass: Askpass, short_dir: Path,
    allowed_dir: Path, sshd_factory: Callable[..., SshdServer], tmp_path: Path,
) -> None:
    evil = build_library(tmp_path, allowed_dir / "libevil.so", tmp_path / "loaded", pkcs11=True)
    agent = agents()
    key = make_key(short_dir, "ed25519")
    assert subprocess.run([SSH_ADD, str(key)], env=agent.env(), capture_output=True,
                          timeout=GUARD, check=False).returncode == 0
    blob = w.parse_public_key_line(key.with_suffix(".pub").read_text()).key
    sshd = sshd_factory(w.authorized_keys_line(blob, "login") + "\n")
    askpass.set_passphrase("1234")
    # On the remote host, ssh-add -s through the forwarded agent (ssh -A)
    remote = (f"SSH_ASKPASS={askpass.program} SSH_ASKPASS_REQUIRE=force "
              f"ssh-add -s {evil.path} </dev/null; echo exit=$?")
    r = subprocess.run(sshd.ssh_command(remote, agent=agent.sock, options=["ForwardAgent=yes"]),
                       capture_output=True, text=True, timeout=GUARD, stdin=subprocess.DEVNULL,
                       env=agent.env(), check=False)
    assert r.returncode == 0, r.stderr + sshd.log_text()[-2000:]
    assert "exit=1" in r.stdout, (r.stdout, r.stderr)
    log = agent.log()
    assert "(forwarded)" in log  # ssh bound the forwarded connection
    assert f"ssh-add -s {evil.path} refused: the connection is session-bound" in log
    assert evil.loaded_in() == []  # its constructor never ran, anywhere
    assert str(evil.path) not in _maps(_agent_pid(agent))
    # the same request from a local ssh-add is not refused for that reason: the library
    # is loaded, but in a helper process, never in the agent's own
    local = subprocess.run([SSH_ADD, "-s", str(evil.path)], capture_output=True, text=True,
                           env=dict(agent.env(), SSH_ASKPASS=str(askpass.program),
                                    SSH_ASKPASS_REQUIRE="force"),
                           timeout=GUARD, stdin=subprocess.DEVNULL, check=False)
    assert local.returncode != 0  # its C_GetFunctionList fails
    assert evil.loaded_in() and _agent_pid(agent) not in evil.loaded_in()
    assert str(evil.path) not in _maps(_agent_pid(agent))
    assert "helper" in agent.log()


@pytest.mark.softhsm
def test_allow_remote_pkcs11_loads_in_a_helper(
    world: World, agents: Callable[..., Agent], allowed_dir: Path, tmp_path: Path,
) -> None:
    evil = build_library(tmp_path, allowed_dir / "libevil.so", tmp_path / "loaded", pkcs11=True)
    agent = agents("--allow-remote-pkcs11")
    with AgentClient(agent.sock) as c:
        assert isinstance(c.request(_forwarded_bind()), p.Success)
        assert isinstance(c.request(p.AddSmartcardKey(str(evil.path), "")), p.Failure)
    assert "is session-bound" not in agent.log()
    pids = evil.loaded_in()
    assert pids and _agent_pid(agent) not in pids
    assert str(evil.path) not in _maps(_agent_pid(agent))


@pytest.mark.softhsm
def test_a_library_that_is_not_a_pkcs11_module_is_never_loaded(
    world: World, agents: Callable[..., Agent], askpass: Askpass, allowed_dir: Path,
    tmp_path: Path,
) -> None:
    plain = build_library(tmp_path, allowed_dir / "libplain.so", tmp_path / "loaded",
                          pkcs11=False)
    agent = agents()
    askpass.set_passphrase("1234")
    r = subprocess.run([SSH_ADD, "-s", str(plain.path)], capture_output=True, text=True,
                       env=dict(agent.env(), SSH_ASKPASS=str(askpass.program),
                                SSH_ASKPASS_REQUIRE="force"),
                       timeout=GUARD, stdin=subprocess.DEVNULL, check=False)
    assert r.returncode != 0
    assert f"provider {plain.path} is not a PKCS#11 module: it does not export " \
           "C_GetFunctionList" in agent.log()
    assert plain.loaded_in() == []  # refused before any process loaded it
    with AgentClient(agent.sock) as c:  # garbage in an allowed folder: refused the same
        junk = allowed_dir / "libjunk.so"
        junk.write_bytes(b"\x7fELF" + os.urandom(200))
        junk.chmod(0o644)
        assert isinstance(c.request(p.AddSmartcardKey(str(junk), "")), p.Failure)
    assert f"provider {junk}: not a well-formed ELF" in agent.log()


@pytest.mark.softhsm
def test_a_flipping_symlink_never_loads_a_library_from_outside(
    world: World, agents: Callable[..., Agent], short_dir: Path, tmp_path: Path,
) -> None:
    if GCC is None:
        pytest.skip("needs gcc")
    outside = build_library(tmp_path, short_dir / "libout.so", tmp_path / "loaded", pkcs11=True)
    no_providers = tmp_path / "none.toml"
    write_config(no_providers, world.ca, [])
    agent = agents(config=no_providers)  # SoftHSM2 is loaded on request, in a helper
    link = short_dir / "flip.so"
    stop = threading.Event()

    def flip() -> None:
        n = 0
        while not stop.is_set():
            target = SOFTHSM_MODULE if n % 2 else str(outside.path)
            tmp = short_dir / f".flip{n % 2}"
            tmp.unlink(missing_ok=True)
            os.symlink(target, tmp)
            os.replace(tmp, link)  # atomic: the link always exists, pointing one way
            n += 1

    flipper = threading.Thread(target=flip, daemon=True)
    flipper.start()
    try:
        with AgentClient(agent.sock) as c:
            for _ in range(TRIES):
                c.request(p.AddSmartcardKey(str(link), ""))
    finally:
        stop.set()
        flipper.join(GUARD)
    log = agent.log()
    refused = log.count(f"({outside.path}) is not allowed")
    served = log.count("no approved, valid identity") + log.count("no token is present")
    # both ways were tried many times, and the outside library was never loaded
    assert refused > 10 and served > 10, (refused, served)
    assert outside.loaded_in() == []
    assert str(outside.path) not in _maps(_agent_pid(agent))


def _helpers_of(pid: int) -> list[int]:
    """PKCS#11 helper processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"pkcs11_helper" in cmdline:
            found.append(int(entry.name))
    return found


@pytest.mark.softhsm
def test_ssh_add_s_provider_runs_in_a_helper_that_ends_with_e_and_with_the_agent(
    world: World, agents: Callable[..., Agent], askpass: Askpass, tmp_path: Path,
) -> None:
    world.put("alice", b"\x01")
    world.enroll()
    no_providers = tmp_path / "none.toml"
    write_config(no_providers, world.ca, [])
    agent = agents(config=no_providers)
    askpass.set_passphrase(world.card.pin)
    env = dict(agent.env(), SSH_ASKPASS=str(askpass.program), SSH_ASKPASS_REQUIRE="force")

    def ssh_add(*args: str) -> subprocess.CompletedProcess[str]:
        assert SSH_ADD is not None
        return subprocess.run([SSH_ADD, *args], env=env, capture_output=True, text=True,
                              timeout=GUARD, stdin=subprocess.DEVNULL, check=False)

    assert ssh_add("-s", SOFTHSM_MODULE).returncode == 0, agent.log()
    (helper,) = _helpers_of(_agent_pid(agent))
    real = os.path.realpath(SOFTHSM_MODULE)
    assert real in _maps(helper) and real not in _maps(_agent_pid(agent))
    # listing and signing work as before, through the helper
    blob = agent.blobs()[0]
    assert isinstance(agent.sign(blob, w.SIGN_RSA_SHA2_256), p.SignResponse), agent.log()
    listed = ssh_add("-L").stdout
    assert "CN=alice" in listed
    # ssh-add -e stops it; -s starts a new one; the agent's exit stops that one
    assert ssh_add("-e", SOFTHSM_MODULE).returncode == 0
    _wait_until(lambda: not Path(f"/proc/{helper}").exists(), "the helper to exit")
    assert agent.blobs() == []
    assert ssh_add("-s", SOFTHSM_MODULE).returncode == 0
    (second,) = _helpers_of(_agent_pid(agent))
    assert second != helper
    # a helper that dies costs its provider's signatures, not the agent
    os.kill(second, signal.SIGKILL)
    blob = agent.blobs()[0]
    assert isinstance(agent.sign(blob, w.SIGN_RSA_SHA2_256), p.Failure)
    assert f"the PKCS#11 helper for {real}" in agent.log()
    with AgentClient(agent.sock) as c:
        assert isinstance(c.request(p.Lock(b"pass")), p.Success)
        assert isinstance(c.request(p.Unlock(b"pass")), p.Success)
    assert ssh_add("-e", SOFTHSM_MODULE).returncode == 0
    assert ssh_add("-s", SOFTHSM_MODULE).returncode == 0
    (third,) = _helpers_of(_agent_pid(agent))
    assert isinstance(agent.sign(agent.blobs()[0], w.SIGN_RSA_SHA2_256), p.SignResponse)
    agent.stop()
    _wait_until(lambda: not Path(f"/proc/{third}").exists(), "the helper to exit with the agent")


@pytest.mark.softhsm
def test_the_helper_imports_nothing_from_the_agents_working_folder(
    world: World, agents: Callable[..., Agent], askpass: Askpass, short_dir: Path,
    tmp_path: Path,
) -> None:
    # `idm agent -d` run from a shared folder such as /tmp: modules planted there by
    # another user must not run in the helper that receives the PINs
    world.put("alice", b"\x01")
    world.enroll()
    no_providers = tmp_path / "none.toml"
    write_config(no_providers, world.ca, [])
    planted = short_dir / "shared"
    planted.mkdir()
    marker = short_dir / "imported"
    for name in ("json", "base64", "struct", "socket"):
        (planted / f"{name}.py").write_text(f"open({str(marker)!r}, 'a').write({name!r})\n")
    agent = agents(config=no_providers, cwd=planted)
    askpass.set_passphrase(world.card.pin)
    env = dict(agent.env(), SSH_ASKPASS=str(askpass.program), SSH_ASKPASS_REQUIRE="force")
    assert SSH_ADD is not None
    added = subprocess.run([SSH_ADD, "-s", SOFTHSM_MODULE], env=env, capture_output=True,
                           text=True, timeout=GUARD, stdin=subprocess.DEVNULL, check=False)
    assert not marker.exists(), marker.read_text()
    assert added.returncode == 0, agent.log()
    (helper,) = _helpers_of(_agent_pid(agent))
    assert os.readlink(f"/proc/{helper}/cwd") == "/"
    assert isinstance(agent.sign(agent.blobs()[0], w.SIGN_RSA_SHA2_256), p.SignResponse)


@pytest.mark.softhsm
def test_concurrent_loads_of_one_module_start_one_helper(
    world: World, agents: Callable[..., Agent], tmp_path: Path,
) -> None:
    no_providers = tmp_path / "none.toml"
    write_config(no_providers, world.ca, [])
    agent = agents(config=no_providers)
    go = threading.Barrier(4)

    def load() -> None:
        with AgentClient(agent.sock) as c:
            go.wait(GUARD)
            c.request(p.AddSmartcardKey(SOFTHSM_MODULE, ""))

    loaders = [threading.Thread(target=load) for _ in range(4)]
    for t in loaders:
        t.start()
    for t in loaders:
        t.join(GUARD)
    assert len(_helpers_of(_agent_pid(agent))) == 1, agent.log()


def test_a_client_that_does_not_read_its_answers_holds_only_itself(idm_agent: IdmAgent,
                                                                   short_dir: Path) -> None:
    for i in range(8):  # answers of a few hundred bytes each
        assert idm_agent.ssh_add(str(make_key(short_dir, "ed25519", f"k{i}"))).returncode == 0
    hog = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hog.connect(str(idm_agent.sock))
    hog.setblocking(False)
    request = p.RequestIdentities().encode()
    sent = 0
    pending = b""
    stalled_since = None
    # pipeline requests and never read, until the agent stops taking them for a while;
    # a partial send is finished first, so the stream stays whole requests
    while stalled_since is None or time.monotonic() - stalled_since < 1.0:
        pending = pending or request * 64
        try:
            n = hog.send(pending)
        except BlockingIOError:
            stalled_since = stalled_since or time.monotonic()
            time.sleep(0.05)
            continue
        stalled_since = None
        pending = pending[n:]
        sent += n
        assert sent < 2 * 1024 * 1024, "the agent kept reading without bound"
    # everyone else is served meanwhile
    with AgentClient(idm_agent.sock) as c:
        assert len(c.identities()) == 8
    # and the hog gets every answer it asked for, in order, once it reads
    hog.setblocking(True)
    hog.settimeout(GUARD)
    expected = sent // len(request)
    got = 0
    buf = b""
    while got < expected:
        chunk = hog.recv(1 << 20)
        assert chunk, f"closed after {got} of {expected} answers"
        buf += chunk
        while len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "big"):
            length = int.from_bytes(buf[:4], "big")
            answer = p.parse_response(buf[4 : 4 + length])
            assert isinstance(answer, p.IdentitiesAnswer) and len(answer.identities) == 8
            buf = buf[4 + length :]
            got += 1
    hog.close()
