"""Benchmark: rsa-sha2-256 signatures through idm agent vs OpenSSH ssh-agent, same card.

One SoftHSM2 token holds alice's RSA-2048 key and her sample-ca certificate (approved in
a temporary inventory). OpenSSH's ssh-agent loads it with ``ssh-add -s`` (PIN through an
SSH_ASKPASS script, SSH_ASKPASS_REQUIRE=force); idm agent serves it from the inventory.
Both get N signature requests over the raw agent protocol (this file's own small
client), alternating in small blocks so both see the same machine state (on a shared
machine the load drifts; besides the ratio of the two medians, the median of the
per-block-pair ratios is printed as a check that is robust to that drift). Then REQUEST_IDENTITIES
is timed on an idm agent serving 50 approved certificates (alice's card plus 49 sample-ca
certificates registered for a card that was never inserted: listed like present ones).

    .venv/bin/python bench/agent_sign.py [--signatures 500] [--block 10] [--lists 2000]
                                         [--clients 32] [--seconds 5] [--rounds 3]

Throughput: ``--clients N`` (default 32) connections sign at the same time, each in its
own thread, for ``--seconds`` per agent, alternating agents in ``--rounds`` rounds; it
prints signatures per second for each and the ratio idm / ssh-agent (higher is better).

Revocation comes from the sample CA's CRL files (offline), so no server runs. Prints
median / p90 per agent and the ratio idm / ssh-agent.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from idm.identity import sshwire as w  # noqa: E402
from idm.identity.agent import protocol as p  # noqa: E402

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "1234"
IDM = [sys.executable, "-c", "from idm.cli.entry import main; main()"]


# ------------------------------------------------------------------ raw agent client


class RawAgent:
    """One connection speaking the agent protocol with idm's codec."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.connect(str(path))
        except OSError:
            self.sock.close()
            raise

    def __enter__(self) -> RawAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _recv(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("agent closed the connection")
            buf += chunk
        return buf

    def request(self, message: bytes) -> bytes:
        self.sock.sendall(message)
        (length,) = struct.unpack(">I", self._recv(4))
        return self._recv(length)

    def identities(self) -> list[bytes]:
        resp = p.parse_response(self.request(p.RequestIdentities().encode()))
        assert isinstance(resp, p.IdentitiesAnswer)
        return [blob for blob, _ in resp.identities]

    def close(self) -> None:
        self.sock.close()


# ------------------------------------------------------------------ set-up


def run(cmd: list[str], env: dict[str, str] | None = None, **kw: object) -> str:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])}: exit {proc.returncode}: {proc.stderr.strip()}")
    return str(proc.stdout)


