"""`idm enroll`: the card-replacement story on SoftHSM2 tokens and the sample CA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography import x509

from idm.identity.inventory.store import open_inventory
from tests.sample_ca_fixture import make_sample_ca, serving
from tests.softhsm import SoftHSM, softhsm, softhsm_second

__all__ = ["softhsm", "softhsm_second"]

pytestmark = pytest.mark.softhsm


def test_card_replacement_story(idm, softhsm: SoftHSM, tmp_path: Path) -> None:
    ca = make_sample_ca(tmp_path)
    trust = ["--ca", str(ca.ca_bundle), "--untrusted", str(ca.chain)]
    with serving(ca):
        # the old card holds alice's key and certificate from the CA
        old = softhsm.init_token("old-card", pin="1111")
        softhsm.import_private_key(old, ca.user_key("alice"), key_id=b"\x01", label="alice")
        softhsm.import_certificate(old, ca.user_cert("alice"), key_id=b"\x01", label="alice")
        code, out, err = idm("enroll", "--token", old.uri, *trust, "--json")
        assert code == 0, err + out
        first = json.loads(out)
        assert [c["status"] for c in first["certificates"]] == ["approved"]
        old_sha = first["certificates"][0]["sha256"]

        # the new card: a key made on the card, a CSR signed by it, issued by the CA
        new = softhsm.init_token("new-card", pin="2222")
        csr_path = tmp_path / "alice-new.csr"
        code, out, err = idm(
            "enroll",
            "--token",
            new.uri_with_pin,
            "--new-key",
            "ec-p256",
            "--subject",
            "CN=alice,O=idm demo,C=XX",
            "--csr",
            str(csr_path),
        )
        assert code == 0, err
        assert "new key: pkcs11:token=new-card" in err
        csr = x509.load_pem_x509_csr(csr_path.read_bytes())
        assert csr.is_signature_valid
        cert_path = tmp_path / "alice-new.pem"
        ca.run("issue", "--csr", str(csr_path), "--out", str(cert_path))

        code, out, err = idm(
            "enroll",
            "--token",
            new.uri_with_pin,
            "--import-cert",
            str(cert_path),
            *trust,
            "--json",
        )
        assert code == 0, err
        second = json.loads(out)
        (enrolled,) = second["certificates"]
        assert enrolled["status"] == "approved"
        assert second["superseded"] == [old_sha]

        # running it again changes nothing
        inv = open_inventory(idm.db)
        events_before = len(inv.events())
        code, out, err = idm("enroll", "--token", new.uri_with_pin, *trust, "--json")
        assert code == 0, err
        again = json.loads(out)
        assert again["changed"] is False and again["superseded"] == []
        code, out, err = idm("enroll", "--token", old.uri, *trust, "--json")
        assert json.loads(out)["certificates"][0]["status"] == "superseded"  # stays retired
        assert len(inv.events()) == events_before

    # the inventory tells the story
    statuses = {c.sha256: c.status for c in inv.certificates()}
    assert statuses == {old_sha: "superseded", enrolled["sha256"]: "approved"}
    kinds = [e.kind for e in inv.events()]
    assert kinds.count("enrolled") == 2 and kinds.count("approved") == 2
    assert kinds.count("superseded") == 1 and kinds.count("token-added") == 2
    superseded = next(e for e in inv.events() if e.kind == "superseded")
    assert "new-card" in superseded.reason and "same subject" in superseded.reason
    # the new card's certificate is stored next to its key and pairs with it
    code, out, _ = idm("objects", new.uri_with_pin, "--json")
    objs = {o["type"]: o for o in map(json.loads, out.splitlines())}
    assert objs["cert"]["paired_with"] == objs["private"]["uri"]
    inv.close()


def test_certificate_failing_validation_is_rejected_with_reason(
    idm, softhsm: SoftHSM, tmp_path: Path
) -> None:
    ca = make_sample_ca(tmp_path)
    other = make_sample_ca(tmp_path, subdir="other-ca")
    card = softhsm.init_token("card", pin="1111")
    # a certificate from a CA we do not trust, registered while the card is out
    uri = (
        f"pkcs11:token=card;manufacturer=SoftHSM%20project;model=SoftHSM%20v2;serial={card.serial}"
    )
    softhsm.remove(card)
    code, out, err = idm(
        "enroll",
        "--token",
        uri,
        "--cert",
        str(other.user_cert("bob")),
        "--ca",
        str(ca.ca_bundle),
        "--revocation",
        "off",
        "--json",
    )
    assert code == 1, err
    (result,) = json.loads(out)["certificates"]
    assert result["status"] == "rejected"
    assert result["reason"]  # the validator's reason, e.g. no path to a trust anchor
    inv = open_inventory(idm.db)
    (token,) = inv.tokens()
    assert token.state == "absent" and token.serial == card.serial
    (record,) = inv.certificates()
    assert record.status == "rejected" and record.status_reason == result["reason"]
    assert "approved" not in [e.kind for e in inv.events()]
    inv.close()

    # the absent token must be fully named
    code, _, err = idm(
        "enroll",
        "--token",
        "pkcs11:token=card",
        "--cert",
        str(other.user_cert("bob")),
        "--ca",
        str(ca.ca_bundle),
    )
    assert code == 2 and "add manufacturer=, model=, serial=" in err


def test_revoked_certificate_is_recorded_revoked(idm, softhsm: SoftHSM, tmp_path: Path) -> None:
    ca = make_sample_ca(tmp_path)
    card = softhsm.init_token("card", pin="1111")
    softhsm.import_certificate(card, ca.user_cert("bob"), key_id=b"\x02", label="bob")
    ca.revoke(ca.user_cert("bob"), reason="keyCompromise")
    with serving(ca):
        code, out, err = idm(
            "enroll",
            "--token",
            card.uri,
            "--ca",
            str(ca.ca_bundle),
            "--untrusted",
            str(ca.chain),
            "--json",
        )
    assert code == 1, err
    (result,) = json.loads(out)["certificates"]
    assert result["status"] == "revoked" and "revoked" in result["reason"]
