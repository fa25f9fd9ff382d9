"""Console entry point.

sshd runs `idm authorized-keys` at every login attempt, so that path is dispatched before
click and the rest of the CLI are imported (see ARCHITECTURE.md, "Login-time path is tiny").
"""

import sys


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["authorized-keys"]:
        from idm.identity.server.authorized_keys import main as helper_main

        sys.exit(helper_main(argv[1:]))
    from idm.cli.main import run

    run()
