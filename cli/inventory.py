"""`idm list`, `idm show`, `idm events`, `idm db upgrade`: reading the inventory."""

from __future__ import annotations

from typing import Any

import click

from idm.cli.context import AppContext, command_line
from idm.cli.output import UserError, print_json, print_table, say, warn
from idm.identity.inventory import CERT_STATUSES

pass_app = click.make_pass_decorator(AppContext)


def _short(fp: str) -> str:
    return fp[:16]


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: tokens and certificates.")
@click.option("--status", type=click.Choice(CERT_STATUSES),
              help="Only certificates with this status.")
@click.option("--no-scan", is_flag=True,
              help="Do not ask the PKCS#11 providers which tokens are present now.")
@pass_app
def list_command(app: AppContext, as_json: bool, status: str | None, no_scan: bool) -> None:
    """List tokens and certificates in the inventory, with their status.

    Unless --no-scan, the configured PKCS#11 providers are asked which tokens are in a
    reader now (PRESENT: yes, no, or ? when the token's provider is not loaded here), and
    the inventory records it: STATE and LAST SEEN are as of the last time idm saw the card.
    Times are UTC.
    """
    inv = app.inventory()
    presence = {} if no_scan else token_presence(app)
    tokens = inv.tokens()  # after the scan: its states and times
    certs = inv.certificates(status=status)
    if as_json:
        print_json(
            {
                "tokens": [{**t.as_dict(), "present_now": presence.get(t.id)} for t in tokens],
                "certificates": [c.as_dict() for c in certs],
            }
        )
        return
    labels = {t.id: t.label for t in tokens}
    click.echo(f"Tokens ({len(tokens)}):")
    print_table(
        ["ID", "LABEL", "MANUFACTURER", "MODEL", "SERIAL", "STATE", "PRESENT",
         "LAST SEEN (UTC)"],
        [
            (t.id, t.label, t.manufacturer, t.model, t.serial, t.state,
             {"yes": "yes", "no": "no"}.get(presence.get(t.id) or "", "?"),
             t.last_seen.strftime("%Y-%m-%d %H:%M"))
            for t in tokens
        ],
    )
    click.echo(f"\nCertificates ({len(certs)}):")
    print_table(
        ["SHA256", "STATUS", "SUBJECT", "KEY", "TOKEN", "NOT AFTER (UTC)"],
        [
            (_short(c.sha256), c.status, c.subject, c.key_type,
             labels.get(c.token_id, "-") if c.token_id else "-",
             c.not_after.strftime("%Y-%m-%d"))
            for c in certs
        ],
    )


def token_presence(app: AppContext) -> dict[int, str]:
    """token id -> yes/no/unknown from one scan of the providers (recorded); {} when the
    providers cannot be asked (a warning says why)."""
    from idm.cli.tokens import open_providers
    from idm.identity.tokens.errors import TokenError
    from idm.identity.tokens.presence import scan_presence

    try:
        providers = open_providers(app, ())
        found = scan_presence(app.inventory(), providers, command=command_line())
    except (UserError, TokenError) as exc:
        message = exc.format_message() if isinstance(exc, UserError) else str(exc)
        warn(f"token presence not checked: {message}")
        return {}
    return {p.token.id: p.present for p in found}


def find_certificate(app: AppContext, fingerprint: str) -> Any:
    """The inventory's certificate by SHA-256 (a unique prefix of 8+ hex digits) or SSH key
    fingerprint; a UserError when there is none or the prefix is ambiguous."""
    from idm.identity.inventory.store import InventoryError

    try:
        cert = app.inventory().certificate(fingerprint)
    except InventoryError as exc:
        raise UserError(str(exc)) from None
    if cert is None:
        raise UserError(f"no certificate {fingerprint} in the inventory (see `idm list`)")
    return cert


