"""`idm list`, `idm show`, `idm events`, `idm db upgrade`: reading the inventory."""

from __future__ import annotations

import click

from idm.cli.context import AppContext
from idm.cli.output import UserError, print_json, print_table
from idm.identity.inventory import CERT_STATUSES

pass_app = click.make_pass_decorator(AppContext)


def _short(fp: str) -> str:
    return fp[:16]


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: tokens and certificates.")
@click.option("--status", type=click.Choice(CERT_STATUSES),
              help="Only certificates with this status.")
@pass_app
def list_command(app: AppContext, as_json: bool, status: str | None) -> None:
    """List tokens and certificates in the inventory, with their status."""
    inv = app.inventory()
    tokens = inv.tokens()
    certs = inv.certificates(status=status)
    if as_json:
        print_json(
            {
                "tokens": [t.as_dict() for t in tokens],
                "certificates": [c.as_dict() for c in certs],
            }
        )
        return
    labels = {t.id: t.label for t in tokens}
    click.echo(f"Tokens ({len(tokens)}):")
    print_table(
        ["ID", "LABEL", "MANUFACTURER", "MODEL", "SERIAL", "STATE", "LAST SEEN"],
        [
            (t.id, t.label, t.manufacturer, t.model, t.serial, t.state,
             t.last_seen.strftime("%Y-%m-%d %H:%M"))
            for t in tokens
        ],
    )
    click.echo(f"\nCertificates ({len(certs)}):")
    print_table(
        ["SHA256", "STATUS", "SUBJECT", "KEY", "TOKEN", "NOT AFTER"],
        [
            (_short(c.sha256), c.status, c.subject, c.key_type,
             labels.get(c.token_id, "-") if c.token_id else "-",
             c.not_after.strftime("%Y-%m-%d"))
            for c in certs
        ],
    )


@click.command("show")
@click.argument("fingerprint")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.option("--pem", is_flag=True, help="Print the certificate in PEM instead.")
@pass_app
def show_command(app: AppContext, fingerprint: str, as_json: bool, pem: bool) -> None:
    """Show one certificate: FINGERPRINT is its SHA-256 (or a unique prefix of 8+ hex
    digits) or its key's SSH fingerprint SHA256:…"""
    from idm.identity.inventory.store import InventoryError

    inv = app.inventory()
    try:
        cert = inv.certificate(fingerprint)
    except InventoryError as exc:
        raise UserError(str(exc)) from None
    if cert is None:
        raise UserError(f"no certificate {fingerprint} in the inventory (see `idm list`)")
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
        ("Last check", f"{cert.verdict_status} at {cert.verified_at:%Y-%m-%d %H:%M}"
         if cert.verified_at else "never"),
    ]
    for name, value in rows:
        click.echo(f"{name + ':':13} {value}")
    click.echo("Events:")
    for e in events:
        why = f" ({e.reason})" if e.reason else ""
        click.echo(f"  {e.time:%Y-%m-%d %H:%M:%S}  {e.kind}{why}  [{e.command or '-'}]")


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
        ["TIME", "EVENT", "CERTIFICATE", "TOKEN", "REASON", "COMMAND"],
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
        click.echo(f"{inv.display_url}: schema is current (revision {after})")
    else:
        click.echo(f"{inv.display_url}: schema upgraded from {before or 'empty'} to {after}")
    inv.close()
