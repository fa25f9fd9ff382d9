"""The end of a token's or a certificate's life: `idm token retire`, `idm token delete-key`,
`idm forget`.

Each asks first when something would be lost (a person at a terminal answers; a script
gives --yes, or is refused with the reason), writes events, and has --json.
"""

from __future__ import annotations

from typing import Any

import click

from idm.cli.context import AppContext, command_line
from idm.cli.output import UserError, confirm, print_json, say
from idm.cli.tokens import open_providers, provider_option

pass_app = click.make_pass_decorator(AppContext)

yes_option = click.option("--yes", "-y", is_flag=True, help="Do it without asking.")
json_option = click.option("--json", "as_json", is_flag=True, help="One JSON object.")


@click.group("token")
def token_group() -> None:
    """Retire a token, or delete a key without a certificate from one."""


def _find_token(app: AppContext, reference: str) -> Any:
    """The inventory token named by its id (see `idm list`) or by a pkcs11: URI."""
    from idm.identity.tokens.presence import identity_of
    from idm.identity.tokens.uri import UriError, parse_token_reference

    inventory = app.inventory()
    if reference.isdigit():
        record = inventory.token(int(reference))
        if record is None:
            raise UserError(f"no token with id {reference} in the inventory (see `idm list`)")
        return record
    try:
        uri = parse_token_reference(reference)
    except UriError as exc:
        raise UserError(f"{exc} (or give the token's id from `idm list`)") from None
    found = [t for t in inventory.tokens() if identity_of(t).matches(uri)]
    if not found:
        raise UserError(f"no token in the inventory matches {uri.redacted()} (see `idm list`)")
    if len(found) > 1:
        ids = ", ".join(str(t.id) for t in found)
        raise UserError(f"{uri.redacted()} matches {len(found)} tokens (ids {ids}); be precise")
    return found[0]


@token_group.command("retire")
@click.argument("token", metavar="ID|URI")
@click.option("--reason", metavar="TEXT", help="Why (recorded in the event log).")
@yes_option
@json_option
@pass_app
def retire_command(
    app: AppContext, token: str, reason: str | None, yes: bool, as_json: bool
) -> None:
    """Retire a token for good (lost, broken, handed back).

    ID|URI is the token's id from `idm list` or a pkcs11: URI naming it; it need not be
    inserted. Its approved and pending certificates become superseded: the agent stops
    offering them at once, servers refuse them after their next `idm refresh`. Asks
    first when it holds approved certificates. A lost card's certificates should also be
    revoked by the CA.
    """
    from idm.identity.tokens.presence import identity_of

    inventory = app.inventory()
    record = _find_token(app, token)
    name = identity_of(record)
    approved = [c for c in inventory.certificates(status="approved", token_id=record.id)]
    if approved and record.state != "retired":
        subjects = "; ".join(c.subject for c in approved)
        confirm("Retire it?", yes=yes,
                refusal=f"token {name} holds {len(approved)} approved certificate(s) ({subjects}) "
                        "that stop working when it is retired")
    after, withdrawn = inventory.retire_token(record.id, reason=reason, command=command_line())
    if as_json:
        print_json({"token": after.as_dict(), "changed": record.state != "retired",
                    "withdrawn": withdrawn})
        return
    if record.state == "retired":
        say(f"token {name} was retired already; nothing changed")
        return
    say(f"token {name} retired; {len(withdrawn)} certificate(s) withdrawn (superseded)")
    for sha in withdrawn:
        click.echo(f"  {sha[:16]}")


@token_group.command("delete-key")
@click.argument("key_uri", metavar="KEY-URI")
@provider_option
@yes_option
@json_option
@pass_app
def delete_key_command(
    app: AppContext, key_uri: str, providers: tuple[str, ...], yes: bool, as_json: bool
) -> None:
    """Delete a private key that has no certificate from a token (and its public key).

    KEY-URI names one private key, e.g. 'pkcs11:token=My%20Card;id=%01' (see the keys
    marked "no certificate" in `idm objects`). A key with a certificate on the token is
    refused. Logs in (asks for the PIN); asks before deleting, since it cannot be undone.
    """
    from idm.identity.tokens.errors import TokenError
    from idm.identity.tokens.pin import default_pin_provider
    from idm.identity.tokens.session import pair_objects
    from idm.identity.tokens.uri import UriError, parse_token_reference

    try:
        uri = parse_token_reference(key_uri)
    except UriError as exc:
        raise UserError(str(exc)) from None
    if not uri.names_object or uri.type not in (None, "private"):
        raise UserError("KEY-URI must name one private key: add id=… or object=… "
                        "(see `idm objects TOKEN-URI`)")
    provider_set = open_providers(app, providers)
    try:
        session = provider_set.open(uri.without_object(), default_pin_provider(uri))
        keys = [k for k in session.keys("private", login=True)
                if uri.matches_object(label=k.label, id=k.id, type="private")]
        if not keys:
            raise UserError(f"no private key on token {session.identity} matches "
                            f"{uri.redacted()}")
        if len(keys) > 1:
            raise UserError(f"{len(keys)} private keys on token {session.identity} match "
                            f"{uri.redacted()}; add id=… to name one")
        [key] = keys
        paired = [p.certificate for p in pair_objects(session.certificates(), [key])
                  if p.certificate is not None and p.private_key is not None]
        if paired:
            raise UserError(f"{key.uri} has a certificate on the token ({paired[0].subject}): "
                            "only keys without a certificate are deleted here")
        confirm("Delete it?", yes=yes,
                refusal=f"private key {key.uri} ({key.description}) will be deleted from token "
                        f"{session.identity}, which cannot be undone")
        count = session.delete_key(key)
    except TokenError as exc:
        raise UserError(str(exc)) from None
    if as_json:
        print_json({"key": str(key.uri), "objects_deleted": count})
        return
    say(f"deleted {key.uri} ({key.description}): {count} object(s)")


@click.command("forget")
@click.argument("fingerprint")
@yes_option
@json_option
@pass_app
def forget_command(app: AppContext, fingerprint: str, yes: bool, as_json: bool) -> None:
    """Remove a certificate from the inventory (e.g. one registered by mistake).

    FINGERPRINT is its SHA-256 (or a unique prefix of 8+ hex digits) or its key's SSH
    fingerprint. Its earlier events stay in the log; a `forgotten` event records it.
    Asks first when it is approved (the agent and servers would stop using it) or revoked
    or superseded (its key would leave `idm krl` and the snapshot's denied list).
    """
    from idm.cli.inventory import find_certificate

    inventory = app.inventory()
    cert = find_certificate(app, fingerprint)
    what = {
        "approved": "is approved: the agent stops offering it, and servers refuse it after "
                    "their next `idm refresh`",
        "revoked": "is revoked: its key leaves `idm krl` and the snapshot's denied list",
        "superseded": "is superseded: its key leaves `idm krl` and the snapshot's denied list",
    }.get(cert.status)
    if what:
        confirm("Forget it?", yes=yes,
                refusal=f"certificate {cert.sha256[:16]} ({cert.subject}) {what}")
    forgotten = inventory.forget_certificate(cert.sha256, command=command_line())
    if as_json:
        print_json({"forgotten": forgotten.sha256, "subject": forgotten.subject,
                    "status": forgotten.status})
        return
    say(f"forgot certificate {forgotten.sha256[:16]} ({forgotten.subject}, "
        f"was {forgotten.status})")
