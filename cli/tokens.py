"""`idm tokens` and `idm objects`: what the PKCS#11 providers see right now."""

from __future__ import annotations

from typing import Any

import click

from idm.cli.context import AppContext
from idm.cli.output import UserError, print_json, print_table, say, warn

pass_app = click.make_pass_decorator(AppContext)

provider_option = click.option(
    "--provider",
    "providers",
    multiple=True,
    metavar="LIB",
    help="PKCS#11 module to load in addition to the configured ones (repeatable).",
)


def open_providers(app: AppContext, extra: tuple[str, ...]) -> Any:
    """A ProviderSet of the configured providers plus --provider ones."""
    from idm.identity.tokens.errors import TokenError
    from idm.identity.tokens.session import ProviderSet, default_providers

    paths = default_providers(app.config.tokens.providers, extra)
    try:
        return ProviderSet(paths)
    except TokenError as exc:
        raise UserError(str(exc)) from None


def _inventory_state(app: AppContext) -> Any:
    """A lookup identity -> inventory token state, or None if the inventory is unusable."""
    try:
        inventory = app.inventory()
    except UserError as exc:
        warn(f"inventory not consulted: {exc.format_message()}")
        return None

    def lookup(identity: Any) -> str | None:
        record = inventory.find_token(
            identity.manufacturer, identity.model, identity.serial, identity.label
        )
        return record.state if record is not None else None

    return lookup


@click.command("tokens")
@provider_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per token.")
@pass_app
def tokens_command(app: AppContext, providers: tuple[str, ...], as_json: bool) -> None:
    """List the tokens present in the configured PKCS#11 providers.

    Shows each token's URI, identity (label, manufacturer, model, serial), PIN state and
    whether the inventory knows it. A token is named by its identity, never its slot.
    """
    from idm.identity.tokens.errors import TokenError

    provider_set = open_providers(app, providers)
    try:
        # Re-initialize first: some modules (SoftHSM2) only see new cards after C_Initialize.
        tokens = provider_set.tokens(rescan=True)
    except TokenError as exc:
        raise UserError(str(exc)) from None
    lookup = _inventory_state(app)
    rows = []
    for t in tokens:
        known = lookup(t.identity) if lookup is not None else None
        if as_json:
            print_json(
                {
                    "uri": str(t.uri),
                    "label": t.identity.label,
                    "manufacturer": t.identity.manufacturer,
                    "model": t.identity.model,
                    "serial": t.identity.serial,
                    "module": t.module.path,
                    "slot_id": t.slot_id,
                    "pin_state": t.pin_state.short,
                    "pin_state_words": t.pin_state.describe(),
                    "inventory": None if lookup is None else (known or "unknown"),
                }
            )
        else:
            rows.append(
                (
                    str(t.uri),
                    t.identity.label,
                    t.identity.manufacturer,
                    t.identity.model,
                    t.identity.serial,
                    t.pin_state.short,
                    "?" if lookup is None else (known or "no"),
                )
            )
    if not as_json:
        if not tokens:
            searched = ", ".join(m.path for m in provider_set.modules) or "no providers"
            say(f"no tokens present (providers: {searched})", err=True)
        print_table(["URI", "LABEL", "MANUFACTURER", "MODEL", "SERIAL", "PIN", "INVENTORY"], rows)


def _fingerprint(public_key: Any) -> str | None:
    if public_key is None:
        return None
    from idm.identity.sshwire import fingerprint_sha256, public_key_blob

    try:
        return fingerprint_sha256(public_key_blob(public_key))
    except ValueError:
        return None


