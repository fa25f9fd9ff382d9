"""PIN acquisition and PIN state.

Rules (see docs/tokens.md, "PIN behaviour"):

* A PIN is asked for one token at a time. Every `PinRequest` carries the identity of the
  token it is for; a PIN taken from a URI (`pin-value`, `pin-source`) is only given to
  the token that URI names, so one token's PIN never reaches another token.
* idm never retries a wrong PIN on its own: the caller gets `PinIncorrect` with the
  token's PIN state in words and decides (a person may try again, a service must not).
* Where the prompt goes follows OpenSSH's `read_passphrase()`: askpass (`SSH_ASKPASS`,
  default /usr/bin/ssh-askpass) is allowed only when `DISPLAY` or `WAYLAND_DISPLAY` is
  set; `SSH_ASKPASS_REQUIRE=never` forbids it, `prefer` uses it whenever allowed, `force`
  uses it even without a display. Interactive commands otherwise prompt on /dev/tty;
  background processes (the agent) can only use askpass.
* A token with a protected authentication path (PIN pad) logs in without a PIN from us.
* Ctrl-C at a prompt (terminal or askpass) is never turned into a cancelled PIN: the
  KeyboardInterrupt stops the command (`idm` exits 130). Ctrl-D at the terminal or the
  askpass program's Cancel button is `PinCancelled`, which a command may survive.
* PINs are never logged, printed, or cached here (the session layer caches the logged-in
  session, not the PIN).
"""

from __future__ import annotations

import getpass
import os
import stat
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

from idm.identity.tokens.errors import PinCancelled, PinUnavailable
from idm.identity.tokens.uri import Pkcs11Uri, TokenIdentity

# CK_TOKEN_INFO flags (PKCS#11 v2.40, section 3.2).
CKF_LOGIN_REQUIRED = 0x00000004
CKF_USER_PIN_INITIALIZED = 0x00000008
CKF_PROTECTED_AUTHENTICATION_PATH = 0x00000100
CKF_USER_PIN_COUNT_LOW = 0x00010000
CKF_USER_PIN_FINAL_TRY = 0x00020000
CKF_USER_PIN_LOCKED = 0x00040000
CKF_USER_PIN_TO_BE_CHANGED = 0x00080000

DEFAULT_ASKPASS = "/usr/bin/ssh-askpass"


@dataclass(frozen=True)
class PinState:
    """The user-PIN state a token reports in its CK_TOKEN_INFO flags."""

    flags: int

    @property
    def login_required(self) -> bool:
        return bool(self.flags & CKF_LOGIN_REQUIRED)

    @property
    def initialized(self) -> bool:
        return bool(self.flags & CKF_USER_PIN_INITIALIZED)

    @property
    def protected_path(self) -> bool:
        """The token has a PIN pad or similar: the PIN does not go through idm."""
        return bool(self.flags & CKF_PROTECTED_AUTHENTICATION_PATH)

    @property
    def count_low(self) -> bool:
        return bool(self.flags & CKF_USER_PIN_COUNT_LOW)

    @property
    def final_try(self) -> bool:
        return bool(self.flags & CKF_USER_PIN_FINAL_TRY)

    @property
    def locked(self) -> bool:
        return bool(self.flags & CKF_USER_PIN_LOCKED)

    @property
    def to_be_changed(self) -> bool:
        return bool(self.flags & CKF_USER_PIN_TO_BE_CHANGED)

    @property
    def short(self) -> str:
        """One word for tables: locked, final-try, count-low, to-be-changed, ok, ..."""
        if self.locked:
            return "locked"
        if self.final_try:
            return "final-try"
        if self.count_low:
            return "count-low"
        if self.to_be_changed:
            return "to-be-changed"
        if not self.login_required:
            return "no-login"
        if not self.initialized:
            return "not-initialized"
        return "pin-pad" if self.protected_path else "ok"

    def describe(self) -> str:
        """The state in words, for error messages and prompts."""
        if self.locked:
            return (
                "the user PIN is locked after too many wrong PINs; unblock it with the SO PIN "
                "or PUK (e.g. pkcs11-tool --init-pin --login --login-type so)"
            )
        words: list[str] = []
        if self.final_try:
            words.append("final try: one more wrong PIN locks the token")
        elif self.count_low:
            words.append("a wrong PIN was entered since the last good login; fewer tries are left")
        if self.to_be_changed:
            words.append("the PIN must be changed before use")
        if not self.login_required:
            words.append("the token needs no login")
        elif not self.initialized:
            words.append("the user PIN is not initialized")
        if not words:
            words.append("PIN ok, no wrong tries recorded")
        if self.protected_path:
            words.append("PIN is entered on the token's own PIN pad")
        return "; ".join(words)


