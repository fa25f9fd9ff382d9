"""`idm enroll`: record a token's certificates in the inventory, validated.

Modes (see docs/tokens.md, "Replacing a card"):

    idm enroll --token URI                         read the token, validate, record
    idm enroll --token URI --cert FILE             register a certificate for a token
                                                   that is not inserted
    idm enroll --token URI --new-key KIND --subject DN [--csr OUT]
                                                   make a key on the token and a CSR
    idm enroll --token URI --import-cert FILE      store the issued certificate on the
                                                   token (under its key's CKA_ID), enroll

Exit status: 0 when every enrolled certificate is approved, 1 when any is not (it is
still recorded, with the reason), 2 for usage errors.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from idm.cli.context import AppContext, command_line
from idm.cli.output import UserError, print_json, print_table, say
from idm.cli.tokens import open_providers

pass_app = click.make_pass_decorator(AppContext)

KINDS = ("rsa2048", "rsa3072", "ec-p256", "ec-p384")


def _load_certificate(path: str, option: str) -> Any:
    """The certificate in a PEM or DER file (the first one, if a PEM file holds several)."""
    from idm.validator.bundle import load_certificate_file
    from idm.validator.errors import MalformedInputError

    try:
        return load_certificate_file(path, option)[0]
    except MalformedInputError as exc:
        raise UserError(str(exc)) from None


@click.command("enroll")
@click.option(
    "--token",
    "token_ref",
    required=True,
    metavar="URI",
    help="The token: a pkcs11: URI or a pkcs11-helper id.",
)
@click.option(
    "--cert",
    "cert_file",
    metavar="FILE",
    help="Register this certificate for the token, which need not be inserted.",
)
@click.option("--new-key", type=click.Choice(KINDS), help="Generate a key pair on the token.")
@click.option("--subject", metavar="DN", help="Subject of the CSR for --new-key (RFC 4514).")
@click.option("--csr", "csr_out", metavar="OUT",
              help="Write the CSR here (default: stdout); its folder must exist.")
@click.option("--label", metavar="LABEL", help="CKA_LABEL of the new key (default: idm).")
@click.option(
    "--import-cert",
    "import_file",
    metavar="FILE",
    help="Store this issued certificate on the token next to its key, then enroll.",
)
@click.option(
    "--ca",
    "ca_paths",
    multiple=True,
    metavar="PATH",
    help="Trust anchors (default: [validation] ca).",
)
@click.option(
    "--untrusted",
    "untrusted_paths",
    multiple=True,
    metavar="PATH",
    help="Intermediate CA certificates that may help build the path.",
)
@click.option(
    "--crl", "crl_paths", multiple=True, metavar="PATH", help="Extra CRL files or folders."
)
@click.option(
    "--revocation",
    type=click.Choice(["require", "hard-fail", "soft-fail", "off"]),
    help="Revocation policy (default: [revocation] policy).",
)
@click.option(
    "--offline", is_flag=True, default=None, help="Use only cached or given revocation data."
)
@click.option(
    "--provider",
    "providers",
    multiple=True,
    metavar="LIB",
    help="PKCS#11 module to load in addition to the configured ones.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object with the outcome.")
@pass_app
def enroll_command(
    app: AppContext,
    token_ref: str,
    cert_file: str | None,
    new_key: str | None,
    subject: str | None,
    csr_out: str | None,
    label: str | None,
    import_file: str | None,
    ca_paths: tuple[str, ...],
    untrusted_paths: tuple[str, ...],
    crl_paths: tuple[str, ...],
    revocation: str | None,
    offline: bool | None,
    providers: tuple[str, ...],
    as_json: bool,
) -> None:
    """Enroll the certificates of a token into the inventory (validated).

    Each certificate is validated (chain, revocation, purpose) and recorded as approved
    or with the reason it is not; identities of other tokens with the same subject or
    principal become superseded. Running it again changes nothing.
    """
    from idm.identity.tokens.errors import TokenError
    from idm.identity.tokens.pin import default_pin_provider
    from idm.identity.tokens.uri import TokenIdentity, UriError, parse_token_reference

    modes = [m for m in (cert_file, new_key, import_file) if m]
    if len(modes) > 1:
        raise UserError("give only one of --cert, --new-key and --import-cert")
    if (subject or csr_out) and not new_key:
        raise UserError("--subject and --csr go with --new-key")
    try:
        uri = parse_token_reference(token_ref)
    except UriError as exc:
        raise UserError(str(exc)) from None
    provider_set = open_providers(app, providers)
    pin = default_pin_provider(uri)

    try:
        if new_key:
            _new_key(provider_set, uri, pin, new_key, subject, csr_out, label)
            return
        if cert_file:
            certificate = _load_certificate(cert_file, "--cert")
            found = provider_set.find_tokens(uri.without_object())
            identities = {t.identity for t in found}
            if len(identities) == 1:
                info = found[0]
                token, present, module = info.identity, True, info.module.path
            elif identities:
                raise UserError(f"{uri.redacted()} matches {len(identities)} tokens; be precise")
            else:
                missing = [
                    a
                    for a in ("token", "manufacturer", "model", "serial")
                    if getattr(uri, a) is None
                ]
                if missing:
                    raise UserError(
                        "the token is not inserted, so the URI must name it fully: add "
                        + ", ".join(f"{a}=" for a in missing)
                    )
                token = TokenIdentity(uri.manufacturer, uri.model, uri.serial, uri.token)  # type: ignore[arg-type]
                present, module = False, uri.module_path
            result = with_checker(
                app,
                ca_paths,
                untrusted_paths,
                crl_paths,
                revocation,
                offline,
                lambda inv, checker: _enroll_file(
                    inv, checker, token, certificate, present, module
                ),
            )
        else:
            # The file is read before the token is opened: a bad file asks for no PIN.
            issued = _load_certificate(import_file, "--import-cert") if import_file else None
            session = provider_set.open(uri.without_object(), pin)
            if issued is not None:
                stored = session.store_certificate(issued)
                say(f"stored on token: {stored.uri}", err=True)
            certificates = session.certificates()
            info = session.info
            result = with_checker(
                app,
                ca_paths,
                untrusted_paths,
                crl_paths,
                revocation,
                offline,
                lambda inv, checker: _enroll_present(inv, checker, info, certificates),
            )
    except TokenError as exc:
        raise UserError(str(exc)) from None
    _report(result, as_json)
    if any(c.status != "approved" for c in result.certificates):
        sys.exit(1)


def with_checker(
    app: AppContext,
    ca: Any,
    untrusted: Any,
    crl: Any,
    revocation: Any,
    offline: Any,
    action: Any,
) -> Any:
    from idm.identity.checker import CertificateChecker, CheckerError
    from idm.validator.errors import MalformedInputError

    inventory = app.inventory(create=True)
    try:
        checker = CertificateChecker.from_config(
            app.config,
            inventory,
            ca=[Path(p) for p in ca],
            untrusted=[Path(p) for p in untrusted],
            crl_paths=[Path(p) for p in crl],
            revocation=revocation,
            offline=offline or None,
        )
    except (CheckerError, MalformedInputError) as exc:
        raise UserError(str(exc)) from None
    try:
        return action(inventory, checker)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _enroll_present(inventory: Any, checker: Any, info: Any, certificates: Any) -> Any:
    from idm.identity.tokens.enroll import enroll_token

    return enroll_token(inventory, checker, info, certificates, command=command_line())


def _enroll_file(
    inventory: Any, checker: Any, token: Any, certificate: Any, present: bool, module: str | None
) -> Any:
    from idm.identity.tokens.enroll import enroll_certificate

    return enroll_certificate(
        inventory,
        checker,
        token,
        certificate,
        present=present,
        module_path=module,
        command=command_line(),
    )


def _new_key(
    provider_set: Any,
    uri: Any,
    pin: Any,
    kind: str,
    subject: str | None,
    csr_out: str | None,
    label: str | None,
) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from idm.identity.outputpath import OutputPathError, check_output_path

    if not subject:
        raise UserError("--new-key needs --subject DN (e.g. 'CN=Alice,O=Example')")
    if csr_out:
        try:  # before the key is made: a typo in the folder costs no key on the card
            check_output_path(csr_out, special_ok=True)
        except OutputPathError as exc:
            raise UserError(str(exc)) from None
    try:
        name = x509.Name.from_rfc4514_string(subject)
    except ValueError as exc:
        raise UserError(
            f"--subject {subject!r} is not a distinguished name "
            f"({exc or 'expected e.g. CN=Alice,O=Example'})"
        ) from None
    session = provider_set.open(uri.without_object(), pin)
    # Until its CSR is out, the new key is of no use: if anything fails or Ctrl-C comes
    # first, it is deleted from the card again (no orphan private keys).
    with session.generated_key_pair(kind, label=label or "idm") as key:
        csr = session.make_csr(key, name)
        pem = csr.public_bytes(serialization.Encoding.PEM)
        if csr_out:
            try:
                Path(csr_out).write_bytes(pem)
            except OSError as exc:
                raise UserError(f"cannot write the CSR to {csr_out}: {exc.strerror}; "
                                "the new key is deleted from the token again") from None
            say(f"wrote {csr_out}", err=True)
        else:
            click.echo(pem.decode(), nl=False)
    say(f"new key: {key.uri} ({key.description})", err=True)


def _report(result: Any, as_json: bool) -> None:
    if as_json:
        print_json(
            {
                "token": str(result.token.uri()),
                "token_id": result.token_id,
                "changed": result.changed,
                "certificates": [
                    {
                        "sha256": c.sha256,
                        "subject": c.subject,
                        "status": c.status,
                        "reason": c.reason,
                        "changed": c.changed,
                        "label": c.label,
                    }
                    for c in result.certificates
                ],
                "superseded": result.superseded,
                "skipped": result.skipped,
            }
        )
        return
    say(
        f"token {result.token}: {len(result.certificates)} certificate(s)"
        + ("" if result.changed else ", nothing changed")
    )
    print_table(
        ["STATUS", "SHA256", "SUBJECT", "REASON"],
        [(c.status, c.sha256[:16], c.subject, c.reason or "-") for c in result.certificates],
    )
    for sha in result.superseded:
        say(f"superseded: {sha[:16]}")
    for why in result.skipped:
        say(f"skipped: {why}")
