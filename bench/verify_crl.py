#!/usr/bin/env python3
"""Benchmark: `idm verify` against `openssl verify` on a 200,000-entry CRL.

    python bench/verify_crl.py [--runs N] [--entries N] [--idm CMD]

Compares, in the same run, whole processes:

    openssl verify -crl_check -CAfile ca.pem -CRLfile big.crl leaf.pem
    idm verify --ca ca.pem --crl big.crl leaf.pem

cold: a new inventory per run whose schema was created beforehand with `idm db upgrade`
(untimed) and which holds no revocation data and no validated path: the CRL is parsed,
signature-checked and stored, the path is validated with pyhanko-certvalidator, and the
serials of a CRL this large are indexed by a detached background process after the
verdict is printed;
index: the bench then waits until that inventory reports the CRL indexed (untimed for
idm, reported: the time from the end of the cold run until the index is complete);
warm: the same inventory again (the CRL is recognised by its SHA-256, the path by the
validated-path cache, the serial is one indexed lookup).
openssl runs in the same loop, so all three see the same machine load. Before timing,
idm's own modules are byte-compiled (`compileall`, as an installed wheel is): with
PYTHONDONTWRITEBYTECODE set, a source tree with stale bytecode would otherwise be
compiled again on every run. The PKI and the
CRL are generated once and cached in $XDG_CACHE_HOME/idm-bench (default
~/.cache/idm-bench); the CRL is DER-encoded by hand here because `cryptography`'s CRL
builder is quadratic in the number of entries. Prints the median times and the ratios.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ECDSA_SHA256 = bytes.fromhex("300a06082a8648ce3d040302")
CRL_NUMBER_OID = bytes.fromhex("0603551d14")
FIRST_SERIAL = 0x1000000


def _len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _len(len(body)) + body


def _int(n: int) -> bytes:
    body = n.to_bytes(n.bit_length() // 8 + 1, "big")
    return _tlv(0x02, body)


def _utc(t: dt.datetime) -> bytes:
    return _tlv(0x17, t.strftime("%y%m%d%H%M%SZ").encode())


def big_crl(ca: x509.Certificate, key: ec.EllipticCurvePrivateKey, entries: int) -> bytes:
    """A DER CRL from `ca` listing `entries` serials FIRST_SERIAL, FIRST_SERIAL+2, ..."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    when = _utc(now - dt.timedelta(days=1))
    revoked = b"".join(_tlv(0x30, _int(FIRST_SERIAL + 2 * i) + when) for i in range(entries))
    number_ext = _tlv(0x30, CRL_NUMBER_OID + _tlv(0x04, _int(1)))
    tbs = _tlv(
        0x30,
        _int(1)
        + ECDSA_SHA256
        + ca.subject.public_bytes()
        + _utc(now - dt.timedelta(hours=1))
        + _utc(now + dt.timedelta(days=30))
        + _tlv(0x30, revoked)
        + _tlv(0xA0, _tlv(0x30, number_ext)),
    )
    signature = key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    return _tlv(0x30, tbs + ECDSA_SHA256 + _tlv(0x03, b"\x00" + signature))


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    serial: int,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - dt.timedelta(days=2))
        .not_valid_after(now + dt.timedelta(days=365))
    )
    if issuer is None:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        b = b.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
        b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    else:
        b = b.add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
        b = b.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()), False
        )
    return b.sign(issuer[1] if issuer else key, hashes.SHA256())


def prepare(directory: Path, entries: int) -> Path:
    """Create (once) ca.pem, big.crl, leaf.pem (good) and revoked.pem in `directory`."""
    d = directory / f"crl-{entries}"
    if (d / "big.crl").exists():
        crl = x509.load_der_x509_crl((d / "big.crl").read_bytes())
        if crl.next_update_utc and crl.next_update_utc > dt.datetime.now(dt.UTC) + dt.timedelta(
            days=1
        ):
            return d
    d.mkdir(parents=True, exist_ok=True)
    print(f"generating a {entries}-entry CRL in {d} ...", file=sys.stderr)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("idm bench CA", ca_key, None, 1)
    leaf = _cert("bench good", ec.generate_private_key(ec.SECP256R1()), (ca, ca_key), 3)
    bad = _cert(
        "bench revoked", ec.generate_private_key(ec.SECP256R1()), (ca, ca_key), FIRST_SERIAL + 2
    )
    pem = serialization.Encoding.PEM
    (d / "ca.pem").write_bytes(ca.public_bytes(pem))
    (d / "leaf.pem").write_bytes(leaf.public_bytes(pem))
    (d / "revoked.pem").write_bytes(bad.public_bytes(pem))
    (d / "big.crl").write_bytes(big_crl(ca, ca_key, entries))
    return d