@click.command("show")
@click.argument("fingerprint")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.option("--pem", is_flag=True, help="Print the certificate in PEM instead.")
@pass_app
def show_command(app: AppContext, fingerprint: str, as_json: bool, pem: bool) -> None:
    """Show one certificate: FINGERPRINT is its SHA-256 (or a unique prefix of 8+ hex
    digits) or its key's SSH fingerprint SHA256:…"""
    inv = app.inventory()
    cert = find_certificate(app, fingerprint)
    if pem:
        import base64
        import textwrap

        body = "\n".join(textwrap.wrap(base64.b64encode(cert.der).decode(), 64))
        click.echo(f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----")
        return
    events = inv.events(certificate=cert.sha256)
    token = next((t for t in inv.tokens() if t.id == cert.token_id), None)
    if as_json:
        data = cert.as_dict()
        data["token"] = token.as_dict() if token else None
        data["events"] = [e.as_dict() for e in events]
        print_json(data)
        return
    rows = [
        ("SHA-256", cert.sha256),
        ("Subject", cert.subject),
        ("Issuer", cert.issuer),
        ("Serial", cert.serial),
        ("Valid", f"{cert.not_before:%Y-%m-%d %H:%M} to {cert.not_after:%Y-%m-%d %H:%M} UTC"),
        ("Key", f"{cert.key_type} {cert.key_fingerprint}"),
        ("Self-signed", "yes" if cert.self_signed else "no"),
        ("Token", f"{token.label} ({token.manufacturer}, serial {token.serial})" if token else "-"),
        ("CKA_ID", cert.cka_id or "-"),
        ("Status", cert.status + (f": {cert.status_reason}" if cert.status_reason else "")),
        ("Decided", _decided_by(cert, events)),
        ("Last check", last_check(cert)),
    ]
    note = _disagreement(cert)
    if note:
        rows.append(("Note", note))
    for name, value in rows:
        say(f"{name + ':':13} {value}")
    click.echo("Events (UTC):")
    for e in events:
        why = f" ({e.reason})" if e.reason else ""
        say(f"  {e.time:%Y-%m-%d %H:%M:%S}  {e.kind}{why}  [{e.command or '-'}]")


def _decided_by(cert: Any, events: list[Any]) -> str:
    """When the status was set and by which command (its event)."""
    when = f"{cert.status_time:%Y-%m-%d %H:%M} UTC" if cert.status_time else "-"
    event = next((e for e in reversed(events) if e.kind == cert.status), None)
    return f"{when} by {event.command or '-'}" if event else when


def last_check(cert: Any, *, stale: bool = False) -> str:
    """A certificate record's last check: its verdict, when, and until when its revocation
    status is fresh (``stale``: since when it is stale); "never" when never checked."""
    if not cert.verified_at:
        return "never"
    text = f"{cert.verdict_status} at {cert.verified_at:%Y-%m-%d %H:%M} UTC"
    if cert.fresh_until:
        text += (f", {'stale since' if stale else 'fresh until'} "
                 f"{cert.fresh_until:%Y-%m-%d %H:%M} UTC")
    return text


def _disagreement(cert: Any) -> str | None:
    """Say why the status and the last check differ, when they do."""
    verdict = cert.verdict_status
    if verdict is None or verdict == cert.status:
        return None
    if cert.status in ("revoked", "expired"):
        return (f"the status stays {cert.status}: it is final, a later check ({verdict}, e.g. "
                "with other revocation data or policy) does not undo it")
    if cert.status == "approved" and verdict in ("revoked", "expired"):
        return (f"the last check found it {verdict}: the status follows at the next "
                "`idm refresh` or when the agent checks it")
    return None


@click.command("events")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event per line.")
@click.option("--certificate", metavar="SHA256", help="Only the events of this certificate.")
@click.option("-n", "--limit", type=click.IntRange(min=1), help="Only the newest N events.")
@pass_app
def events_command(
    app: AppContext, as_json: bool, certificate: str | None, limit: int | None
) -> None:
    """The event log: every identity's enrollment, approval, supersession, revocation."""
    inv = app.inventory()
    sha = None
    if certificate:
        cert = inv.certificate(certificate)
        if cert is None:
            raise UserError(f"no certificate {certificate} in the inventory")
        sha = cert.sha256
    events = inv.events(certificate=sha, limit=limit)
    if as_json:
        for e in events:
            print_json(e.as_dict())
        return
    print_table(
        ["TIME (UTC)", "EVENT", "CERTIFICATE", "TOKEN", "REASON", "COMMAND"],
        [
            (f"{e.time:%Y-%m-%d %H:%M:%S}", e.kind, _short(e.certificate) if e.certificate else "-",
             e.token_id or "-", e.reason or "", e.command or "")
            for e in events
        ],
    )


@click.group("db")
def db_group() -> None:
    """Inventory database maintenance."""


@db_group.command("upgrade")
@click.option("--json", "as_json", is_flag=True, help="Print {url, from, to} as JSON.")
@pass_app
def db_upgrade(app: AppContext, as_json: bool) -> None:
    """Create the inventory, or migrate it to the newest schema (safe to run again)."""
    from idm.identity.inventory.store import Inventory, InventoryError

    try:
        inv = Inventory(app.db_url, upgrade=False)
        before, after = inv.upgrade()
    except InventoryError as exc:
        raise UserError(str(exc)) from None
    if as_json:
        print_json({"url": inv.display_url, "from": before, "to": after})
    elif before == after:
        say(f"{inv.display_url}: schema is current (revision {after})")
    else:
        say(f"{inv.display_url}: schema upgraded from {before or 'empty'} to {after}")
    inv.close()
