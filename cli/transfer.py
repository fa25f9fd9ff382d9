"""`idm export` and `idm import`: a client's approved certificates into a server's inventory.

    idm export [--output FILE] [FINGERPRINT…]     on the client
    idm import FILE [--json]                      on the server (its own --db and --config)

The file format and the rule that the importer validates every certificate again are in
idm.identity.transfer. Exit status of import: 0 when every certificate is approved by the
importer's own validation, 1 when any is not (each is recorded with its reason, or refused),
2 for usage errors (unreadable file, not an export document, no trust anchors).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from idm.cli.context import AppContext, command_line
from idm.cli.output import UserError, print_json, print_table, say

pass_app = click.make_pass_decorator(AppContext)


@click.command("export")
@click.argument("fingerprints", nargs=-1, metavar="[FINGERPRINT]...")
@click.option(
    "-o", "--output", metavar="FILE",
    help="Write the export document here (default: stdout). Its folder must exist.",
)
@pass_app
def export_command(app: AppContext, fingerprints: tuple[str, ...], output: str | None) -> None:
    """Export approved certificates for another inventory (`idm import` on a server).

    Writes one JSON document: each approved certificate (PEM) with its card's identity and,
    for the reader, its subject, principals and fingerprints. It holds no private key and
    no PIN. FINGERPRINT (SHA-256 prefixes) limits it to those certificates.
    """
    from idm.identity.outputpath import OutputPathError, check_output_path
    from idm.identity.transfer import TransferError, export_document

    try:
        if output is not None:
            check_output_path(output)
        doc = export_document(app.inventory(), fingerprints)
    except OutputPathError as exc:
        raise UserError(str(exc)) from None
    except TransferError as exc:
        raise UserError(str(exc)) from None
    text = json.dumps(doc, indent=2) + "\n"
    count = len(doc["certificates"])
    if output is None:
        click.echo(text, nl=False)
    else:
        path = Path(output)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(text)
            tmp.replace(path)  # a reader never sees half a document
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise UserError(f"cannot write {output}: {exc.strerror}") from None
    where = "" if output is None else f" to {output}"
    say(f"exported {count} approved certificate(s){where}", err=True)


@click.command("import")
@click.argument("file", metavar="FILE")
@click.option("--json", "as_json", is_flag=True, help="One JSON object with the outcome.")
@pass_app
def import_command(app: AppContext, file: str, as_json: bool) -> None:
    """Import certificates exported by `idm export` (FILE, or - for stdin).

    Every certificate is validated again here, with this inventory's configuration (trust
    anchors, CRLs, revocation policy): the file cannot make a certificate approved. Each is
    recorded for its card (absent here) as approved, or with the reason it is not; a
    replaced card's identities become superseded as with `idm enroll`. Importing the same
    file again changes nothing.
    """
    from idm.cli.enroll import with_checker
    from idm.identity.transfer import (
        MAX_DOCUMENT_BYTES,
        TransferError,
        import_document,
        read_document,
    )
    from idm.validator.inputfile import InputFileError, read_input_file

    try:
        data = read_input_file(file, "", MAX_DOCUMENT_BYTES, stdin=True)
    except InputFileError as exc:
        raise UserError(f"cannot read {exc}") from None
    try:
        entries = read_document(data)
    except TransferError as exc:
        raise UserError(f"{file}: {exc}") from None
    result = with_checker(
        app, (), (), (), None, None,
        lambda inv, checker: import_document(inv, checker, entries, command=command_line()),
    )
    if as_json:
        print_json(
            {
                "file": file,
                "changed": result.changed,
                "certificates": [
                    {
                        "entry": c.index,
                        "sha256": c.sha256,
                        "subject": c.subject,
                        "token": c.token,
                        "status": c.status,
                        "reason": c.reason,
                        "changed": c.changed,
                    }
                    for c in result.certificates
                ],
                "superseded": result.superseded,
            }
        )
    else:
        counts: dict[str, int] = {}
        for c in result.certificates:
            counts[c.status] = counts.get(c.status, 0) + 1
        summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "none"
        say(
            f"{file}: {len(result.certificates)} certificate(s): {summary}"
            + ("" if result.changed else "; nothing changed")
        )
        print_table(
            ["STATUS", "SHA256", "SUBJECT", "TOKEN", "REASON"],
            [
                (
                    c.status,
                    (c.sha256 or f"entry {c.index}")[:16],
                    c.subject or "-",
                    c.token or "-",
                    c.reason or "-",
                )
                for c in result.certificates
            ],
        )
        for sha in result.superseded:
            say(f"superseded: {sha[:16]}")
    if not result.all_approved:
        sys.exit(1)
