"""`idm tokens` and `idm objects` against SoftHSM2 tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.softhsm import SOFTHSM_MODULE, SoftHSM, softhsm, softhsm_second

__all__ = ["softhsm", "softhsm_second"]

pytestmark = pytest.mark.softhsm


def test_tokens_lists_both_modules_with_pin_state(
    idm, softhsm: SoftHSM, softhsm_second: SoftHSM
) -> None:
    softhsm.init_token("card-a", pin="1111")
    softhsm_second.init_token("card-b", pin="2222")
    assert idm("db", "upgrade")[0] == 0
    code, out, err = idm("tokens", "--provider", softhsm_second.module, "--json")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert {r["label"]: r["module"] for r in rows} == {
        "card-a": SOFTHSM_MODULE,
        "card-b": softhsm_second.module,
    }
    assert all(r["pin_state"] == "ok" and r["inventory"] == "unknown" for r in rows)
    assert rows[0]["uri"].startswith("pkcs11:token=card-a;manufacturer=SoftHSM%20project;")

    code, out, _ = idm("tokens", "--provider", softhsm_second.module)
    assert code == 0
    header, *lines = out.splitlines()
    assert header.split() == ["URI", "LABEL", "MANUFACTURER", "MODEL", "SERIAL", "PIN", "INVENTORY"]
    assert len(lines) == 2


def test_tokens_reports_a_bad_provider_in_one_line(idm, tmp_path: Path) -> None:
    code, _, err = idm("tokens", "--provider", str(tmp_path / "missing.so"))
    assert code == 2
    assert (
        err.strip() == f"idm: error: PKCS#11 provider {tmp_path / 'missing.so'}: "
        "No such file or directory"
    )


def test_objects_shows_pairs_fingerprints_and_uris(idm, softhsm: SoftHSM, tmp_path: Path) -> None:
    from tests.sample_ca_fixture import make_sample_ca

    a = softhsm.init_token("card-a", pin="1111")
    ca = make_sample_ca(tmp_path)
    softhsm.import_private_key(a, ca.user_key("alice"), key_id=b"\x01", label="alice")
    softhsm.import_certificate(a, ca.user_cert("alice"), key_id=b"\x01", label="alice")
    code, out, err = idm("objects", a.uri_with_pin, "--json")
    assert code == 0, err
    objs = {o["type"]: o for o in map(json.loads, out.splitlines())}
    assert set(objs) == {"cert", "private", "public"}
    cert, key = objs["cert"], objs["private"]
    assert cert["subject"].startswith("CN=alice") and cert["self_signed"] is False
    assert cert["key"] == "RSA 2048" and key["key"] == "RSA 2048"
    assert cert["paired_with"] == key["uri"] and key["paired_with"] == cert["uri"]
    assert cert["ssh_fingerprint"] == key["ssh_fingerprint"]
    assert cert["ssh_fingerprint"].startswith("SHA256:")
    assert key["uri"].endswith(";object=alice;type=private;id=%01")

    # the fingerprint is the one ssh-keygen computes for the certificate's key
    import subprocess

    pub = subprocess.run(
        ["openssl", "x509", "-in", str(ca.user_cert("alice")), "-pubkey", "-noout"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (tmp_path / "alice.pub.pem").write_text(pub)
    converted = subprocess.run(
        ["ssh-keygen", "-i", "-m", "PKCS8", "-f", str(tmp_path / "alice.pub.pem")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (tmp_path / "alice.ssh.pub").write_text(converted)
    listed = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(tmp_path / "alice.ssh.pub")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert cert["ssh_fingerprint"] in listed

    # object attributes narrow the list
    code, out, _ = idm("objects", f"{a.uri};type=cert", "--json")
    assert [json.loads(line)["type"] for line in out.splitlines()] == ["cert"]


def test_objects_without_a_pin_lists_public_objects_and_warns(idm, softhsm: SoftHSM) -> None:
    a = softhsm.init_token("card-a", pin="1111")
    softhsm.generate_key(a, "ec-p256", key_id=b"\x07", label="k")
    code, out, err = idm("objects", a.uri, "--json")  # no TTY, no askpass, no pin-source
    assert code == 0
    assert [json.loads(line)["type"] for line in out.splitlines()] == ["public"]
    assert "private keys not listed" in err


def test_objects_wrong_pin_is_one_clear_line(idm, softhsm: SoftHSM) -> None:
    a = softhsm.init_token("card-a", pin="1111")
    code, out, err = idm("objects", f"{a.uri}?pin-value=0000")
    assert code == 2
    assert err.startswith("idm: error: wrong PIN for token 'card-a'")
    assert "not tried again" in err and "fewer tries are left" in err
    assert "0000" not in err and len(err.strip().splitlines()) == 1


def test_objects_accepts_a_legacy_pkcs11_helper_id(idm, softhsm: SoftHSM) -> None:
    a = softhsm.init_token("card-a", pin="1111")
    softhsm.generate_key(a, "rsa2048", key_id=b"\xab", label="k")
    legacy = f"SoftHSM\\x20project/SoftHSM\\x20v2/{a.serial}/card-a/AB"
    code, out, err = idm("objects", legacy, "--json", "--no-login")
    assert code == 0, err
    assert [json.loads(line)["id"] for line in out.splitlines()] == ["ab"]


def test_objects_bad_uri(idm) -> None:
    code, _, err = idm("objects", "pkcs11:token=a;bogus=1")
    assert code == 2 and "unknown path attribute 'bogus'" in err
