"""Revocation against real servers: sample-ca's CRL/OCSP server, and `openssl ocsp`.

`openssl ocsp -port` binds every interface, so it runs inside a private network
namespace (`unshare -n`) together with the `idm verify` process that queries it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cryptography import x509

from idm.validator.api import validate
from idm.validator.bundle import load_bundle, load_certificate_file
from idm.validator.policy import Policy
from idm.validator.revocation.fetch import Fetcher
from idm.validator.revocation.store import MemoryRevocationStore
from tests.sample_ca_fixture import SampleCA, make_sample_ca, serving

FAST = Fetcher(connect_timeout=1.0, read_timeout=5.0)
IDM = [
    sys.executable,
    "-c",
    "from idm.cli.main import COMMANDS, run; "
    "COMMANDS.setdefault('verify', 'idm.cli.verify:verify'); run()",
]


def _check(ca: SampleCA, name: str, policy: Policy, store=None, crls=()):
    leaf, extra = load_certificate_file(ca.user_cert(name))
    return validate(
        leaf,
        anchors=load_bundle([ca.ca_bundle]),
        intermediates=[*extra, *load_bundle([ca.chain])],
        policy=policy,
        fetcher=FAST,
        store=store or MemoryRevocationStore(),
        crls=crls,
    )


def test_ocsp_and_crl_from_sample_ca_server(tmp_path):
    ca = make_sample_ca(tmp_path)
    ca.user("crlonly", "--no-ocsp")
    with serving(ca):
        v = _check(ca, "alice", Policy(revocation="require"))
        assert v.status == "valid", v.reason
        sources = {(e.subject.split(",")[0], e.source, e.status) for e in v.revocation}
        assert ("CN=alice", "ocsp", "good") in sources
        v = _check(ca, "crlonly", Policy(revocation="hard-fail"))
        assert v.status == "valid", v.reason
        assert ("crl", "good") in {(e.source, e.status) for e in v.revocation}
        assert any(e.url == ca.crl_url("intermediate") for e in v.revocation)

        ca.revoke(ca.user_cert("alice"), reason="keyCompromise")
        ca.revoke(ca.user_cert("crlonly"))
        v = _check(ca, "alice", Policy(revocation="soft-fail"))
        assert v.status == "revoked" and "OCSP" in v.reason
        v = _check(ca, "crlonly", Policy(revocation="soft-fail"))
        assert v.status == "revoked" and "CRL" in v.reason
    # server stopped: hard-fail cannot get status for bob (fresh store), soft-fail can go on
    assert _check(ca, "bob", Policy()).status == "revocation-unknown"
    assert _check(ca, "bob", Policy(revocation="soft-fail")).status == "valid"
    # the CRL files alone, offline, still say alice is revoked
    crls = [ca.crl_intermediate.read_bytes(), ca.crl_root.read_bytes()]
    v = _check(ca, "alice", Policy(offline=True), crls=crls)
    assert v.status == "revoked" and "key_compromise" in v.reason


def _index_line(cert: x509.Certificate, revoked: bool) -> str:
    exp = cert.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
    rev = (
        (cert.not_valid_before_utc.strftime("%y%m%d%H%M%SZ") + ",keyCompromise") if revoked else ""
    )
    serial = format(cert.serial_number, "X")
    serial = ("0" + serial) if len(serial) % 2 else serial
    dn = "/" + "/".join(reversed(cert.subject.rfc4514_string().split(",")))
    return "\t".join(["R" if revoked else "V", exp, rev, serial, "unknown", dn]) + "\n"


def _can_unshare() -> str | None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip not installed"
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"unshare -n failed: {probe.stderr.strip()}"
    return None


def test_openssl_ocsp_responder_in_private_netns(tmp_path):
    why = _can_unshare()
    if why:
        pytest.skip(f"cannot create a private network namespace: {why}")
    ca = make_sample_ca(tmp_path)
    good = ca.user("good", "--no-ocsp", "--no-cdp")
    bad = ca.user("bad", "--no-ocsp", "--no-cdp")
    bad_cert, _ = load_certificate_file(bad)
    good_cert, _ = load_certificate_file(good)
    index = tmp_path / "index.txt"
    index.write_text(_index_line(good_cert, False) + _index_line(bad_cert, True))
    port = 8888
    script = tmp_path / "run.sh"
    verify = shlex.join(IDM)
    script.write_text(
        textwrap.dedent(f"""\
        set -e
        ip link set lo up
        openssl ocsp -index {index} -port {port} -rsigner {ca.ocsp} -rkey {ca.ocsp_key} \\
            -CA {ca.intermediate} -nmin 10 >{tmp_path}/ocsp.log 2>&1 &
        OCSP_PID=$!
        for i in $(seq 1 100); do
            # wait for the listening socket without connecting (a probe connection
            # would tie up the single-threaded responder)
            if grep -qi ":{port:04X} [0-9A-F:]* 0A" /proc/net/tcp /proc/net/tcp6; then break; fi
            sleep 0.05
        done
        set +e
        {verify} verify --no-cache --ca {ca.ca_bundle} --untrusted {ca.chain} \\
            --crl {ca.crl_root} --ocsp-url http://127.0.0.1:{port}/ --revocation require \\
            --json {good} {bad}
        echo "rc=$?"
        kill $OCSP_PID; wait $OCSP_PID 2>/dev/null || true
        """)
    )
    env = dict(os.environ)
    proc = subprocess.run(
        ["unshare", "-n", "bash", str(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert proc.stdout.strip().endswith("rc=1"), proc.stdout + proc.stderr
    by_target = {Path(x["target"]).name: x for x in lines}
    assert by_target["good.pem"]["status"] == "valid", by_target
    assert by_target["bad.pem"]["status"] == "revoked", by_target
    ocsp_ev = [e for e in by_target["good.pem"]["revocation"] if e["source"] == "ocsp"]
    assert ocsp_ev and ocsp_ev[0]["status"] == "good"
    assert ocsp_ev[0]["url"] == f"http://127.0.0.1:{port}/"
