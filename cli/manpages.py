"""Man pages for `idm` and each of its commands, written from the CLI's own help.

    python -m idm.cli.manpages DIR      writes DIR/idm.1, DIR/idm-enroll.1, DIR/idm-db-upgrade.1, …

The text is what `idm COMMAND --help` prints (click's help text and option help records), so
the pages cannot drift from the code: `make install` runs this with the installed idm.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import click

from idm.cli.main import cli

MANUAL = "idm manual"


def _roff(text: str) -> str:
    """Escape text for roff: backslashes, hyphens (so options render as typed) and lines
    that would start with a request character."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    # Non-ASCII as named glyphs: groff without preconv reads the page as Latin-1.
    text = "".join(c if ord(c) < 128 else f"\\[u{ord(c):04X}]" for c in text)
    return "\n".join("\\&" + line if line[:1] in (".", "'") else line
                     for line in text.split("\n"))


def _paragraphs(help_text: str) -> list[str]:
    return [p.strip() for p in inspect.cleandoc(help_text).split("\n\n") if p.strip()]


def _version() -> str:
    try:
        return version("x509-idm")
    except PackageNotFoundError:
        return "unknown"


def _commands(
    group: click.Group, ctx: click.Context, prefix: list[str]
) -> Iterator[tuple[list[str], click.Command, click.Context]]:
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        path = [*prefix, name]
        sub = click.Context(command, info_name=name, parent=ctx)
        yield path, command, sub
        if isinstance(command, click.Group):
            yield from _commands(command, sub, path)


def page_name(path: list[str]) -> str:
    """idm, idm-enroll, idm-db-upgrade: the page (and file) name of a command path."""
    return "-".join(["idm", *path])


def render(path: list[str], command: click.Command, ctx: click.Context,
           subcommands: list[tuple[str, str]]) -> str:
    """One man page (roff) for a command."""
    name = page_name(path)
    summary = command.get_short_help_str(limit=200).rstrip(".")
    out = [
        f'.TH {_roff(name.upper())} 1 "" "idm {_version()}" "{MANUAL}"',
        ".SH NAME",
        f"{_roff(name)} \\- {_roff(summary)}",
        ".SH SYNOPSIS",
        f".B {_roff(' '.join(['idm', *path]))}",
        _roff(" ".join(command.collect_usage_pieces(ctx))),
        ".SH DESCRIPTION",
    ]
    for paragraph in _paragraphs(command.help or summary):
        out += [".PP", _roff(paragraph)]
    options = [
        record
        for param in command.get_params(ctx)
        if isinstance(param, click.Option) and (record := param.get_help_record(ctx))
    ]
    if options:
        out.append(".SH OPTIONS")
        for opts, text in options:
            out += [".TP", f".B {_roff(opts)}", _roff(text or "")]
    if subcommands:
        out.append(".SH COMMANDS")
        for sub, text in subcommands:
            out += [".TP", f".BR {_roff(sub)} (1)", _roff(text)]
    see = (["idm"] if path else []) + [sub for sub, _ in subcommands]
    out += [".SH SEE ALSO", ", ".join(f"\\fB{_roff(s)}\\fR(1)" for s in see)]
    return "\n".join(out) + "\n"


def pages() -> dict[str, str]:
    """{file name: roff text} for idm and every command and subcommand."""
    root = click.Context(cli, info_name="idm", **cli.context_settings)
    found = list(_commands(cli, root, []))

    def children(prefix: list[str]) -> list[tuple[str, str]]:
        return [
            (page_name(p), c.get_short_help_str(limit=80))
            for p, c, _ in found
            if len(p) == len(prefix) + 1 and p[: len(prefix)] == prefix
        ]

    result = {"idm.1": render([], cli, root, children([]))}
    for path, command, ctx in found:
        subs = children(path) if isinstance(command, click.Group) else []
        result[f"{page_name(path)}.1"] = render(path, command, ctx, subs)
    return result


def write_pages(directory: Path) -> list[Path]:
    """Write every page into `directory` (created); return the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, text in pages().items():
        target = directory / filename
        target.write_text(text)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m idm.cli.manpages DIR", file=sys.stderr)
        return 2
    for path in write_pages(Path(args[0])):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