@dataclass(frozen=True)
class PinRequest:
    """A request for the user PIN of one token (never more than one token)."""

    token: TokenIdentity
    state: PinState
    context_specific: bool = False  # CKA_ALWAYS_AUTHENTICATE: a PIN for one signature
    key_label: str | None = None

    def prompt(self) -> str:
        """The prompt shown to the user; names the token and warns about the PIN state."""
        what = f"PIN for token {self.token.label!r} (serial {self.token.serial})"
        if self.context_specific:
            key = f" key {self.key_label!r}" if self.key_label else " this key"
            what = f"PIN again to sign with{key} on token {self.token.label!r}"
        warning = ""
        if self.state.final_try:
            warning = " [FINAL TRY: a wrong PIN locks the token]"
        elif self.state.count_low:
            warning = " [a wrong PIN was entered before; fewer tries left]"
        return f"Enter {what}{warning}: "


class PinProvider(Protocol):
    """Returns the PIN for `request.token`, or raises PinCancelled / PinUnavailable."""

    def __call__(self, request: PinRequest) -> str: ...


def read_pin_source(source: str) -> str:
    """Read a PIN from an RFC 7512 `pin-source`: a file path or a ``file:`` URI.

    The first line is the PIN. The file must be a regular file of at most 4 KiB, not
    readable by group or others, as OpenSSH demands of private keys.
    """
    if source.startswith("file:"):
        parts = urlsplit(source)
        if parts.netloc not in ("", "localhost"):
            raise PinUnavailable(f"pin-source {source!r}: only local file: URIs are supported")
        path = Path(unquote(parts.path))
    elif source.startswith("|") or ":" in source.split("/", 1)[0]:
        raise PinUnavailable(f"pin-source {source!r}: only a file path or file: URI is supported")
    else:
        path = Path(source)
    from idm.validator.inputfile import PIN_SOURCE_MAX_BYTES, InputFileError, read_input_file

    def private(_name: str, st: os.stat_result) -> None:
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise PinUnavailable(f"pin-source {path} is readable by others: chmod 600 it")

    try:
        data = read_input_file(path, "pin-source", PIN_SOURCE_MAX_BYTES, check=private)
    except InputFileError as exc:
        raise PinUnavailable(f"cannot read {exc}") from None
    pin = data.split(b"\n", 1)[0].rstrip(b"\r")
    if not pin:
        raise PinUnavailable(f"pin-source {path} is empty")
    try:
        return pin.decode("utf-8")
    except UnicodeDecodeError:
        raise PinUnavailable(f"pin-source {path} is not UTF-8 text") from None


@dataclass(frozen=True)
class UriPin:
    """The PIN given in a URI (`pin-value` or `pin-source`), for that URI's token only."""

    uri: Pkcs11Uri

    @property
    def available(self) -> bool:
        return self.uri.pin_value is not None or self.uri.pin_source is not None

    def __call__(self, request: PinRequest) -> str:
        if not self.available:
            raise PinUnavailable("the URI has no pin-value or pin-source")
        if not request.token.matches(self.uri):
            # Guard for "never send one token's PIN to another".
            raise PinUnavailable(f"the PIN in the URI is for another token than {request.token}")
        if self.uri.pin_value is not None:
            return self.uri.pin_value
        assert self.uri.pin_source is not None
        return read_pin_source(self.uri.pin_source)


def _tty_available() -> bool:
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return False
    os.close(fd)
    return True


