"""`idm refresh`, the X.509 path of the helper, `idm allow`, and a fleet on PostgreSQL.

Configurations and snapshots live in ``safe_tmp`` (root-owned, 0755 up to /), not in
pytest's tmp_path under the world-writable /tmp: the helper refuses those (StrictModes).
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from sample_ca_fixture import SampleCA, make_sample_ca, serving

from idm.identity import sshwire as w
from idm.identity.inventory.store import Inventory
from idm.identity.server.snapshot import Snapshot, SnapshotError
from tests.server.helpers import (
    enroll,
    helper,
    idm,
    load_cert,
    plain_pub_line,
    safe_folder,
    write_config,
)


@pytest.fixture(scope="module")
def ca() -> Iterator[SampleCA]:
    # In a safe folder: the helper reads the CA bundle under StrictModes too.
    folder = safe_folder()
    try:
        ca = make_sample_ca(folder)
        with serving(ca):
            yield ca
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def setup(safe_tmp: Path, ca: SampleCA, db: str | None = None, name: str = "srv",
          **kw: object) -> Path:
    db = db or f"sqlite:///{safe_tmp / 'inventory.sqlite'}"
    return write_config(safe_tmp / f"{name}.toml", ca=ca.ca_bundle, untrusted=ca.chain,
                        snapshot=safe_tmp / name / "snapshot.sqlite", db=db, **kw)  # type: ignore[arg-type]


def login_line(cfg: Path, user: str, cert: Path) -> subprocess.CompletedProcess[str]:
    key_type, b64 = plain_pub_line(cert).split()[:2]
    return helper("--config", str(cfg), user, key_type, b64)


def test_refresh_updates_statuses_events_and_snapshot(safe_tmp: Path, ca: SampleCA) -> None:
    cfg = setup(safe_tmp, ca)
    inv = Inventory(f"sqlite:///{safe_tmp / 'inventory.sqlite'}")
    good = enroll(inv, ca.user("r-good"))
    gone = enroll(inv, ca.user("r-gone"))
    old = enroll(inv, ca.user("r-old", "--not-before", "-3d", "--not-after", "-1d"))
    odd = enroll(inv, ca.user("r-odd", "--no-email", "--cn", "Odd Person"))
    ca.revoke(ca.user_cert("r-gone"), reason="keyCompromise")

    proc = idm("refresh", "--json", config=cfg)
    import json

    result = json.loads(proc.stdout)
    assert result["checked"] == 4 and result["authorized"] == 1
    statuses = {c["certificate"]: c["status"] for c in result["changes"]}
    assert statuses == {gone.sha256: "revoked", old.sha256: "expired"}
    assert [c["certificate"] for c in result["left_out"]] == [odd.sha256]  # unmapped
    assert inv.certificate(gone.sha256).status == "revoked"  # type: ignore[union-attr]
    assert inv.certificate(old.sha256).status == "expired"  # type: ignore[union-attr]
    assert inv.certificate(good.sha256).verdict_status == "valid"  # type: ignore[union-attr]
    assert [e.kind for e in inv.events(gone.sha256)][-1] == "revoked"

    assert login_line(cfg, "r-good", ca.user_cert("r-good")).returncode == 0
    denied = login_line(cfg, "r-gone", ca.user_cert("r-gone"))
    assert denied.returncode == 1 and "is revoked" in denied.stderr
    assert login_line(cfg, "r-old", ca.user_cert("r-old")).returncode == 1
    inv.close()


def test_responder_down_keeps_cached_status_but_new_certificates_wait(
    safe_tmp: Path, ca: SampleCA
) -> None:
    # A CA of its own, so its server can be stopped without disturbing the other tests.
    own = make_sample_ca(safe_tmp, subdir="own-ca")
    cfg = setup(safe_tmp, own)
    inv = Inventory(f"sqlite:///{safe_tmp / 'inventory.sqlite'}")
    with serving(own):
        enroll(inv, own.user("k-first"))
        idm("refresh", config=cfg)
    late = enroll(inv, own.user("k-late"))
    proc = idm("refresh", "--json", config=cfg, check=False)  # OCSP and CRL now unreachable
    assert proc.returncode == 3  # k-late could not be checked
    out = proc.stdout
    assert '"authorized":1' in out
    assert login_line(cfg, "k-first", own.user_cert("k-first")).returncode == 0
    assert login_line(cfg, "k-late", own.user_cert("k-late")).returncode == 1
    rec = inv.certificate(late.sha256)
    assert rec is not None and rec.status == "approved"  # not rejected for an outage
    assert rec.verdict_status == "revocation-unknown"
    inv.close()


def test_refresh_with_unreachable_database_keeps_the_old_snapshot(
    safe_tmp: Path, ca: SampleCA
) -> None:
    cfg = setup(safe_tmp, ca)
    inv = Inventory(f"sqlite:///{safe_tmp / 'inventory.sqlite'}")
    enroll(inv, ca.user("d-user"))
    idm("refresh", config=cfg)
    before = (safe_tmp / "srv" / "snapshot.sqlite").read_bytes()
    dead = "postgresql+psycopg://idm@127.0.0.1:1/idm?connect_timeout=2"
    proc = idm("refresh", config=cfg, db=dead, check=False)
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("idm: error: refresh failed: cannot open the inventory")
    assert "previous snapshot stays in place, valid until" in line
    assert (safe_tmp / "srv" / "snapshot.sqlite").read_bytes() == before
    assert login_line(cfg, "d-user", ca.user_cert("d-user")).returncode == 0
    inv.close()


@pytest.mark.postgres
def test_fleet_two_servers_one_postgresql_inventory(
    safe_tmp: Path, ca: SampleCA, postgres_url: str
) -> None:
    cfg_a = setup(safe_tmp, ca, db=postgres_url, name="server-a", mapping=("email",))
    cfg_b = setup(safe_tmp, ca, db=postgres_url, name="server-b", mapping=("principals",))
    inv = Inventory(postgres_url)
    cert = ca.user("fleet-user")
    enroll(inv, cert)
    idm("allow", "ops", "--subject", "CN=fleet-user, O=idm demo, C=XX", config=cfg_b)
    idm("refresh", config=cfg_a)
    idm("refresh", config=cfg_b)
    # Same inventory, each server its own mapping and snapshot.
    assert login_line(cfg_a, "fleet-user", cert).returncode == 0
    assert login_line(cfg_a, "ops", cert).returncode == 1
    assert login_line(cfg_b, "ops", cert).returncode == 0
    assert login_line(cfg_b, "fleet-user", cert).returncode == 1

    # The database goes away: refreshes fail with one line, logins go on from the
    # snapshot until its deadline, then stop.
    dead = "postgresql+psycopg://idm@127.0.0.1:1/idm?connect_timeout=2"
    for cfg in (cfg_a, cfg_b):
        proc = idm("refresh", config=cfg, db=dead, check=False)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
        assert "valid until" in proc.stderr
    assert login_line(cfg_a, "fleet-user", cert).returncode == 0
    assert login_line(cfg_b, "ops", cert).returncode == 0
    with Snapshot(safe_tmp / "server-a" / "snapshot.sqlite") as snap:
        deadline = snap.info.deadline
        assert deadline == snap.info.written_at + 3600
    with pytest.raises(SnapshotError, match="stale"):
        Snapshot(safe_tmp / "server-a" / "snapshot.sqlite", now=deadline).check_fresh()

    # Revocation recorded by one server reaches the other through the shared inventory.
    ca.revoke(cert)
    idm("refresh", config=cfg_a)
    idm("refresh", config=cfg_b)
    assert login_line(cfg_b, "ops", cert).returncode == 1
    inv.close()


def test_allow_validates_and_removes(safe_tmp: Path, ca: SampleCA) -> None:
    cfg = setup(safe_tmp, ca)
    proc = idm("allow", "root", "--subject", "CN=x,=bad", config=cfg, check=False)
    assert proc.returncode == 2 and "not a distinguished name" in proc.stderr
    proc = idm("allow", "root", config=cfg, check=False)
    assert proc.returncode == 2 and "exactly one of" in proc.stderr
    proc = idm("allow", "bad user", "--principal", "x", config=cfg, check=False)
    assert proc.returncode == 2
    assert "added" in idm("allow", "root", "--principal", "p@example.org", config=cfg).stdout
    assert "already" in idm("allow", "root", "--principal", "p@example.org", config=cfg).stdout
    out = idm("allow", "root", "--principal", "p@example.org", "--remove", config=cfg).stdout
    assert "removed" in out


# -- the X.509 path (PKIX-SSH's sshd passes the certificate) ------------------------------


def x509_args(cert: Path, form: str) -> tuple[str, str]:
    c = load_cert(cert)
    if form == "legacy":
        return "x509v3-sign-rsa", base64.b64encode(c.public_bytes(Encoding.DER)).decode()
    chain = [c, load_cert(Path(str(cert).replace(".pem", "-chain.pem")))]
    key = w.KeyBlob.rfc6187(chain[:1])
    return key.algorithm, base64.b64encode(key.blob).decode()


@pytest.mark.parametrize("form", ["legacy", "rfc6187"])
def test_x509_path_validates_maps_and_prints_the_certificate_line(
    safe_tmp: Path, ca: SampleCA, form: str
) -> None:
    cfg = setup(safe_tmp, ca)
    Inventory(f"sqlite:///{safe_tmp / 'inventory.sqlite'}").close()
    idm("refresh", config=cfg)  # an empty inventory: the snapshot only carries metadata
    cert = ca.user(f"x-{form}")  # never enrolled: a new card works with no server change
    key_type, b64 = x509_args(cert, form)
    proc = helper("--config", str(cfg), f"x-{form}", key_type, b64)
    assert proc.returncode == 0, proc.stderr
    [line] = proc.stdout.splitlines()
    parsed = w.parse_public_key_line(line)
    assert parsed.options[0].startswith("expiry-time=")
    assert parsed.key.chain[0] == load_cert(cert).public_bytes(Encoding.DER)

    wrong_user = helper("--config", str(cfg), "someone-else", key_type, b64)
    assert wrong_user.returncode == 1 and "not to someone-else" in wrong_user.stderr

    ca.revoke(cert)
    revoked = helper("--config", str(cfg), f"x-{form}", key_type, b64)
    assert revoked.returncode == 1 and "revoked" in revoked.stderr


def test_x509_path_refuses_superseded_and_untrusted(safe_tmp: Path, ca: SampleCA) -> None:
    cfg = setup(safe_tmp, ca)
    inv = Inventory(f"sqlite:///{safe_tmp / 'inventory.sqlite'}")
    cert = ca.user("x-super")
    enroll(inv, cert, status="superseded")
    idm("refresh", config=cfg)
    proc = helper("--config", str(cfg), "x-super", *x509_args(cert, "legacy"))
    assert proc.returncode == 1 and "superseded in the inventory" in proc.stderr

    other = make_sample_ca(safe_tmp, subdir="stranger-ca")
    stranger = other.user("x-stranger")
    proc = helper("--config", str(cfg), "x-stranger", *x509_args(stranger, "legacy"))
    assert proc.returncode == 1 and "untrusted" in proc.stderr
    inv.close()


def test_x509_path_refuses_an_anchor_file_others_can_write(safe_tmp: Path, ca: SampleCA) -> None:
    """Whoever can write a trust anchor adds a CA: the helper applies StrictModes to it."""
    anchors = safe_tmp / "anchors"
    anchors.mkdir()
    bundle = anchors / "ca.pem"
    shutil.copyfile(ca.ca_bundle, bundle)
    bundle.chmod(0o644)
    cfg = write_config(safe_tmp / "srv.toml", ca=bundle, untrusted=ca.chain,
                       snapshot=safe_tmp / "srv" / "snapshot.sqlite",
                       db=f"sqlite:///{safe_tmp / 'inventory.sqlite'}")
    Inventory(f"sqlite:///{safe_tmp / 'inventory.sqlite'}").close()
    idm("refresh", config=cfg)
    cert = ca.user("x-anchor")
    args = ("--config", str(cfg), "x-anchor", *x509_args(cert, "legacy"))
    proc = helper(*args)
    assert proc.returncode == 0, proc.stderr
    for damage, words in [
        (lambda: bundle.chmod(0o664), ("the file is writable by group or others (mode 0664)",)),
        (lambda: anchors.chmod(0o777), ("folder", str(anchors), "(mode 0777)")),
    ]:
        bundle.chmod(0o644)
        damage()
        proc = helper(*args)
        assert proc.returncode == 1 and proc.stdout == "", proc.stderr
        [line] = proc.stderr.splitlines()
        assert "DENY: configuration: " in line and str(bundle) in line, line
        assert "refused by StrictModes" in line and all(w in line for w in words), line


def test_x509_path_refuses_a_crl_file_others_can_write(safe_tmp: Path, ca: SampleCA) -> None:
    """Whoever can write a CRL file can put back an older one, dropping a revocation: the
    helper applies StrictModes to the configured CRL files too."""
    crls = safe_tmp / "crls"
    crls.mkdir()
    crl = crls / "intermediate.crl"
    shutil.copyfile(ca.crl_intermediate, crl)
    crl.chmod(0o644)
    cfg = write_config(safe_tmp / "srv.toml", ca=ca.ca_bundle, untrusted=ca.chain, crl=crl,
                       snapshot=safe_tmp / "srv" / "snapshot.sqlite",
                       db=f"sqlite:///{safe_tmp / 'inventory.sqlite'}")
    Inventory(f"sqlite:///{safe_tmp / 'inventory.sqlite'}").close()
    idm("refresh", config=cfg)
    args = ("--config", str(cfg), "x-crl", *x509_args(ca.user("x-crl"), "legacy"))
    assert helper(*args).returncode == 0
    crl.chmod(0o664)
    proc = helper(*args)
    assert proc.returncode == 1 and proc.stdout == "", proc.stderr
    [line] = proc.stderr.splitlines()
    assert str(crl) in line and "refused by StrictModes" in line, line


@pytest.mark.parametrize(("key", "x509_types"), [
    ("rsa2048", ["x509v3-sign-rsa", "x509v3-ssh-rsa", "x509v3-rsa2048-sha256"]),
    ("ec-p256", ["x509v3-ecdsa-sha2-nistp256"]),
    ("ec-p384", ["x509v3-ecdsa-sha2-nistp384"]),
])
def test_pkixssh_x509_type_with_the_plain_key(safe_tmp: Path, ca: SampleCA, key: str,
                                              x509_types: list[str]) -> None:
    """PKIX-SSH's sshd: %t an X.509 type, %k the plain key; only a valid, mapped one passes."""
    cfg = setup(safe_tmp, ca)
    inv = Inventory(f"sqlite:///{safe_tmp / 'inventory.sqlite'}")
    name = f"pk-{key}"
    good = ca.user(name, "--key", key)
    lost = ca.user(f"{name}-lost", "--key", key)
    old = ca.user(f"{name}-old", "--key", key, "--not-before", "-3d", "--not-after", "-1d")
    replaced = ca.user(f"{name}-replaced", "--key", key)
    for cert in (good, lost, old):
        enroll(inv, cert)
    enroll(inv, replaced, status="superseded")
    ca.revoke(lost, reason="keyCompromise")
    idm("refresh", config=cfg)

    def ask(user: str, x509_type: str, cert: Path) -> subprocess.CompletedProcess[str]:
        return helper("--config", str(cfg), user, x509_type, plain_pub_line(cert).split()[1])

    der = load_cert(good).public_bytes(Encoding.DER)
    for x509_type in x509_types:
        proc = ask(name, x509_type, good)
        assert proc.returncode == 0, proc.stderr
        [line] = proc.stdout.splitlines()
        parsed = w.parse_public_key_line(line)
        # the certificate under PKIX-SSH's raw-DER name, whatever X.509 type sshd passed
        assert line.split()[1] == w.KeyBlob.raw_der(der).algorithm
        assert parsed.key.chain[0] == der and parsed.options[0].startswith("expiry-time=")
    x509_type = x509_types[0]
    for user, cert, why in [
        ("someone-else", good, "not to someone-else"),
        (f"{name}-lost", lost, "is revoked"),
        (f"{name}-old", old, "is expired"),
        (f"{name}-replaced", replaced, "is superseded"),
    ]:
        proc = ask(user, x509_type, cert)
        assert proc.returncode == 1 and proc.stdout == "", proc.stdout
        assert why in proc.stderr, proc.stderr
    inv.close()


