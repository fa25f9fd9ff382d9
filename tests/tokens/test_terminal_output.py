"""What idm's tables look like on an 80-column terminal, into a pipe, and with NO_COLOR:
`idm events`, `idm objects`, `idm list` and `idm status` on a SoftHSM2 card."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.sample_ca_fixture import make_sample_ca
from tests.softhsm import SoftHSM, softhsm
from tests.terminal import IDM, Terminal
from tests.tokens.test_lifecycle import card_with, enroll

__all__ = ["softhsm"]

pytestmark = pytest.mark.softhsm

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def on_terminal(args: list[str], **env: str) -> str:
    environment = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    environment.update(env)
    with Terminal([*IDM, *args], env=environment, columns=80) as term:
        assert term.wait() == 0, term.output
    return term.output.replace("\r\n", "\n")


def widest(text: str) -> int:
    return max(len(ANSI.sub("", line)) for line in text.splitlines())


def test_tables_fit_80_columns_and_pipes_get_them_whole(
    idm, softhsm: SoftHSM, tmp_path: Path
) -> None:
    ca = make_sample_ca(tmp_path)
    card = card_with(softhsm, ca, "a-card-with-a-rather-long-label", "alice")
    sha = enroll(idm, card, ca)
    db = ["--db", idm.db]
    # an event whose recorded command line is long: the events table is then wider than 80
    subprocess.run([*IDM, *db, "allow", "alice", "--subject",
                    "CN=alice,OU=Platform Engineering and Operations,O=idm demo,C=XX"],
                   capture_output=True, check=True, stdin=subprocess.DEVNULL)
    commands = [[*db, "events"], [*db, "objects", card.uri_with_pin], [*db, "list"],
                [*db, "status"]]

    piped = {tuple(c): subprocess.run([*IDM, *c], capture_output=True, text=True, check=True,
                                      stdin=subprocess.DEVNULL).stdout for c in commands}
    # Into a pipe nothing is fitted: the 9 columns of `objects` and the long command run past 80
    assert widest(piped[tuple(commands[0])]) > 80 and widest(piped[tuple(commands[1])]) > 80
    assert all("\x1b" not in out and "…" not in out for out in piped.values())
    assert "object=alice;type=private;id=%01" in piped[tuple(commands[1])]

    for command in commands:
        shown = on_terminal(command)
        assert widest(shown) <= 80, (command, shown)
        assert "\x1b[1m" in shown or command[-1] == "status", command  # bold headers
    events = on_terminal(commands[0])
    # the certificate column shortened with an ellipsis (the whole value is in --json)
    assert re.search(sha[:8] + "[0-9a-f]*…", events), events
    objects = ANSI.sub("", on_terminal(commands[1]))
    # 9 columns do not fit 80: one block per object, the URI wrapped after its semicolons
    assert "SSH FINGERPRINT  SHA256:" in objects
    uri = objects[objects.index("URI  ") + 5:].split("\n\n")[0]
    assert "".join(part.strip() for part in uri.splitlines()).startswith(
        "pkcs11:token=a-card-with-a-rather-long-label;")
    listing = ANSI.sub("", on_terminal(commands[2]))
    assert "CN=alice,O=idm" in listing and "demo,C=XX" in listing  # the subject wrapped

    plain = on_terminal(commands[0], NO_COLOR="1")
    assert "\x1b" not in plain and widest(plain) <= 80
