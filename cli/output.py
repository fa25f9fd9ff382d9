"""How the CLI speaks: one-line errors, compact JSON lines, tables that fit the terminal.

Subjects, token labels, reasons and file names come from certificates, cards and users:
any of them may hold ESC sequences or newlines. Everything human-readable goes out through
`print_table`, `say`, `say_wrapped`, `warn` or `UserError`, which pass it through
`idm.identity.display.printable` (the one filter shared with the agent and the sshd
helper); `print_json` keeps exact values.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import threading
import time
import unicodedata
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


# How a column gives way when a table is wider than the terminal: "wrap" onto more lines
# (subjects, reasons, URIs, paths: nothing is lost, a URI can still be copied), or "end":
# cut with an ellipsis (fingerprints, labels, ids, command lines: `--json` has them
# whole). Columns not named keep their width: short words, numbers, times, statuses.
COLUMN_FIT = {
    "SUBJECT": "wrap", "REASON": "wrap", "WHY": "wrap", "USERS": "wrap", "URI": "wrap",
    "MODULE": "wrap",
    "COMMAND": "end", "SSH FINGERPRINT": "end", "CERTIFICATE": "end", "SHA256": "end",
    "ID": "end", "LABEL": "end", "MANUFACTURER": "end", "MODEL": "end", "KEY": "end",
    "PAIRED": "end", "TOKEN": "end", "SERIAL": "end",
}
# Columns narrow first down to a comfortable width (never below their header's), then,
# if the table still does not fit, down to the least that stays useful (headers are cut
# too); if even that does not fit, each row is printed as a block of its own.
_COMFORTABLE = {"wrap": 24, "end": 12}
_LEAST = {"wrap": 16, "end": 8}
_LEAST_OF = {"URI": 32}  # a URI in 16-column slices is unreadable: a block per row then
ELLIPSIS = "…"

# Colours of status words in the status columns (on a terminal only).
STATUS_COLUMNS = {"STATUS", "NOW", "STATE", "PRESENT"}
STATUS_COLOURS = {
    "approved": "green", "valid": "green", "present": "green", "yes": "green",
    "revoked": "red", "rejected": "red", "expired": "red", "no": "red",
    "superseded": "yellow", "pending": "yellow", "absent": "yellow", "retired": "yellow",
    "revocation-unknown": "yellow", "unmapped": "yellow", "cached": "yellow",
}


def colour_enabled(stream: Any = None) -> bool:
    """Colour only on a terminal, never with NO_COLOR set (https://no-color.org) or on a
    dumb terminal."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return bool(getattr(stream or sys.stdout, "isatty", lambda: False)())


def paint(text: str, colour: str | None = None, *, bold: bool = False,
          stream: Any = None) -> str:
    """`text` in a colour (and/or bold) when `stream` (default stdout) gets colour."""
    if (colour is None and not bold) or not colour_enabled(stream):
        return text
    return click.style(text, fg=colour, bold=bold)


def _cell_width(text: str) -> int:
    """Terminal columns `text` takes (East Asian wide and fullwidth characters take two)."""
    if text.isascii():
        return len(text)
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _take(text: str, width: int, *, from_end: bool = False) -> str:
    """The longest start (or end) of `text` that fits `width` columns."""
    out, used = [], 0
    for c in reversed(text) if from_end else text:
        w = _cell_width(c)
        if used + w > width:
            break
        out.append(c)
        used += w
    return "".join(reversed(out) if from_end else out)


def _cut(text: str, width: int, mode: str | None) -> list[str]:
    """The lines of one cell at `width` columns (one line unless it wraps)."""
    if mode is None or _cell_width(text) <= width:
        return [text]
    if mode == "wrap":
        # Break after a space, a comma (a DN's RDNs), a semicolon (a URI's attributes) or
        # a slash (paths, URLs), and inside a word only when it is longer than the column.
        lines = [""]
        for token in re.findall(r"[^ ,;/]*[ ,;/]?", text):
            while token:
                room = width - _cell_width(lines[-1])
                if _cell_width(token.rstrip(" ")) <= room:
                    lines[-1] += token
                    break
                if lines[-1].strip():
                    lines.append("")
                    continue
                head = _take(token, width)
                lines[-1] += head
                token = token[len(head):]
                if token:
                    lines.append("")
        return [part.rstrip(" ") for part in lines if part.strip()] or [""]
    return [_take(text, width - 1) + ELLIPSIS]


def format_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], *, width: int | None = None,
    colour: bool = False,
) -> list[str]:
    """The lines of a left-aligned table (see `print_table`); `width`: fit this many
    columns by wrapping or shortening the columns of COLUMN_FIT (None: never)."""
    cells = [[printable("" if c is None else c) for c in row] for row in rows]
    widths = [_cell_width(h) for h in headers]
    for row in cells:
        widths = [max(w, _cell_width(c)) for w, c in zip(widths, row, strict=True)]
    modes = [COLUMN_FIT.get(h) if width is not None else None for h in headers]
    if width is not None:
        excess = sum(widths) + 2 * (len(widths) - 1) - width
        for tier in (_COMFORTABLE, _LEAST):
            floor = [(max(tier[m], _cell_width(h)) if tier is _COMFORTABLE
                      else _LEAST_OF.get(h, tier[m])) if m else w
                     for h, m, w in zip(headers, modes, widths, strict=True)]
            while excess > 0:  # narrow the widest column that may give way, one at a time
                free = [i for i, w in enumerate(widths) if modes[i] and w > floor[i]]
                if not free:
                    break  # as narrow as this tier allows
                widest = max(free, key=lambda i: widths[i])
                widths[widest] -= 1
                excess -= 1
        if excess > 0:  # too many columns for this terminal: one block per row instead
            return _stacked(headers, cells, width, colour)

    def line(parts: Sequence[str], paints: Sequence[str | None] = (), bold: bool = False) -> str:
        padded = []
        for i, (text, w) in enumerate(zip(parts, widths, strict=True)):
            gap = " " * (w - _cell_width(text))
            hue = paints[i] if paints else None
            styled = (click.style(text, fg=hue, bold=bold or None) if colour and (hue or bold)
                      else text)
            padded.append(styled + gap)
        return "  ".join(padded).rstrip()

    out = [line([_cut(h, w, "end")[0] for h, w in zip(headers, widths, strict=True)],
                bold=True)]
    for row in cells:
        pieces = [_cut(c, w, m) for c, w, m in zip(row, widths, modes, strict=True)]
        hues = [STATUS_COLOURS.get(c) if h in STATUS_COLUMNS else None
                for h, c in zip(headers, row, strict=True)]
        for k in range(max(len(p) for p in pieces) if pieces else 1):
            out.append(line([p[k] if k < len(p) else "" for p in pieces], hues if k == 0 else ()))
    return out


