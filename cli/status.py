"""`idm status`: one screen with every identity, its card, expiry, revocation freshness,
who may log in as whom, and the next action."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from idm.cli.context import AppContext
from idm.cli.inventory import last_check
from idm.cli.output import STATUS_COLOURS, print_json, say, say_wrapped

pass_app = click.make_pass_decorator(AppContext)


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.option("--no-scan", is_flag=True,
              help="Do not ask the PKCS#11 providers which cards are present now.")
@click.option("--warn-days", type=click.IntRange(min=0), metavar="DAYS",
              help="Warn this many days before expiry (default: [validation] "
                   "expiry_warning_days, 30).")
@pass_app
def status_command(app: AppContext, as_json: bool, no_scan: bool, warn_days: int | None) -> None:
    """Each identity, its card and whether the card is present now, days to expiry,
    revocation freshness, who may log in as whom, and what to do next.

    On a server (a login snapshot exists) also the snapshot's freshness and the
    certificates no mapping rule maps to a user. Times are UTC.
    """
    from idm.cli.inventory import token_presence
    from idm.identity.status import host_status

    inventory = app.inventory()
    presence = None if no_scan else token_presence(app)
    report = host_status(inventory, app.config, now=datetime.now(UTC), presence=presence,
                         warn_days=warn_days)
    if as_json:
        print_json(report.as_dict())
        return
    _print(report)


def _when(iso: str) -> str:
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M UTC")


def _print(report: Any) -> None:
    say_wrapped(f"Inventory {report.inventory}, {report.now:%Y-%m-%d %H:%M} UTC "
                f"(expiry warning {report.warn_days} days ahead)", indent=2)
    by_card: dict[str, list[Any]] = {}
    for item in report.identities:
        by_card.setdefault(_card_words(item), []).append(item)
    for card, items in by_card.items():
        click.echo()
        say_wrapped(card, indent=2)
        for item in items:
            r = item.record
            say_wrapped(f"  {r.subject} ({r.sha256[:16]}): {r.status}", indent=2,
                        colour=STATUS_COLOURS.get(r.status))
            expiry = f"{r.not_after:%Y-%m-%d} ({item.days_left} days)"
            if item.expiry_warning:
                expiry += " WARNING: soon"
            say_wrapped(f"    expires   {expiry}", indent=10,
                        colour="yellow" if item.expiry_warning else None)
            check = ("never checked" if r.verified_at is None
                     else last_check(r, stale=item.revocation == "stale"))
            say_wrapped(f"    checked   {check}", indent=10)
            if item.users:
                say_wrapped(f"    logs in   as {', '.join(item.users)} (rule {item.rule})",
                            indent=10)
            elif item.rule and item.rule.startswith("error"):
                say_wrapped(f"    logs in   {item.rule}", indent=10)
            else:
                say("    logs in   as nobody (no mapping rule names a user)")
    if report.not_shown:
        click.echo()
        say(f"({report.not_shown} superseded or replaced identit"
            f"{'y' if report.not_shown == 1 else 'ies'} not shown: `idm list`)")
    if report.grants:
        click.echo()
        say("Granted with `idm allow` / principals_dir:")
        for user, kind, value in report.grants:
            say_wrapped(f"  {user} <- {kind} {value}", indent=4)
    snap = report.snapshot
    if snap is not None:
        if "error" in snap:
            click.echo()
            say_wrapped(f"Snapshot: {snap['error']}", indent=2, colour="red")
        else:
            click.echo()
            say_wrapped(f"Snapshot {snap['path']}: {snap['entries']} key line(s), written "
                        f"{_when(snap['written_at'])}, valid until {_when(snap['deadline'])} "
                        f"({'fresh' if snap['fresh'] else 'STALE'})", indent=2,
                        colour=None if snap["fresh"] else "red")
    actions = report.all_actions
    click.echo()
    say("Next actions:" + ("" if actions else " none"))
    for action in actions:
        say_wrapped(f"  - {action}", indent=2)


def _card_words(item: Any) -> str:
    token = item.token
    if token is None:
        return "No card recorded"
    now = {"yes": "present now", "no": "not present now",
           "unknown": "presence unknown here"}.get(item.present_now or "", "not scanned")
    state = "" if token.state in ("present", "absent") else f", {token.state}"
    return (f"Card {token.label!r} (serial {token.serial}{state}): {now}, last seen "
            f"{token.last_seen:%Y-%m-%d %H:%M} UTC")