def test_principals_dir_maps_without_touching_the_inventory(safe_tmp: Path, ca: SampleCA) -> None:
    pdir = safe_tmp / "principals"
    pdir.mkdir()
    (pdir / "deploy").write_text("# the deploy account\nCN=p-user, O=idm demo, C=XX\n")
    cfg = setup(safe_tmp, ca, principals_dir=pdir)
    inv = Inventory(f"sqlite:///{safe_tmp / 'inventory.sqlite'}")
    cert = ca.user("p-user")
    enroll(inv, cert)
    idm("refresh", config=cfg)
    assert login_line(cfg, "deploy", cert).returncode == 0
    # "principals" named a user, so the later rules (email → p-user) are not consulted.
    assert login_line(cfg, "p-user", cert).returncode == 1

    (pdir / "deploy").write_text("CN=p-user,=broken\n")
    proc = idm("refresh", config=cfg, check=False)
    assert proc.returncode == 2 and "not a distinguished name" in proc.stderr
    assert login_line(cfg, "deploy", cert).returncode == 0  # the old snapshot stays
    inv.close()


def test_refresh_notices_a_superseded_card_being_revoked(safe_tmp: Path, ca: SampleCA) -> None:
    cfg = setup(safe_tmp, ca)
    inv = Inventory(f"sqlite:///{safe_tmp / 'inventory.sqlite'}")
    lost = enroll(inv, ca.user("s-lost"), status="superseded")
    kept = enroll(inv, ca.user("s-kept"), status="superseded")
    ca.revoke(ca.user_cert("s-lost"), reason="keyCompromise")
    import json

    result = json.loads(idm("refresh", "--json", config=cfg).stdout)
    assert {c["certificate"]: c["status"] for c in result["changes"]} == {lost.sha256: "revoked"}
    assert inv.certificate(lost.sha256).status == "revoked"  # type: ignore[union-attr]
    assert inv.certificate(kept.sha256).status == "superseded"  # type: ignore[union-attr]
    assert [e.kind for e in inv.events(lost.sha256)][-1] == "revoked"
    inv.close()
