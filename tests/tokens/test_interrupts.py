"""Ctrl-C stops idm (exit 130) at every PIN prompt, and an interrupted
`idm enroll --new-key` leaves no key on the card.

Ctrl-C is typed on a pseudo-terminal (the line discipline sends SIGINT to the command's
process group, as for a person at a terminal), except where noted.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.softhsm import SoftHSM, softhsm
from tests.terminal import IDM, WAIT_CEILING, Terminal

__all__ = ["softhsm"]

pytestmark = pytest.mark.softhsm

CTRL_C = b"\x03"


def environment(**extra: str) -> dict[str, str]:
    """This process's environment (SOFTHSM2_CONF) without a display or askpass."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DISPLAY", "WAYLAND_DISPLAY", "SSH_ASKPASS", "SSH_ASKPASS_REQUIRE")}
    env.update(extra)
    return env


def wait_until(condition, what: str) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + WAIT_CEILING
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


def blocked_on_fifo(pid: int) -> bool:
    """The process is waiting in open() of a FIFO for the other side."""
    try:
        return Path(f"/proc/{pid}/wchan").read_text() == "wait_for_partner"
    except OSError:
        return False


def assert_stopped(term: Terminal, code: int) -> None:
    assert code == 130, term.output
    assert "idm: interrupted" in term.output
    assert "TYPE" not in term.output  # the listing never ran


def test_ctrl_c_at_the_terminal_pin_prompt_stops_objects(
    softhsm: SoftHSM, tmp_path: Path
) -> None:
    card = softhsm.init_token("card-a", pin="1111")
    command = [*IDM, "--db", f"sqlite:///{tmp_path / 'i.sqlite'}", "objects", card.uri]
    with Terminal(command, env=environment()) as term:
        term.expect("Enter PIN for token 'card-a'")
        term.send(CTRL_C)
        assert_stopped(term, term.wait())
    assert "private keys not listed" not in term.output


def test_ctrl_c_while_askpass_asks_stops_objects(softhsm: SoftHSM, tmp_path: Path) -> None:
    card = softhsm.init_token("card-a", pin="1111")
    asked = tmp_path / "asked"
    askpass = tmp_path / "askpass"
    askpass.write_text(f"#!/bin/sh\ntouch {asked}\nsleep 60\necho 1111\n")
    askpass.chmod(0o755)
    env = environment(SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force")
    command = [*IDM, "--db", f"sqlite:///{tmp_path / 'i.sqlite'}", "objects", card.uri]
    with Terminal(command, env=env) as term:
        wait_until(asked.exists, "askpass was started")
        term.send(CTRL_C)
        assert_stopped(term, term.wait())


def test_a_fifo_as_pin_source_never_holds_objects(softhsm: SoftHSM, tmp_path: Path) -> None:
    """A pin-source must be a regular file: a FIFO is refused at once, with no wait for a
    writer that Ctrl-C would have to end (tests/test_hostile_inputs.py has the others)."""
    card = softhsm.init_token("card-a", pin="1111")
    fifo = tmp_path / "pin"
    os.mkfifo(fifo, 0o600)
    command = [*IDM, "--db", f"sqlite:///{tmp_path / 'i.sqlite'}", "objects",
               f"{card.uri}?pin-source={fifo}"]
    with Terminal(command, env=environment()) as term:
        code = term.wait()
    assert "a FIFO, not a regular file" in term.output, term.output
    assert code == 0 and "private keys not listed" in term.output  # public objects only


def test_ctrl_c_after_new_key_leaves_no_key_on_the_card(
    idm, softhsm: SoftHSM, tmp_path: Path
) -> None:
    card = softhsm.init_token("card-a", pin="1111")
    csr = tmp_path / "csr.pem"
    os.mkfifo(csr)  # writing the CSR waits for a reader: the key exists by then
    command = [*IDM, "--db", idm.db, "enroll", "--token", card.uri_with_pin, "--new-key",
               "ec-p256", "--subject", "CN=alice", "--csr", str(csr)]
    with Terminal(command, env=environment()) as term:
        wait_until(lambda: blocked_on_fifo(term.proc.pid), "idm writes the CSR")
        before = softhsm.pkcs11_tool("--list-objects", "--type", "privkey", token=card,
                                     login=True).stdout
        assert "Private Key Object" in before  # generated, then interrupted
        term.send(CTRL_C)
        code = term.wait()
    assert code == 130, term.output
    code, out, err = idm("objects", card.uri_with_pin, "--json")
    assert code == 0, err
    assert out == ""  # neither the private nor the public key is left
    assert "without a certificate" not in err
    code, _, err = idm("list")
    assert code == 2 and "no inventory at" in err  # nothing was enrolled or even created
