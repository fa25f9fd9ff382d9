"""The `idm` command: global options, lazily loaded command groups, error handling.

Subcommands are imported only when they run, so `idm --help` and quick commands do not
pay for SQLAlchemy, pyhanko-certvalidator or python-pkcs11.
"""

from __future__ import annotations

import importlib
import sys
import traceback

import click

from idm.cli.context import AppContext
from idm.cli.output import UserError, say

# name -> "module:attribute" of a click command; one line per command.
COMMANDS: dict[str, str] = {
    "list": "idm.cli.inventory:list_command",
    "status": "idm.cli.status:status_command",
    "show": "idm.cli.inventory:show_command",
    "events": "idm.cli.inventory:events_command",
    "db": "idm.cli.inventory:db_group",
    "tokens": "idm.cli.tokens:tokens_command",
    "objects": "idm.cli.tokens:objects_command",
    "enroll": "idm.cli.enroll:enroll_command",
    "token": "idm.cli.lifecycle:token_group",
    "forget": "idm.cli.lifecycle:forget_command",
    "export": "idm.cli.transfer:export_command",
    "import": "idm.cli.transfer:import_command",
    "verify": "idm.cli.verify:verify",
    "agent": "idm.cli.agent:agent",
    "refresh": "idm.cli.server:refresh_command",
    "allow": "idm.cli.server:allow_command",
    "krl": "idm.cli.server:krl_command",
    "authorized-keys": "idm.cli.server:authorized_keys_command",
    "doctor": "idm.cli.doctor:doctor_command",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on use (their help text on `--help` too)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        command: click.Command = getattr(importlib.import_module(module), attr)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(None, "--version", prog_name="idm", package_name="x509-idm")
@click.option(
    "--db",
    "db",
    metavar="URL",
    help="Inventory database (SQLAlchemy URL). Default: IDM_DB, the configuration's `db`, "
    "else $XDG_DATA_HOME/idm/inventory.sqlite.",
)
@click.option(
    "--config",
    "config_path",
    metavar="FILE",
    help="Configuration file. Default: IDM_CONFIG, else $XDG_CONFIG_HOME/idm/config.toml.",
)
@click.option("-v", "--verbose", is_flag=True, help="Show a traceback with an error.")
@click.pass_context
def cli(ctx: click.Context, db: str | None, config_path: str | None, verbose: bool) -> None:
    """idm: X.509 identities for SSH keys on smartcards.

    Keeps an inventory of tokens and certificates, validates every certificate (chain,
    CRL, OCSP) before its key is used, serves approved identities through an SSH agent,
    and authorizes sshd logins by certificate.
    """
    app = AppContext(config_path=config_path, db_option=db, verbose=verbose)
    if config_path is not None:
        app.config  # noqa: B018 - a file named on the command line must exist and parse
    ctx.obj = app
    ctx.call_on_close(app.close)


def run(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors exit 2 with one line, tracebacks only with -v."""
    args = sys.argv[1:] if argv is None else argv
    verbose = any(a in ("-v", "--verbose") for a in args)
    try:
        # Without standalone mode, click returns the code of ctx.exit(n) instead of raising.
        code = cli.main(args=args, prog_name="idm", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("idm: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        if verbose and isinstance(exc, UserError):
            traceback.print_exc()
        exc.show()
        sys.exit(exc.exit_code)
    except BrokenPipeError:
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - the last line of defence for one-line errors
        if verbose:
            traceback.print_exc()
        if _is_inventory_error(exc):
            # The inventory's own errors are one line the user can act on (a database
            # URL, a full disk, a fingerprint that names nothing): exit 2 like UserError.
            UserError(str(exc)).show()
            sys.exit(UserError.exit_code)
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        say(f"idm: error: {message} (run with -v for details)", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def _is_inventory_error(exc: Exception) -> bool:
    # Looked up, not imported: when the inventory module was never loaded, nothing raised
    # its error, and importing it here would load SQLAlchemy for nothing.
    store = sys.modules.get("idm.identity.inventory.store")
    return store is not None and isinstance(exc, store.InventoryError)