def _stacked(headers: Sequence[str], cells: list[list[str]], width: int,
             colour: bool) -> list[str]:
    """Each row as a block of "HEADER  value" lines (values wrapped to `width`), a blank
    line between rows: for tables with more columns than a narrow terminal can hold."""
    key_width = max(_cell_width(h) for h in headers)
    room = max(width - key_width - 2, _LEAST["wrap"])
    out: list[str] = []
    for n, row in enumerate(cells):
        if n:
            out.append("")
        for h, c in zip(headers, row, strict=True):
            hue = STATUS_COLOURS.get(c) if h in STATUS_COLUMNS else None
            for k, part in enumerate(_cut(c, room, "wrap")):
                key = h.ljust(key_width) if k == 0 else " " * key_width
                if colour:
                    key = click.style(key, bold=True)
                    part = click.style(part, fg=hue) if hue and k == 0 else part
                out.append(f"{key}  {part}".rstrip())
    return out


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A left-aligned text table; an empty table prints only its headers.

    Every cell goes through the one display filter (`printable`). On a terminal the table
    fits its width: subjects, reasons and URIs wrap onto more lines, fingerprints and
    labels end in an ellipsis (COLUMN_FIT), and a table with more columns than the
    terminal can hold prints one block per row; headers are bold and statuses coloured
    unless NO_COLOR is set. Into a pipe or file, cells are whole and plain. `--json`
    output never goes through here.
    """
    tty = bool(sys.stdout.isatty())
    for text in format_table(headers, rows, width=terminal_width() if tty else None,
                             colour=colour_enabled()):
        click.echo(text)


def say_wrapped(text: str, indent: int = 0, *, colour: str | None = None) -> None:
    """One paragraph for a person (through `printable`), wrapped to the terminal with
    continuation lines indented by `indent` more spaces, in `colour` where colour is on;
    whole and plain into a pipe."""
    text = printable(text)
    if not sys.stdout.isatty():
        click.echo(text)
        return
    lead = len(text) - len(text.lstrip(" "))
    lines = _cut(text.strip(" "), max(terminal_width() - lead - indent, _LEAST["wrap"]), "wrap")
    for k, part in enumerate(lines):
        click.echo(" " * (lead + (indent if k else 0)) + paint(part, colour))


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
