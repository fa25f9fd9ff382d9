"""Server-side commands: `idm refresh`, `idm allow`, `idm krl`.

(`idm authorized-keys` itself is dispatched by cli/entry.py before click is imported.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from idm.cli.context import AppContext, command_line
from idm.cli.output import Progress, UserError, print_json, print_table, say, warn


@click.command("refresh")
@click.option("--snapshot", "snapshot", metavar="FILE",
              help="Write this snapshot instead of [server] snapshot (its folder must exist).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object with the result.")
@click.pass_obj
def refresh_command(app: AppContext, snapshot: str | None, as_json: bool) -> None:
    """Re-validate approved certificates and write the login snapshot.

    Asks OCSP responders and CRL distribution points afresh, marks revoked and expired
    certificates, maps valid ones to users and replaces the snapshot that
    `idm authorized-keys` reads (atomically). Run it from a timer. Reports which users
    and certificates entered or left the snapshot, and why.

    \b
    Exit status:
      0  the snapshot was written and every approved certificate was checked
      2  nothing was written (the inventory, configuration or snapshot folder is
         unusable); the previous snapshot stays in place until its deadline
      3  the snapshot was written, but approved certificates could not be checked
         (their revocation status could not be had): they authorize nothing now
    """
    from idm.identity.server.refresh import RefreshError, previous_deadline, refresh

    config = app.config
    path = Path(snapshot) if snapshot else config.server.snapshot
    try:
        inventory = app.inventory()
    except UserError as exc:
        message = f"refresh failed: {exc.format_message()}; {previous_deadline(path)}"
        raise UserError(message) from None
    with Progress() as bar:
        def progress(done: int, total: int, subject: str) -> None:
            bar.update(f"refresh: checking certificate {done + 1} of {total}: {subject}")

        try:
            result = refresh(inventory, config, snapshot_path=path, command=command_line(),
                             progress=progress)
        except RefreshError as exc:
            raise UserError(f"refresh failed: {exc}") from None
    if as_json:
        print_json(result.as_dict())
    else:
        _refresh_report(result)
    for warning in result.warnings:
        warn(warning)
    for c in result.from_cache:
        warn(f"{c.certificate[:16]} {c.subject}: checked from the cache: {c.reason}")
    if result.unchecked:
        say(f"idm: error: {len(result.unchecked)} approved certificate(s) could not be "
            f"checked and authorize nothing now (exit status {result.exit_status}):", err=True)
        for c in result.unchecked:
            say(f"  {c.certificate[:16]} {c.subject}: {c.reason}", err=True)
    click.get_current_context().exit(result.exit_status)


def _refresh_report(result: Any) -> None:
    """The human report of `idm refresh`: the totals, then what entered and left, and why."""
    data = result.as_dict()
    say(
        f"snapshot {data['snapshot']}: {result.snapshot.entries} key line(s) for "
        f"{result.users} user(s) from {result.authorized} of {result.checked} approved "
        f"certificate(s); valid until {data['deadline']}"
    )
    diff = result.diff
    if not diff.previous:
        click.echo("no previous snapshot: every entry is new")
    if diff.users_entered:
        say("users who can now log in: " + ", ".join(diff.users_entered))
    if diff.users_left:
        say("users who can no longer log in: " + ", ".join(diff.users_left))
    moved = [("+", m) for m in diff.entered] + [("-", m) for m in diff.left]
    if moved:
        click.echo("\nSnapshot changes:")
        print_table(["", "CERTIFICATE", "USERS", "SUBJECT", "WHY"],
                    [(sign, m.certificate[:16], ",".join(m.users), m.subject, m.reason)
                     for sign, m in moved])
    if result.changes:
        click.echo("\nStatus changes:")
        print_table(["CERTIFICATE", "NOW", "SUBJECT", "REASON"],
                    [(c.certificate[:16], c.status, c.subject, c.reason) for c in result.changes])
    if result.left_out:
        click.echo("\nApproved but not in the snapshot:")
        print_table(["CERTIFICATE", "STATUS", "SUBJECT", "REASON"],
                    [(c.certificate[:16], c.status, c.subject, c.reason)
                     for c in result.left_out])


@click.command("allow")
@click.argument("user")
@click.option("--subject", "subject", metavar="DN",
              help="Certificates with this subject DN (RFC 4514, e.g. 'CN=alice,O=Example').")
@click.option("--principal", "principal", metavar="NAME",
              help="Certificates whose CN, SAN e-mail or SAN UPN is NAME.")
@click.option("--remove", is_flag=True, help="Take the authorization away instead.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object with the result.")
@click.pass_obj
def allow_command(
    app: AppContext, user: str, subject: str | None, principal: str | None, remove: bool,
    as_json: bool,
) -> None:
    """Let USER log in with certificates of a subject DN or principal name.

    Used by the "principals" mapping rule; takes effect at the next `idm refresh`.
    """
    from idm.identity.server.mapping import MappingError, parse_dn, valid_username

    if (subject is None) == (principal is None):
        raise UserError("give exactly one of --subject DN or --principal NAME")
    if not valid_username(user):
        raise UserError(f"{user!r} is not a valid user name")
    if subject is not None:
        try:
            parse_dn(subject)
        except MappingError as exc:
            raise UserError(str(exc)) from None
        kind, value = "subject", subject.strip()
    else:
        assert principal is not None
        kind, value = "principal", principal.strip()
        if not value or not value.isprintable():
            raise UserError("--principal needs a non-empty printable name")
    inventory = app.inventory(create=True)
    if remove:
        changed = inventory.disallow(user, kind, value, command=command_line())
    else:
        changed = inventory.allow(user, kind, value, command=command_line())
    if as_json:
        print_json({"user": user, "kind": kind, "value": value,
                    "action": "remove" if remove else "allow", "changed": changed})
        return
    verb = ("removed" if changed else "was not there") if remove else (
        "added" if changed else "already there")
    say(f"{user}: {kind} {value}: {verb} (takes effect at the next `idm refresh`)")


@click.command("krl")
@click.option("--output", "output", required=True,
              metavar="FILE",
              help="Where to write the KRL (replaced atomically; its folder must exist).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object with the result.")
@click.pass_obj
def krl_command(app: AppContext, output: str, as_json: bool) -> None:
    """Write an OpenSSH KRL of the keys of revoked and superseded certificates.

    For sshd_config `RevokedKeys FILE`; check a key with `ssh-keygen -Q -f FILE key.pub`.
    """
    from idm.identity.outputpath import OutputPathError, check_output_path
    from idm.identity.server.krl import build_krl, revoked_blobs, write_krl

    try:
        check_output_path(output)
    except OutputPathError as exc:
        raise UserError(str(exc)) from None
    blobs = revoked_blobs(app.inventory())
    try:
        write_krl(output, build_krl(blobs))
    except OSError as exc:
        raise UserError(f"cannot write {output}: {exc.strerror}") from None
    if as_json:
        print_json({"output": output, "keys": len(blobs)})
        return
    say(f"{output}: {len(blobs)} revoked key(s)")


@click.command(
    "authorized-keys",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                      "help_option_names": []},
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def authorized_keys_command(app: AppContext, args: tuple[str, ...]) -> None:
    """sshd's AuthorizedKeysCommand: USER [KEYTYPE KEYBLOB] (see `idm authorized-keys
    --help`). Run as the first word (`idm authorized-keys …`) it skips this CLI entirely."""
    import sys

    from idm.identity.server.authorized_keys import main as helper_main

    argv = list(args)
    if app.config_path and "--config" not in argv:
        argv = ["--config", app.config_path, *argv]
    sys.exit(helper_main(argv))