def wait_socket(path: Path, proc: subprocess.Popen[bytes]) -> None:
    """Wait until the agent accepts connections on ``path`` (the file exists a moment
    before the agent listens)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            RawAgent(path).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"agent did not start (socket {path})") from None
            time.sleep(0.05)


def stop_processes(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process still running; SIGKILL it after 10 s."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def extra_certificates(ca_dir: Path, count: int) -> list[x509.Certificate]:
    """Certificates from sample-ca's intermediate for `count` software keys (never used)."""
    issuer = x509.load_pem_x509_certificate((ca_dir / "intermediate.pem").read_bytes())
    issuer_key = serialization.load_pem_private_key(
        (ca_dir / "intermediate.key").read_bytes(), None)
    now = dt.datetime.now(dt.UTC)
    key = rsa.generate_private_key(65537, 2048)
    out = []
    for i in range(count):
        subject = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "XX"),
                             x509.NameAttribute(NameOID.ORGANIZATION_NAME, "idm demo"),
                             x509.NameAttribute(NameOID.COMMON_NAME, f"bench-user-{i}")])
        if i % 2:
            key = rsa.generate_private_key(65537, 2048)  # a few distinct keys are enough
        out.append(
            x509.CertificateBuilder().subject_name(subject).issuer_name(issuer.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .sign(issuer_key, hashes.SHA256())  # type: ignore[arg-type]
        )
    return out


def setup(work: Path) -> dict[str, object]:
    ca_dir = work / "ca"
    # the port only goes into URLs in the certificates; nothing is served (offline CRLs)
    run([sys.executable, str(REPO / "sample-ca" / "sample_ca.py"), "init", str(ca_dir),
         "--port", "9"])
    tokens = work / "tokens"
    tokens.mkdir()
    conf = work / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n"
                    "log.level = ERROR\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    env = dict(os.environ)
    run(["softhsm2-util", "--init-token", "--free", "--label", "bench-card", "--so-pin",
         "12345678", "--pin", PIN], env)
    users = ca_dir / "users"
    der_dir = work / "der"
    der_dir.mkdir()
    key = serialization.load_pem_private_key((users / "alice.key").read_bytes(), None)
    cert = x509.load_pem_x509_certificate((users / "alice.pem").read_bytes())
    objects = {
        "privkey": key.private_bytes(serialization.Encoding.DER,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()),
        "pubkey": key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
        "cert": cert.public_bytes(serialization.Encoding.DER),
    }
    for kind, der in objects.items():
        path = der_dir / f"{kind}.der"
        path.write_bytes(der)
        run(["pkcs11-tool", "--module", MODULE, "--token-label", "bench-card", "--login",
             "--pin", PIN, "--write-object", str(path), "--type", kind, "--id", "01",
             "--label", "alice"], env)

    config = work / "config.toml"
    config.write_text(
        "[validation]\n"
        f'ca = ["{ca_dir / "ca-bundle.pem"}"]\nuntrusted = ["{ca_dir / "chain.pem"}"]\n'
        "[revocation]\n"
        f'policy = "hard-fail"\noffline = true\ncrl = ["{ca_dir / "crl"}"]\n'
        f'[tokens]\nproviders = ["{MODULE}"]\npin_cache = 3600\n'
    )
    db = f"sqlite:///{work / 'inventory.sqlite'}"

    from idm.identity.checker import CertificateChecker
    from idm.identity.config import load_config
    from idm.identity.inventory.store import Inventory
    from idm.identity.tokens.enroll import enroll_certificate, enroll_token
    from idm.identity.tokens.session import ProviderSet
    from idm.identity.tokens.uri import TokenIdentity

    inv = Inventory(db)
    checker = CertificateChecker.from_config(load_config(config), inv)
    ps = ProviderSet([MODULE])
    info = ps.tokens()[0]
    result = enroll_token(inv, checker, info, ps.open(info).certificates(), command="bench")
    assert [c.status for c in result.certificates] == ["approved"], result
    ghost = TokenIdentity("SoftHSM project", "SoftHSM v2", "0000000000000000", "ghost-card")
    for extra in extra_certificates(ca_dir, 49):
        res = enroll_certificate(inv, checker, ghost, extra, cka_id=b"\x09", command="bench")
        assert res.certificates[0].status == "approved", res
    inv.close()

    askpass = work / "askpass.sh"
    askpass.write_text(f"#!/bin/sh\necho {PIN}\n")
    askpass.chmod(0o700)
    return {"config": config, "db": db, "askpass": askpass,
            "plain": w.public_key_blob(cert.public_key())}  # type: ignore[arg-type]


# ------------------------------------------------------------------ measuring


def sign_times(agent: RawAgent, blob: bytes, n: int) -> list[float]:
    times = []
    for i in range(n):
        msg = p.SignRequest(blob, b"bench %d" % i + os.urandom(32), w.SIGN_RSA_SHA2_256).encode()
        t0 = time.perf_counter()
        body = agent.request(msg)
        times.append(time.perf_counter() - t0)
        if body[:1] != bytes([p.SSH_AGENT_SIGN_RESPONSE]):
            raise SystemExit(f"sign failed (response type {body[:1].hex()})")
    return times


def throughput(path: Path, blob: bytes, clients: int, seconds: float) -> float:
    """Signatures per second with ``clients`` connections signing at once."""
    conns = [RawAgent(path) for _ in range(clients)]
    counts = [0] * clients
    start = threading.Barrier(clients + 1)
    stop = threading.Event()
    errors: list[str] = []

    def worker(i: int) -> None:
        start.wait()
        n = 0
        while not stop.is_set():
            msg = p.SignRequest(blob, b"bench %d %d" % (i, n), w.SIGN_RSA_SHA2_256).encode()
            body = conns[i].request(msg)
            if body[:1] != bytes([p.SSH_AGENT_SIGN_RESPONSE]):
                errors.append(f"sign failed (response type {body[:1].hex()})")
                return
            n += 1
        counts[i] = n

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    for c in conns:
        c.close()
    if errors:
        raise SystemExit(errors[0])
    return sum(counts) / elapsed


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--signatures", type=int, default=500)
    ap.add_argument("--block", type=int, default=10)
    ap.add_argument("--lists", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    for tool in ("ssh-agent", "ssh-add", "softhsm2-util", "pkcs11-tool"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")

    work = Path(tempfile.mkdtemp(prefix="idm-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        s = setup(work)
        env = dict(os.environ, SSH_ASKPASS=str(s["askpass"]), SSH_ASKPASS_REQUIRE="force")
        env.pop("DISPLAY", None)

        ssh_sock = work / "ssh-agent.sock"
        procs.append(subprocess.Popen(["ssh-agent", "-D", "-a", str(ssh_sock)], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_socket(ssh_sock, procs[-1])
        run(["ssh-add", "-s", MODULE], dict(env, SSH_AUTH_SOCK=str(ssh_sock)),
            stdin=subprocess.DEVNULL)

        idm_sock = work / "idm.sock"
        base = [*IDM, "--config", str(s["config"]), "--db", str(s["db"]), "agent", "-D"]
        procs.append(subprocess.Popen([*base, "-a", str(idm_sock), "--only",
                                       "pkcs11:token=bench-card"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_socket(idm_sock, procs[-1])
        list_sock = work / "idm-50.sock"
        procs.append(subprocess.Popen([*base, "-a", str(list_sock)], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_socket(list_sock, procs[-1])

        plain = s["plain"]
        assert isinstance(plain, bytes)
        ssh, idm = RawAgent(ssh_sock), RawAgent(idm_sock)
        deadline = time.monotonic() + 30
        while plain not in idm.identities():
            if time.monotonic() > deadline:
                raise SystemExit("idm agent does not list alice's key")
            time.sleep(0.1)
        if plain not in ssh.identities():
            raise SystemExit("ssh-agent does not list alice's key")
        sign_times(ssh, plain, 5)  # warm-up; idm logs in (askpass) on its first signature
        sign_times(idm, plain, 5)

        t_ssh: list[float] = []
        t_idm: list[float] = []
        pair_ratios: list[float] = []
        done = 0
        while done < args.signatures:
            n = min(args.block, args.signatures - done)
            block_ssh = sign_times(ssh, plain, n)
            block_idm = sign_times(idm, plain, n)
            t_ssh += block_ssh
            t_idm += block_idm
            pair_ratios.append(statistics.median(block_idm) / statistics.median(block_ssh))
            done += n

        rates_ssh: list[float] = []
        rates_idm: list[float] = []
        for _ in range(args.rounds):
            rates_ssh.append(throughput(ssh_sock, plain, args.clients, args.seconds))
            rates_idm.append(throughput(idm_sock, plain, args.clients, args.seconds))

        lister = RawAgent(list_sock)
        deadline = time.monotonic() + 60
        while len(lister.identities()) < 100:
            if time.monotonic() > deadline:
                raise SystemExit(f"idm agent lists {len(lister.identities())} blobs, not 100")
            time.sleep(0.1)
        msg = p.RequestIdentities().encode()
        t_list = []
        for _ in range(args.lists):
            t0 = time.perf_counter()
            lister.request(msg)
            t_list.append(time.perf_counter() - t0)

        def ms(x: float) -> str:
            return f"{x * 1000:.3f} ms"

        print(f"signatures: {args.signatures} per agent, rsa-sha2-256, RSA-2048 on SoftHSM2, "
              f"alternating blocks of {args.block}")
        print("| agent | median | p90 |")
        print("|---|---|---|")
        for name, t in (("OpenSSH ssh-agent (ssh-add -s)", t_ssh), ("idm agent", t_idm)):
            print(f"| {name} | {ms(statistics.median(t))} | {ms(percentile(t, 0.9))} |")
        ratio = statistics.median(t_idm) / statistics.median(t_ssh)
        print(f"median ratio idm / ssh-agent: {ratio:.2f} (goal <= 1.00); median of the "
              f"{len(pair_ratios)} block-pair ratios: {statistics.median(pair_ratios):.2f}")
        per_round = ", ".join(f"{i / s:.2f}" for i, s in zip(rates_idm, rates_ssh, strict=True))
        print(f"throughput, {args.clients} clients signing at once, {args.rounds} rounds of "
              f"{args.seconds:g} s per agent: ssh-agent median "
              f"{statistics.median(rates_ssh):.0f}/s, idm agent median "
              f"{statistics.median(rates_idm):.0f}/s; ratio idm / ssh-agent "
              f"{statistics.median(rates_idm) / statistics.median(rates_ssh):.2f} "
              f"(per round: {per_round})")
        print(f"listing 50 approved certificates (100 blobs on the standard socket), "
              f"{args.lists} requests: median {ms(statistics.median(t_list))}, "
              f"p90 {ms(percentile(t_list, 0.9))} (goal <= 2 ms)")
        ssh.close()
        idm.close()
        lister.close()
    finally:
        stop_processes(procs)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
