"""How the CLI speaks: one-line errors, compact JSON lines, plain tables."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click


class UserError(click.ClickException):
    """A problem the user can fix: printed as one line, exit status 2, no traceback."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"idm: error: {self.format_message()}", err=True)


def print_json(obj: Any) -> None:
    """One compact JSON value on one line (scripts read these line by line)."""
    click.echo(json.dumps(obj, sort_keys=False, default=str, separators=(",", ":")))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A left-aligned text table; an empty table prints only its headers."""
    cells = [[("" if c is None else str(c)) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    line = "  ".join(f"{{:{w}}}" for w in widths)
    click.echo(line.format(*headers).rstrip())
    for row in cells:
        click.echo(line.format(*row).rstrip())
