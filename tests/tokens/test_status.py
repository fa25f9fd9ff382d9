"""`idm status`: identities, cards present now, expiry warnings, revocation freshness, who
logs in as whom, the snapshot, and the next actions (SoftHSM2 cards, the sample CA)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from idm.identity.inventory.store import open_inventory
from tests.sample_ca_fixture import make_sample_ca
from tests.server.helpers import write_config
from tests.softhsm import SOFTHSM_MODULE, SoftHSM, softhsm
from tests.tokens.test_lifecycle import card_with, enroll

__all__ = ["softhsm"]

pytestmark = pytest.mark.softhsm


def status(idm, *args: str) -> dict:  # type: ignore[no-untyped-def]
    code, out, err = idm("status", "--json", *args)
    assert code == 0, err
    return json.loads(out)


def test_status_of_a_user_with_cards(idm, softhsm: SoftHSM, tmp_path: Path) -> None:
    ca = make_sample_ca(tmp_path)
    ca.user("soon", "--not-after", "+10d")
    long = card_with(softhsm, ca, "long-card", "alice")
    short = card_with(softhsm, ca, "short-card", "soon")
    alice, soon = enroll(idm, long, ca), enroll(idm, short, ca)
    softhsm.remove(short)

    report = status(idm)
    by_sha = {i["sha256"]: i for i in report["identities"]}
    assert by_sha[alice]["token"]["present_now"] == "yes"
    assert by_sha[alice]["expiry_warning"] is False and by_sha[alice]["actions"] == []
    assert by_sha[alice]["logs_in_as"] == ["alice"] and by_sha[alice]["mapping_rule"] == "email"
    assert by_sha[soon]["token"]["present_now"] == "no"
    assert by_sha[soon]["days_left"] == 9 and by_sha[soon]["expiry_warning"] is True
    soon_actions = by_sha[soon]["actions"]
    assert any("expires in 9 day(s)" in a and "renew" in a for a in soon_actions)
    assert any(a.startswith("insert card 'short-card'") for a in soon_actions)
    assert report["snapshot"] is None  # not a server
    assert report["actions"] == soon_actions

    # a warning period shorter than the time left: no warning
    quiet = {i["sha256"]: i for i in status(idm, "--warn-days", "5")["identities"]}
    assert quiet[soon]["expiry_warning"] is False

    # revocation status that ran out (as time passing would leave it)
    inv = open_inventory(idm.db)
    inv.record_verdict(alice, "valid", verified_at=datetime.now(UTC) - timedelta(days=2),
                       fresh_until=datetime.now(UTC) - timedelta(days=1))
    stale = {i["sha256"]: i for i in status(idm)["identities"]}[alice]
    assert stale["revocation"] == "stale"
    assert any("ran out" in a and f"idm verify {alice[:16]}" in a for a in stale["actions"])

    code, out, _ = idm("status")
    assert code == 0
    assert "Card 'long-card'" in out and ": present now" in out
    assert "Card 'short-card'" in out and "not present now" in out
    assert "(9 days) WARNING: soon" in out
    assert "logs in   as alice (rule email)" in out
    assert "stale since" in out
    assert out.rstrip().splitlines()[-1].startswith("  - ")  # next actions, last


def test_status_of_a_server(idm, softhsm: SoftHSM, tmp_path: Path) -> None:
    ca = make_sample_ca(tmp_path)
    snapshot = tmp_path / "snapshot.sqlite"
    config = write_config(tmp_path / "config.toml", ca=ca.ca_bundle, untrusted=ca.chain,
                          snapshot=snapshot, policy="off",
                          extra=f'[tokens]\nproviders = ["{SOFTHSM_MODULE}"]\n')
    plain = card_with(softhsm, ca, "card-a", "alice")
    ca.user("odd", "--no-email", "--cn", "Odd Person")
    odd = card_with(softhsm, ca, "card-b", "odd")

    def run(*args: str) -> tuple[int, str, str]:
        return idm("--config", str(config), *args)  # type: ignore[no-any-return]

    alice, odd_sha = enroll(run, plain, ca), enroll(run, odd, ca)
    assert run("allow", "bob", "--principal", "alice@example.org")[0] == 0
    assert run("refresh")[0] == 0
    report = status(run)
    assert report["snapshot"]["fresh"] is True and report["snapshot"]["entries"] == 1
    assert report["grants"] == [{"user": "bob", "kind": "principal",
                                 "value": "alice@example.org"}]
    by_sha = {i["sha256"]: i for i in report["identities"]}
    assert by_sha[alice]["logs_in_as"] == ["bob"]
    assert by_sha[alice]["mapping_rule"] == "principals"
    assert by_sha[odd_sha]["logs_in_as"] == []
    assert any("no mapping rule names a user" in a and "idm allow USER --subject" in a
               for a in by_sha[odd_sha]["actions"])

    code, out, _ = run("status", "--no-scan")
    assert code == 0
    assert "bob <- principal alice@example.org" in out
    assert f"Snapshot {snapshot}: 1 key line(s)" in out and "(fresh)" in out
    assert "logs in   as nobody" in out
