"""`idm refresh` says what changed and why, and a hung responder is not a silent lock-out.

The hung responder is a TCP server on the CA's port that accepts connections and never
answers; the validator gives up on its own timeouts. These tests look at the report and
the exit status only, not at how long the run took.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from sample_ca_fixture import SampleCA, make_sample_ca, serving

from idm.identity.inventory.store import Inventory
from tests.server.helpers import enroll, hung_listener, idm, write_config
from tests.terminal import IDM, Terminal

EXIT_UNCHECKED = 3


def config(tmp_path: Path, ca: SampleCA, name: str, snapshot: Path) -> tuple[Path, Inventory]:
    db = f"sqlite:///{tmp_path / (name + '.sqlite')}"
    cfg = write_config(tmp_path / f"{name}.toml", ca=ca.ca_bundle, untrusted=ca.chain,
                       snapshot=snapshot, db=db, read_timeout=2.0)
    return cfg, Inventory(db)


def test_hung_responder_leaves_users_out_and_refresh_says_so(tmp_path: Path) -> None:
    ca = make_sample_ca(tmp_path)
    snapshot = tmp_path / "srv" / "snapshot.sqlite"
    # Yesterday's server: the responder answered and hung-user could log in.
    first_cfg, first = config(tmp_path, ca, "first", snapshot)
    with serving(ca):
        rec = enroll(first, ca.user("hung-user"))
        ok = idm("refresh", "--json", config=first_cfg)
    assert json.loads(ok.stdout)["users_entered"] == ["hung-user"]
    # Today the responder hangs and nothing is cached (a fresh inventory, as after the
    # cached status ran out): the certificate cannot be checked.
    cfg, inv = config(tmp_path, ca, "second", snapshot)
    enroll(inv, ca.user_cert("hung-user"))
    yesterday = snapshot.read_bytes()
    with hung_listener(ca.port):
        proc = idm("refresh", "--json", config=cfg, check=False)
        snapshot.write_bytes(yesterday)  # the same run again, for the words
        human = idm("refresh", config=cfg, check=False)

    assert proc.returncode == EXIT_UNCHECKED, proc.stderr
    result = json.loads(proc.stdout)
    assert result["exit_status"] == EXIT_UNCHECKED
    assert result["entries"] == 0 and result["authorized"] == 0
    assert [c["certificate"] for c in result["unchecked"]] == [rec.sha256]
    assert result["unchecked"][0]["status"] == "revocation-unknown"
    assert result["users_left"] == ["hung-user"]
    [left] = result["left"]
    assert left["certificate"] == rec.sha256 and left["users"] == ["hung-user"]
    assert left["reason"].startswith("revocation-unknown: ")
    # The certificate stays approved: an outage is not a rejection.
    assert inv.certificate(rec.sha256).status == "approved"  # type: ignore[union-attr]

    assert human.returncode == EXIT_UNCHECKED
    assert "users who can no longer log in: hung-user" in human.stdout
    assert "1 approved certificate(s) could not be checked" in human.stderr
    assert f"{rec.sha256[:16]} CN=hung-user" in human.stderr
    assert "\x1b[" not in human.stderr  # no progress line without a terminal
    inv.close()
    first.close()


def test_report_names_who_entered_and_left_and_why(tmp_path: Path) -> None:
    ca = make_sample_ca(tmp_path)
    cfg, inv = config(tmp_path, ca, "srv", tmp_path / "srv" / "snapshot.sqlite")
    with serving(ca):
        stay = enroll(inv, ca.user("stay"))
        gone = enroll(inv, ca.user("gone"))
        first = json.loads(idm("refresh", "--json", config=cfg).stdout)
        assert first["previous"] is False
        assert {m["certificate"] for m in first["entered"]} == {stay.sha256, gone.sha256}
        assert first["users_entered"] == ["gone", "stay"] and first["exit_status"] == 0

        ca.revoke(ca.user_cert("gone"), reason="keyCompromise")
        new = enroll(inv, ca.user("newcomer"))
        proc = idm("refresh", config=cfg)
        again = json.loads(idm("refresh", "--json", config=cfg).stdout)

    assert proc.returncode == 0
    out = proc.stdout
    assert "users who can now log in: newcomer" in out
    assert "users who can no longer log in: gone" in out
    plus = [line for line in out.splitlines() if line.startswith("+ ")]
    minus = [line for line in out.splitlines() if line.startswith("- ")]
    assert len(plus) == 1 and new.sha256[:16] in plus[0] and "mapped by rule" in plus[0]
    assert len(minus) == 1 and gone.sha256[:16] in minus[0] and "revoked" in minus[0]
    assert "Status changes:" in out
    # Nothing moved the second time: an empty report, still exit 0.
    assert again["entered"] == again["left"] == []
    assert again["users_entered"] == again["users_left"] == []
    # A revoked certificate is no longer approved: not reported again.
    assert gone.sha256 not in {c["certificate"] for c in again["left_out"] + again["changes"]}
    inv.close()


def test_refresh_shows_progress_on_a_terminal(tmp_path: Path) -> None:
    ca = make_sample_ca(tmp_path)
    cfg, inv = config(tmp_path, ca, "srv", tmp_path / "srv" / "snapshot.sqlite")
    enroll(inv, ca.user("slow"))
    with hung_listener(ca.port), Terminal([*IDM, "--config", str(cfg), "refresh"],
                                          env=dict(os.environ)) as term:
        term.expect("checking certificate 1 of 1: CN=slow")
        code = term.wait()
    assert code == EXIT_UNCHECKED
    assert "could not be checked" in term.output
    inv.close()


def test_show_agrees_with_the_status_refresh_set_and_says_utc(tmp_path: Path) -> None:
    ca = make_sample_ca(tmp_path)
    cfg, inv = config(tmp_path, ca, "srv", tmp_path / "srv" / "snapshot.sqlite")
    old_card = "pkcs11:token=old;manufacturer=Acme;model=M;serial=1"
    new_card = "pkcs11:token=new;manufacturer=Acme;model=M;serial=2"
    with serving(ca):
        # enrolled and checked valid on the old card, then superseded by the new card
        idm("enroll", "--token", old_card, "--cert", str(ca.user("lost")), config=cfg)
        first = ca.user_cert("lost").read_bytes()
        ca.user("lost", "--force")
        (tmp_path / "old.pem").write_bytes(first)
        idm("enroll", "--token", new_card, "--cert", str(ca.user_cert("lost")), config=cfg)
        [old] = inv.certificates(status="superseded")
        assert old.verdict_status == "valid"
        ca.revoke(tmp_path / "old.pem", reason="keyCompromise")  # the old card was lost
        idm("refresh", config=cfg)
    shown = idm("show", old.sha256, config=cfg).stdout
    assert "Status:       revoked: " in shown
    assert "Last check:   revoked at " in shown and " UTC" in shown
    assert "Decided:" in shown and "refresh" in shown.split("Decided:")[1].splitlines()[0]
    assert "Note:" not in shown
    events = idm("events", config=cfg).stdout
    assert events.splitlines()[0].startswith("TIME (UTC)")
    inv.close()
