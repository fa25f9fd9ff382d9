"""A token's life on SoftHSM2: presence in `idm list`, `idm token retire`, `idm forget`,
a certificate of one card refused for another, keys without certificates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from idm.identity.inventory.store import open_inventory
from tests.sample_ca_fixture import SampleCA, make_sample_ca
from tests.softhsm import SoftHSM, SoftHSMToken, softhsm
from tests.terminal import IDM, Terminal

__all__ = ["softhsm"]

pytestmark = pytest.mark.softhsm


def card_with(softhsm: SoftHSM, ca: SampleCA, label: str, user: str) -> SoftHSMToken:
    card = softhsm.init_token(label, pin="1111")
    softhsm.import_private_key(card, ca.user_key(user), key_id=b"\x01", label=user)
    softhsm.import_certificate(card, ca.user_cert(user), key_id=b"\x01", label=user)
    return card


def enroll(idm, card: SoftHSMToken, ca: SampleCA) -> str:
    """Enroll the card (revocation off: these tests are about the inventory)."""
    code, out, err = idm("enroll", "--token", card.uri, "--ca", str(ca.ca_bundle),
                         "--untrusted", str(ca.chain), "--revocation", "off", "--json")
    assert code == 0, err
    [cert] = json.loads(out)["certificates"]
    assert cert["status"] == "approved"
    return str(cert["sha256"])


def listing(idm) -> dict:
    code, out, err = idm("list", "--json")
    assert code == 0, err
    return json.loads(out)


def test_list_says_a_pulled_card_is_absent_and_when_it_was_last_seen(
    idm, softhsm: SoftHSM, tmp_path: Path
) -> None:
    ca = make_sample_ca(tmp_path)
    card = card_with(softhsm, ca, "card-a", "alice")
    enroll(idm, card, ca)
    [token] = listing(idm)["tokens"]
    assert token["state"] == "present" and token["present_now"] == "yes"
    seen_while_in = token["last_seen"]

    softhsm.remove(card)
    [token] = listing(idm)["tokens"]
    assert token["state"] == "absent" and token["present_now"] == "no"
    assert token["last_seen"] == seen_while_in  # the last time it was really there
    code, out, _ = idm("list")
    header, row = out.splitlines()[1:3]
    assert "PRESENT" in header and "LAST SEEN (UTC)" in header
    assert " absent  no " in row

    softhsm.reinsert(card)
    [token] = listing(idm)["tokens"]
    assert token["state"] == "present" and token["present_now"] == "yes"
    assert token["last_seen"] > seen_while_in
    kinds = [e.kind for e in open_inventory(idm.db).events()]
    assert kinds[-2:] == ["token-absent", "token-present"]


def test_certificate_of_card_a_is_refused_for_card_b(
    idm, softhsm: SoftHSM, tmp_path: Path
) -> None:
    ca = make_sample_ca(tmp_path)
    card_a = card_with(softhsm, ca, "card-a", "alice")
    enroll(idm, card_a, ca)
    card_b = softhsm.init_token("card-b", pin="2222")
    softhsm.reinitialize()  # this process loaded the module before card B existed
    trust = ["--ca", str(ca.ca_bundle), "--untrusted", str(ca.chain), "--revocation", "off"]
    # card B inserted, and card C not inserted (named fully): both refused, nothing recorded
    absent_c = ("pkcs11:token=card-c;manufacturer=Acme;model=M1;serial=0042")
    for token in (card_b.uri, absent_c):
        code, out, err = idm("enroll", "--token", token, "--cert", str(ca.user_cert("alice")),
                             *trust)
        assert code == 2, out
        assert err.startswith("idm: error: certificate ")
        assert "is registered to token 'card-a'" in err and "idm forget" in err
    assert [t["label"] for t in listing(idm)["tokens"]] == ["card-a"]  # no phantom token
    del card_b


def test_retire_asks_withdraws_and_records(idm, softhsm: SoftHSM, tmp_path: Path) -> None:
    ca = make_sample_ca(tmp_path)
    card = card_with(softhsm, ca, "card-a", "alice")
    sha = enroll(idm, card, ca)
    [token] = listing(idm)["tokens"]
    # not a terminal, no --yes: refused with what would be lost
    code, _, err = idm("token", "retire", str(token["id"]))
    assert code == 2
    assert "holds 1 approved certificate(s) (CN=alice" in err and "--yes" in err
    assert listing(idm)["certificates"][0]["status"] == "approved"

    code, out, err = idm("token", "retire", card.uri, "--yes", "--reason", "lost", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["withdrawn"] == [sha] and result["token"]["state"] == "retired"
    after = listing(idm)
    assert after["tokens"][0]["state"] == "retired"  # a scan does not undo it
    assert after["certificates"][0]["status"] == "superseded"
    inv = open_inventory(idm.db)
    assert "token 'card-a'" in (inv.certificate(sha).status_reason or "")  # type: ignore[union-attr]
    kinds = [(e.kind, e.reason) for e in inv.events()]
    assert ("token-retired", "lost") in kinds and kinds[-1][0] != "token-present"
    code, out, _ = idm("token", "retire", str(token["id"]))
    assert code == 0 and "retired already" in out
    code, _, err = idm("token", "retire", "99")
    assert code == 2 and "no token with id 99" in err


def test_forget_asks_on_a_terminal_and_records_an_event(
    idm, softhsm: SoftHSM, tmp_path: Path
) -> None:
    ca = make_sample_ca(tmp_path)
    card = card_with(softhsm, ca, "card-a", "alice")
    sha = enroll(idm, card, ca)
    code, _, err = idm("forget", sha[:12])
    assert code == 2 and "is approved" in err and "--yes" in err

    command = [*IDM, "--db", idm.db, "forget", sha[:12]]
    with Terminal(command) as term:
        term.expect("Forget it? [y/N]")
        term.send(b"n\r")
        assert term.wait() == 1
    assert "nothing changed" in term.output
    assert [c["sha256"] for c in listing(idm)["certificates"]] == [sha]
    with Terminal(command) as term:
        term.expect("Forget it? [y/N]")
        term.send(b"y\r")
        assert term.wait() == 0
    assert f"forgot certificate {sha[:16]}" in term.output
    assert listing(idm)["certificates"] == []
    last = open_inventory(idm.db).events()[-1]
    assert last.kind == "forgotten" and sha in (last.reason or "")
    code, _, err = idm("show", sha)
    assert code == 2 and "no certificate" in err
    # forgotten from card A, it may now be registered for another card
    code, _, err = idm("enroll", "--token", "pkcs11:token=card-z;manufacturer=Acme;model=M;"
                       "serial=7", "--cert", str(ca.user_cert("alice")), "--ca",
                       str(ca.ca_bundle), "--untrusted", str(ca.chain), "--revocation", "off")
    assert code == 0, err


def test_objects_marks_keys_without_certificate_and_delete_key_removes_one(
    idm, softhsm: SoftHSM, tmp_path: Path
) -> None:
    ca = make_sample_ca(tmp_path)
    card = card_with(softhsm, ca, "card-a", "alice")
    softhsm.generate_key(card, "ec-p256", key_id=b"\x02", label="stray")
    code, out, err = idm("objects", card.uri_with_pin)
    assert code == 0, err
    stray = [line for line in out.splitlines() if line.startswith("private") and "stray" in line]
    assert len(stray) == 1 and "no certificate" in stray[0]
    assert "1 private key(s) without a certificate" in err and "idm token delete-key" in err

    with_cert = f"{card.uri};id=%01?pin-value=1111"
    code, _, err = idm("token", "delete-key", with_cert, "--yes")
    assert code == 2 and "has a certificate on the token (CN=alice" in err, err
    lonely = f"{card.uri};id=%02?pin-value=1111"
    code, _, err = idm("token", "delete-key", lonely)
    assert code == 2 and "cannot be undone" in err and "--yes" in err
    code, out, err = idm("token", "delete-key", lonely, "--yes", "--json")
    assert code == 0, err
    assert json.loads(out)["objects_deleted"] == 2  # the private and the public key
    code, out, _ = idm("objects", card.uri_with_pin, "--json")
    assert sorted(json.loads(line)["id"] for line in out.splitlines()) == ["01", "01", "01"]
