"""`idm doctor`: check this host's set-up and say what to fix, one line per finding."""

from __future__ import annotations

import os

import click

from idm.cli.context import AppContext
from idm.cli.output import paint, print_json
from idm.identity.display import printable

pass_app = click.make_pass_decorator(AppContext)


@click.command("doctor")
@click.option("--sshd-config", "sshd_config", metavar="FILE", default="/etc/ssh/sshd_config",
              show_default=True, help="sshd's configuration, read with `sshd -T -f FILE`.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object: {ok, checks: [{check, status, detail, fix}]}.")
@pass_app
def doctor_command(app: AppContext, sshd_config: str, as_json: bool) -> None:
    """Check the set-up and say what to fix.

    Trust anchors configured and readable, PKCS#11 providers loadable, the inventory;
    where sshd runs `idm authorized-keys`: the helper's path as sshd demands it (root's,
    not writable by group or others up to /), the AuthorizedKeysCommandUser running it
    and reading the snapshot (as root only), the snapshot fresh; syslog; the agent behind
    SSH_AUTH_SOCK. Exit status 0 when nothing failed, 1 otherwise (warnings do not fail).
    """
    from idm.identity.doctor import FAIL, run_checks
    from idm.identity.inventory.store import open_inventory

    findings = run_checks(app.config, lambda: open_inventory(app.db_url, create=False),
                          env=os.environ, sshd_config=sshd_config)
    failed = any(f.status == FAIL for f in findings)
    if as_json:
        print_json({"ok": not failed, "checks": [f.as_dict() for f in findings]})
    else:
        hues = {"ok": "green", "fail": "red", "warn": "yellow"}
        for f in findings:
            status = paint(f"{f.status:5}", hues.get(f.status), bold=f.status == "fail")
            fix = f"; fix: {f.fix}" if f.fix and f.status != "ok" else ""
            click.echo(f"{status} {printable(f'{f.check}: {f.detail}{fix}')}")
    click.get_current_context().exit(1 if failed else 0)
