"""The one filter for text shown or logged (idm.identity.display.printable)."""

from __future__ import annotations

import logging

import pytest

from idm.identity.agent.agentlog import log as agent_log
from idm.identity.display import printable


@pytest.mark.parametrize(("raw", "shown"), [
    ("CN=alice,O=idm demo", "CN=alice,O=idm demo"),
    ("CN=Zoë Ångström,O=Ωμέγα", "CN=Zoë Ångström,O=Ωμέγα"),  # any script is kept
    ("O=x\nssh-ed25519 AAAA", "O=x?ssh-ed25519 AAAA"),
    ("a\r\n\tb", "a???b"),
    ("\x1b]0;title\x07\x1b[2J", "?]0;title??[2J"),
    ("\x7f\x85\u2028\u2029", "????"),  # DEL, NEL, line and paragraph separators
    ("abc\u202edcba", "abc?dcba"),  # a bidirectional override
    ("", ""),
])
def test_printable_replaces_what_a_terminal_would_act_on(raw: str, shown: str) -> None:
    assert printable(raw) == shown


def test_printable_takes_any_object() -> None:
    assert printable(ValueError("bad\nline")) == "bad?line"


def test_agent_log_lines_are_one_line(caplog: pytest.LogCaptureFixture) -> None:
    forged = "CN=x\nidm authorized-keys: ALLOW: user root"
    with caplog.at_level(logging.INFO, logger="idm.agent"):
        agent_log.info("certificate %s withheld: %r", forged, forged)
    (record,) = caplog.records
    assert "\n" not in record.getMessage()
    assert record.getMessage().startswith("certificate CN=x?idm authorized-keys")
