"""PIN acquisition rules (OpenSSH askpass conventions), pin-source files, PIN state words."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from idm.identity.tokens.errors import PinCancelled, PinUnavailable
from idm.identity.tokens.pin import (
    CKF_LOGIN_REQUIRED,
    CKF_PROTECTED_AUTHENTICATION_PATH,
    CKF_USER_PIN_COUNT_LOW,
    CKF_USER_PIN_FINAL_TRY,
    CKF_USER_PIN_INITIALIZED,
    CKF_USER_PIN_LOCKED,
    ChainedPin,
    PinRequest,
    PinState,
    PromptPin,
    UriPin,
    choose_prompt,
    default_pin_provider,
    read_pin_source,
)
from idm.identity.tokens.uri import Pkcs11Uri, TokenIdentity

CARD = TokenIdentity("Vendor", "Model", "0001", "card")
OTHER = TokenIdentity("Vendor", "Model", "0002", "other")
OK = PinState(CKF_LOGIN_REQUIRED | CKF_USER_PIN_INITIALIZED)


@pytest.mark.parametrize(
    ("env", "interactive", "tty", "expected"),
    [
        # interactive command on a terminal: the terminal, unless askpass is preferred
        ({}, True, True, "tty"),
        ({"DISPLAY": ":0"}, True, True, "tty"),
        ({"DISPLAY": ":0", "SSH_ASKPASS_REQUIRE": "prefer"}, True, True, "askpass"),
        ({"SSH_ASKPASS_REQUIRE": "prefer"}, True, True, "tty"),  # prefer needs a display
        ({"SSH_ASKPASS_REQUIRE": "force"}, True, True, "askpass"),  # force does not
        # no terminal: askpass if allowed
        ({"DISPLAY": ":0"}, True, False, "askpass"),
        ({"WAYLAND_DISPLAY": "wayland-0"}, True, False, "askpass"),
        ({"DISPLAY": ""}, True, False, None),
        ({}, True, False, None),
        ({"DISPLAY": ":0", "SSH_ASKPASS_REQUIRE": "never"}, True, False, None),
        # background process (agent): never the terminal
        ({}, False, True, None),
        ({"DISPLAY": ":0"}, False, True, "askpass"),
        ({"SSH_ASKPASS_REQUIRE": "force"}, False, False, "askpass"),
        ({"DISPLAY": ":0", "SSH_ASKPASS_REQUIRE": "never"}, False, True, None),
    ],
)
def test_prompt_choice_follows_openssh(
    env: dict[str, str], interactive: bool, tty: bool, expected: str | None
) -> None:
    assert choose_prompt(env, interactive=interactive, tty=tty) == expected


def _askpass(tmp_path: Path, body: str) -> str:
    script = tmp_path / "askpass"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    return str(script)


def test_askpass_program_gets_the_prompt_and_returns_the_pin(tmp_path: Path) -> None:
    seen = tmp_path / "prompt.txt"
    program = _askpass(tmp_path, f'printf "%s" "$1" > {seen}; echo 4711')
    provider = PromptPin(
        interactive=False, env={"SSH_ASKPASS": program, "SSH_ASKPASS_REQUIRE": "force"}
    )
    state = PinState(OK.flags | CKF_USER_PIN_FINAL_TRY)
    assert provider(PinRequest(CARD, state)) == "4711"
    prompt = seen.read_text()
    assert "'card'" in prompt and "0001" in prompt and "FINAL TRY" in prompt


def test_askpass_cancel_is_reported(tmp_path: Path) -> None:
    program = _askpass(tmp_path, "exit 1")
    provider = PromptPin(interactive=False, env={"SSH_ASKPASS": program, "DISPLAY": ":0"})
    with pytest.raises(PinCancelled, match="cancelled"):
        provider(PinRequest(CARD, OK))


def test_no_way_to_ask_says_what_to_do() -> None:
    provider = PromptPin(interactive=False, env={})
    with pytest.raises(PinUnavailable, match="DISPLAY.*pin-source"):
        provider(PinRequest(CARD, OK))


def test_tty_prompt_used_for_interactive_commands() -> None:
    asked: list[str] = []
    provider = PromptPin(
        interactive=True,
        env={},
        tty_check=lambda: True,
        tty_reader=lambda prompt: asked.append(prompt) or "9999",
    )
    assert provider(PinRequest(CARD, OK)) == "9999"
    assert asked and "card" in asked[0]


def test_pin_source_file_and_file_uri(tmp_path: Path) -> None:
    pin_file = tmp_path / "my pin"
    pin_file.write_text("2468\n")
    pin_file.chmod(0o600)
    assert read_pin_source(str(pin_file)) == "2468"
    assert read_pin_source("file://" + str(pin_file).replace(" ", "%20")) == "2468"
    pin_file.chmod(0o644)
    with pytest.raises(PinUnavailable, match="chmod 600"):
        read_pin_source(str(pin_file))
    with pytest.raises(PinUnavailable, match="cannot read"):
        read_pin_source(str(tmp_path / "missing"))
    with pytest.raises(PinUnavailable, match="only a file path"):
        read_pin_source("|/bin/echo 1234")


def test_uri_pin_is_only_given_to_its_own_token(tmp_path: Path) -> None:
    uri = Pkcs11Uri.parse("pkcs11:token=card;serial=0001?pin-value=1111")
    provider = UriPin(uri)
    assert provider(PinRequest(CARD, OK)) == "1111"
    with pytest.raises(PinUnavailable, match="another token"):
        provider(PinRequest(OTHER, OK))
    # the chained default never falls back to prompting with the other token's PIN
    chained = ChainedPin(UriPin(uri), PromptPin(interactive=False, env={}))
    with pytest.raises(PinUnavailable, match="another token"):
        chained(PinRequest(OTHER, OK))


def test_default_provider_prefers_uri_pin_source(tmp_path: Path) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text("1357")
    os.chmod(pin_file, 0o600)
    uri = Pkcs11Uri(token="card", pin_source=str(pin_file))
    assert default_pin_provider(uri, interactive=False, env={})(PinRequest(CARD, OK)) == "1357"


@pytest.mark.parametrize(
    ("extra", "short", "words"),
    [
        (0, "ok", "PIN ok"),
        (CKF_USER_PIN_COUNT_LOW, "count-low", "fewer tries are left"),
        (CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_FINAL_TRY, "final-try", "one more wrong PIN locks"),
        (CKF_USER_PIN_LOCKED, "locked", "locked after too many wrong PINs"),
        (CKF_PROTECTED_AUTHENTICATION_PATH, "pin-pad", "PIN pad"),
    ],
)
def test_pin_state_in_words(extra: int, short: str, words: str) -> None:
    state = PinState(OK.flags | extra)
    assert state.short == short
    assert words in state.describe()