@click.command("objects")
@click.argument("token_uri", metavar="TOKEN-URI")
@provider_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per object.")
@click.option(
    "--login/--no-login",
    default=True,
    show_default=True,
    help="Log in to list private keys (asks for the PIN: pin-source/pin-value in the URI, "
    "askpass, or the terminal). Without a way to ask, only public objects are listed.",
)
@pass_app
def objects_command(
    app: AppContext, token_uri: str, providers: tuple[str, ...], as_json: bool, login: bool
) -> None:
    """List certificates and keys on the token TOKEN-URI.

    TOKEN-URI is a pkcs11: URI (e.g. 'pkcs11:token=My%20Card') or a pkcs11-helper id;
    object attributes in it (object=, id=, type=) narrow the list.
    """
    from idm.identity.tokens.errors import PinCancelled, PinUnavailable, TokenError
    from idm.identity.tokens.pin import default_pin_provider
    from idm.identity.tokens.session import pair_objects
    from idm.identity.tokens.uri import UriError, parse_token_reference

    try:
        uri = parse_token_reference(token_uri)
    except UriError as exc:
        raise UserError(str(exc)) from None
    provider_set = open_providers(app, providers)
    try:
        session = provider_set.open(uri.without_object(), default_pin_provider(uri))
        certificates = session.certificates()
        public_keys = session.keys("public")
        try:
            private_keys = session.keys("private", login=login)
        except (PinUnavailable, PinCancelled) as exc:
            warn(f"private keys not listed: {exc}")
            private_keys = session.keys("private")
    except TokenError as exc:
        raise UserError(str(exc)) from None

    pairs = pair_objects(certificates, private_keys)
    key_of_cert = {id(p.certificate): p.private_key for p in pairs if p.certificate}
    cert_of_key = {id(p.private_key): p.certificate for p in pairs if p.private_key}

    rows = []
    for obj in [*certificates, *private_keys, *public_keys]:
        kind = "cert" if hasattr(obj, "der") else obj.key_class
        if not uri.matches_object(label=obj.label, id=obj.id, type=kind):
            continue
        if kind == "cert":
            key = obj.public_key
            paired = key_of_cert.get(id(obj))
            info = {
                "type": "cert",
                "uri": str(obj.uri),
                "label": obj.label,
                "id": obj.id.hex(),
                "subject": obj.subject,
                "issuer": obj.certificate.issuer.rfc4514_string(),
                "key": _key_words(key),
                "self_signed": obj.self_signed,
                "paired_with": str(paired.uri) if paired else None,
                "ssh_fingerprint": _fingerprint(key),
            }
        else:
            paired_cert = cert_of_key.get(id(obj)) if kind == "private" else None
            info = {
                "type": kind,
                "uri": str(obj.uri),
                "label": obj.label,
                "id": obj.id.hex(),
                "subject": None,
                "key": obj.description,
                "always_authenticate": obj.always_authenticate if kind == "private" else None,
                "self_signed": None,
                "paired_with": str(paired_cert.uri) if paired_cert else None,
                "ssh_fingerprint": _fingerprint(obj.public_key),
            }
        if as_json:
            print_json(info)
        else:
            rows.append(
                (
                    info["type"],
                    info["label"],
                    info["id"],
                    info["key"],
                    info["subject"] or "-",
                    {True: "yes", False: "no", None: "-"}[info["self_signed"]],
                    "no certificate" if info["type"] == "private" and not info["paired_with"]
                    else _paired_words(info["paired_with"]),
                    info["ssh_fingerprint"] or "-",
                    info["uri"],
                )
            )
    if not as_json:
        print_table(
            [
                "TYPE",
                "LABEL",
                "ID",
                "KEY",
                "SUBJECT",
                "SELF-SIGNED",
                "PAIRED",
                "SSH FINGERPRINT",
                "URI",
            ],
            rows,
        )
        lonely = [k for k in private_keys if cert_of_key.get(id(k)) is None
                  and uri.matches_object(label=k.label, id=k.id, type="private")]
        if lonely:
            say(f"idm: note: {len(lonely)} private key(s) without a certificate on the token "
                "(e.g. left by an interrupted `idm enroll --new-key`); delete one with "
                f"`idm token delete-key '{lonely[0].uri}'`", err=True)


def _key_words(public_key: Any) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA {public_key.key_size}"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        names = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
        return f"EC {names.get(public_key.curve.name, public_key.curve.name)}"
    return type(public_key).__name__ if public_key is not None else "?"


def _paired_words(uri: str | None) -> str:
    if uri is None:
        return "-"
    from idm.identity.tokens.uri import Pkcs11Uri

    parsed = Pkcs11Uri.parse(uri)
    return f"{parsed.type} {parsed.object or ''} id={parsed.id.hex() if parsed.id else ''}".strip()