def _time(cmd: list[str], env: dict[str, str], expect: set[int]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode not in expect:
        raise SystemExit(f"{shlex.join(cmd)} exited {proc.returncode}: {proc.stdout}{proc.stderr}")
    return elapsed


def wait_indexed(db: Path, timeout: float = 120.0) -> float:
    """Seconds until the SQLite inventory `db` holds the CRL with its serials indexed."""
    start = time.perf_counter()
    while True:
        conn = sqlite3.connect(db, timeout=30)
        try:
            held, left = conn.execute(
                "SELECT COUNT(*), COUNT(*) - SUM(indexed) FROM crls"
            ).fetchone()
        finally:
            conn.close()
        if held and left == 0:
            return time.perf_counter() - start
        if time.perf_counter() - start > timeout:
            raise SystemExit(f"{db}: CRL still not indexed after {timeout:.0f} s")
        time.sleep(0.02)


def default_idm() -> list[str]:
    idm = Path(sys.executable).with_name("idm")
    probe = subprocess.run([str(idm), "verify", "--help"], capture_output=True)
    if probe.returncode == 0:
        return [str(idm)]
    # `verify` not registered in cli/main.py yet: register it for this process only.
    code = (
        "from idm.cli.main import COMMANDS, run; "
        "COMMANDS.setdefault('verify', 'idm.cli.verify:verify'); run()"
    )
    return [sys.executable, "-c", code]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--entries", type=int, default=200_000)
    ap.add_argument("--idm", help="command to run idm (default: the venv's idm)")
    args = ap.parse_args()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "idm-bench"
    d = prepare(cache, args.entries)
    idm = shlex.split(args.idm) if args.idm else default_idm()
    root = Path(__file__).resolve().parent.parent
    subprocess.run(
        [
            sys.executable,
            "-m",
            "compileall",
            "-q",
            *(str(root / p) for p in ("identity", "validator", "cli")),
        ],
        check=True,
        capture_output=True,
    )
    work = Path(tempfile.mkdtemp(prefix="idm-bench-"))
    env = dict(os.environ)
    for var in ("IDM_CONFIG",):
        env.pop(var, None)
    env["XDG_CONFIG_HOME"] = str(work / "config")
    ca, crl = str(d / "ca.pem"), str(d / "big.crl")
    rows = []
    try:
        for target, ok in (("leaf.pem", 0), ("revoked.pem", 1)):
            leaf = str(d / target)
            openssl = ["openssl", "verify", "-crl_check", "-CAfile", ca, "-CRLfile", crl, leaf]
            verify = [*idm, "verify", "--ca", ca, "--crl", crl, leaf]
            ssl_t, cold_t, index_t, warm_t = [], [], [], []
            for run in range(args.runs):
                db = work / f"{target}-{run}.sqlite"
                env["IDM_DB"] = f"sqlite:///{db}"
                subprocess.run([*idm, "db", "upgrade"], env=env, check=True, capture_output=True)
                ssl_t.append(_time(openssl, env, {0} if ok == 0 else {2}))
                cold_t.append(_time(verify, env, {ok}))
                index_t.append(wait_indexed(db))
                warm_t.append(_time(verify, env, {ok}))
                ssl_t.append(_time(openssl, env, {0} if ok == 0 else {2}))
                warm_t.append(_time(verify, env, {ok}))
            o, c, i, w = (statistics.median(x) for x in (ssl_t, cold_t, index_t, warm_t))
            rows.append((target, o, c, i, w))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"CRL: {args.entries} entries, {(d / 'big.crl').stat().st_size} bytes; "
        f"medians of {args.runs} cold and {2 * args.runs} warm / openssl runs; "
        f"idm: {shlex.join(idm[:1])}; load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"{'target':<12} {'openssl':>8} {'idm cold':>9} {'bg index':>9} {'idm warm':>9} "
        f"{'cold/openssl':>13} {'warm/openssl':>13}"
    )
    for target, o, c, i, w in rows:
        print(f"{target:<12} {o:8.3f} {c:9.3f} {i:9.3f} {w:9.3f} {c / o:13.2f} {w / o:13.2f}")
    print("bg index: wait after the cold run until the background indexer finished")


if __name__ == "__main__":
    main()
