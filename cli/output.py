"""How the CLI speaks: one-line errors, compact JSON lines, plain tables.

Subjects, token labels, reasons and file names come from certificates, cards and users:
any of them may hold ESC sequences or newlines. Everything human-readable goes out through
`print_table`, `say`, `warn` or `UserError`, which pass it through
`idm.identity.display.printable` (the one filter shared with the agent and the sshd
helper); `print_json` keeps exact values.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import click

from idm.identity.display import printable


class UserError(click.ClickException):
    """A problem the user can fix: printed as one line, exit status 2, no traceback."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        say(f"idm: error: {self.format_message()}", err=True)


def say(text: str, *, err: bool = False) -> None:
    """One line for a person, made printable (see the module docstring)."""
    click.echo(printable(text), err=err)


def warn(text: str) -> None:
    """``idm: warning: TEXT`` on stderr, made printable."""
    say(f"idm: warning: {text}", err=True)


def confirm(question: str, *, yes: bool, refusal: str) -> None:
    """Go on when --yes was given or a person at the terminal answers yes.

    Without a terminal on stdin (a script, a timer) and without --yes: a UserError built
    from `refusal` (what would be lost). Answering no: "nothing changed", exit status 1.
    Ctrl-C at the question stops the command like anywhere else (exit 130).
    """
    if yes:
        return
    if not sys.stdin.isatty():
        raise UserError(f"{refusal}; give --yes to go ahead")
    if not click.confirm(printable(f"{refusal}. {question}"), default=False, err=True):
        click.echo("idm: nothing changed", err=True)
        raise click.exceptions.Exit(1)


def print_json(obj: Any) -> None:
    """One compact JSON value on one line (scripts read these line by line)."""
    click.echo(json.dumps(obj, sort_keys=False, default=str, separators=(",", ":")))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A left-aligned text table; an empty table prints only its headers."""
    cells = [[("" if c is None else printable(c)) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    line = "  ".join(f"{{:{w}}}" for w in widths)
    click.echo(line.format(*headers).rstrip())
    for row in cells:
        click.echo(line.format(*row).rstrip())


def terminal_width(stream: Any = None) -> int:
    """Columns of the terminal `stream` (default stdout) is on; $COLUMNS, else 80."""
    try:
        return os.get_terminal_size((stream or sys.stdout).fileno()).columns
    except (AttributeError, OSError, ValueError):
        return shutil.get_terminal_size().columns


class Progress:
    """One self-rewriting status line on stderr while the command waits, on a terminal only.

    A ticker adds the seconds spent on the current step, so a slow responder shows as a
    growing number instead of a frozen screen. Nothing is written when stderr is not a
    terminal (timers, pipes, logs get no escape codes).
    """

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self._text = ""
        self._started = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def __enter__(self) -> Progress:
        if self.enabled:
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        if self.enabled:
            with self._lock:
                self.stream.write("\r\x1b[K")
                self.stream.flush()

    def update(self, text: str) -> None:
        """Show `text` as the current step (its clock starts now)."""
        if not self.enabled:
            return
        with self._lock:
            self._text, self._started = printable(text), time.monotonic()
            self._draw()

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                if self._text:
                    self._draw()

    def _draw(self) -> None:
        waited = int(time.monotonic() - self._started)
        line = self._text + (f" ({waited} s)" if waited else "")
        width = terminal_width(self.stream) - 1
        if len(line) > width:
            line = line[: max(width - 1, 0)] + "…"
        self.stream.write("\r\x1b[K" + line)
        self.stream.flush()