def choose_prompt(env: Mapping[str, str], *, interactive: bool, tty: bool) -> str | None:
    """Where to ask, by OpenSSH's rules: "askpass", "tty", or None (nowhere).

    `interactive` is False for background processes (OpenSSH's RP_USE_ASKPASS), which
    never read the terminal.
    """
    allow_askpass = bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))
    use_askpass = False
    require = env.get("SSH_ASKPASS_REQUIRE", "").lower()
    if require == "force":
        use_askpass = allow_askpass = True
    elif require == "prefer":
        use_askpass = allow_askpass
    elif require == "never":
        allow_askpass = False
    if not interactive or not tty:
        use_askpass = True
    if use_askpass and allow_askpass:
        return "askpass"
    if interactive and tty:
        return "tty"
    return None


def run_askpass(program: str, prompt: str, env: Mapping[str, str]) -> str:
    """Run an askpass program with the prompt as argument; its stdout is the answer."""
    child_env = dict(env)
    child_env.pop("SSH_ASKPASS_PROMPT", None)  # unset means "ask for a secret"
    try:
        done = subprocess.run(
            [program, prompt],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=child_env,
            check=False,
        )
    except OSError as exc:
        raise PinUnavailable(
            f"cannot run askpass program {program!r}: {exc.strerror}; set SSH_ASKPASS"
        ) from None
    if done.returncode != 0:
        raise PinCancelled(f"PIN entry cancelled (askpass exited with status {done.returncode})")
    answer = done.stdout.decode("utf-8", "replace").rstrip("\r\n")
    if not answer:
        raise PinCancelled("empty PIN entered; nothing sent to the token")
    return answer


def tty_prompt(prompt: str) -> str:
    """Ask on /dev/tty without echo.

    End of input (Ctrl-D) cancels this PIN entry; Ctrl-C (KeyboardInterrupt) is not
    caught here: it stops the whole command, as it does everywhere else.
    """
    try:
        answer = getpass.getpass(prompt)
    except EOFError:
        raise PinCancelled("PIN entry cancelled") from None
    if not answer:
        raise PinCancelled("empty PIN entered; nothing sent to the token")
    return answer


@dataclass
class PromptPin:
    """Asks a person, through askpass or the terminal, following OpenSSH's rules."""

    interactive: bool = True
    env: Mapping[str, str] | None = None
    tty_check: Callable[[], bool] = _tty_available
    tty_reader: Callable[[str], str] = tty_prompt

    def __call__(self, request: PinRequest) -> str:
        env = os.environ if self.env is None else self.env
        where = choose_prompt(env, interactive=self.interactive, tty=self.tty_check())
        if where == "askpass":
            return run_askpass(env.get("SSH_ASKPASS") or DEFAULT_ASKPASS, request.prompt(), env)
        if where == "tty":
            return self.tty_reader(request.prompt())
        raise PinUnavailable(
            f"no way to ask for the PIN of token {request.token.label!r}: no terminal, and "
            "askpass needs DISPLAY/WAYLAND_DISPLAY (or SSH_ASKPASS_REQUIRE=force); or put "
            "pin-source=FILE in the token URI"
        )


@dataclass
class ChainedPin:
    """Use the URI's PIN when it has one (for its own token), else ask a person."""

    uri_pin: UriPin | None
    fallback: PinProvider | None

    def __call__(self, request: PinRequest) -> str:
        if self.uri_pin is not None and self.uri_pin.available:
            return self.uri_pin(request)
        if self.fallback is None:
            raise PinUnavailable(
                f"no PIN source for token {request.token.label!r}: give pin-source=FILE in "
                "the URI or run interactively"
            )
        return self.fallback(request)


def default_pin_provider(
    uri: Pkcs11Uri | None = None,
    *,
    interactive: bool = True,
    env: Mapping[str, str] | None = None,
) -> PinProvider:
    """The PIN provider commands use: URI pin first, then askpass/TTY per OpenSSH rules."""
    return ChainedPin(
        uri_pin=UriPin(uri) if uri is not None else None,
        fallback=PromptPin(interactive=interactive, env=env),
    )
