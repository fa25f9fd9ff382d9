"""`idm verify`: validate certificates and print a verdict per target.

A thin shell over `idm.validator.api.validate`. Contract (tests and scripts rely on it):
exit 0 when every target is valid, 1 when any is not, 2 for usage or input errors; with
`--json` one object per target per line with exactly the fields of `JSON_FIELDS`.

Imports of the validator, requests and the inventory happen inside the command, so that
`idm --help` stays quick. A check whose path validated before and whose revocation status
the inventory holds is answered by `idm.validator.memo.express` from the inventory alone
(sqlite3, no `cryptography`, SQLAlchemy or pyhanko-certvalidator); anything new goes the
full way through `CertificateChecker`. A large CRL seen for the first time answers this
run from memory and is stored with its index after the verdicts are printed, by a
detached background process (see docs/validation.md, "The cache").
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from idm.cli.output import UserError, print_json, say, warn

if TYPE_CHECKING:
    from idm.cli.context import AppContext
    from idm.validator.verdict import Verdict

JSON_FIELDS = (
    "target",
    "valid",
    "status",
    "reason",
    "subject",
    "issuer",
    "serial",
    "sha256",
    "chain",
    "revocation",
    "ssh_identity",
)

_HEX = set("0123456789abcdefABCDEF:")

# A CRL with more entries than this, seen for the first time, is indexed in the background
# after the verdict is printed (measured: ~3 s per 200,000 entries on the benchmark
# machine); a smaller one is indexed at once.
DEFER_INDEXING_ABOVE = 20_000


@dataclass
class ResolvedTarget:
    """A TARGET turned into certificate bytes: the leaf, untrusted extras, a label."""

    leaf_der: bytes
    intermediates: list[bytes] = field(default_factory=list)
    label: str = ""
    inventory_sha256: str | None = None  # set when the target came from the inventory


class TargetError(Exception):
    """A TARGET that cannot be read or parsed; `malformed` says whether it was read."""

    def __init__(self, message: str, malformed: bool = False) -> None:
        super().__init__(message)
        self.malformed = malformed


def resolve_target(target: str, app: AppContext | None) -> ResolvedTarget:
    """Resolve TARGET to (leaf DER, [intermediate DERs], label).

    The extension point for new kinds of target: a certificate file (PEM with several
    certificates = leaf + untrusted intermediates, or DER), an inventory fingerprint
    (SHA-256 hex, a unique prefix of at least 8 digits, colons allowed), and `pkcs11:`
    URIs of a certificate on a token.
    """
    from cryptography.hazmat.primitives.serialization import Encoding

    from idm.validator.bundle import parse_certificates
    from idm.validator.errors import MalformedInputError
    from idm.validator.inputfile import CERTIFICATE_MAX_BYTES, InputFileError, read_input_file

    if target.startswith("pkcs11:"):
        return _token_target(target, app)
    path = Path(target)
    if path.exists() or path.is_symlink():
        try:
            data = read_input_file(path, "", CERTIFICATE_MAX_BYTES)
        except InputFileError as e:
            raise TargetError(str(e)) from None
        try:
            certs = parse_certificates(data, target)
        except MalformedInputError as e:
            raise TargetError(str(e), malformed=True) from None
        ders = [c.public_bytes(Encoding.DER) for c in certs]
        return ResolvedTarget(ders[0], ders[1:], target)
    if len(target.replace(":", "")) >= 8 and set(target) <= _HEX and app is not None:
        inventory = app.inventory()
        try:
            record = inventory.certificate(target)
        except Exception as e:  # InventoryError: ambiguous prefix and the like
            raise TargetError(f"{target}: {e}") from None
        if record is None:
            raise TargetError(
                f"{target}: no such file, and no certificate with that fingerprint in the inventory"
            )
        return ResolvedTarget(record.der, [], target, record.sha256)
    raise TargetError(f"{target}: no such file (nor a pkcs11: URI or inventory fingerprint)")


def _token_target(target: str, app: AppContext | None) -> ResolvedTarget:
    """A certificate on a token, named by a pkcs11: URI; CA certificates stored on the same
    token are offered as untrusted intermediates."""
    from idm.cli.tokens import open_providers
    from idm.identity.tokens.errors import TokenError
    from idm.identity.tokens.session import CertificateObject
    from idm.identity.tokens.uri import Pkcs11Uri, UriError

    if app is None:
        raise TargetError(f"{target}: pkcs11: targets need the configured providers")
    try:
        uri = Pkcs11Uri.parse(target)
    except UriError as e:
        raise TargetError(f"{target}: {e}", malformed=True) from None
    extra = (uri.module_path,) if uri.module_path else ()
    try:
        session = open_providers(app, extra).open(uri.without_object())
        certs = [o for o in session.find_objects(uri) if isinstance(o, CertificateObject)]
        others = [c for c in session.certificates() if c not in certs]
    except TokenError as e:
        raise TargetError(f"{target}: {e}") from None
    if not certs:
        raise TargetError(f"{target}: no certificate on the token matches this URI")
    if len(certs) > 1:
        raise TargetError(
            f"{target}: matches {len(certs)} certificates; add object= or id= to the URI"
        )
    return ResolvedTarget(certs[0].der, [c.der for c in others], target)


def _parse_at(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise UserError(
            f"--at {value!r}: not an ISO-8601 date-time (e.g. 2030-01-31T12:00:00Z)"
        ) from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _load_crls(
    urls: Sequence[str], fetcher: Any, offline: bool, warnings: list[str]
) -> list[tuple[str, bytes]]:
    """Download --crl URLs; a failed download is a warning (the policy decides)."""
    from idm.validator.errors import FetchError

    out: list[tuple[str, bytes]] = []
    for url in urls:
        if offline:
            warnings.append(f"{url}: not fetched (offline)")
            continue
        try:
            out.append((url, fetcher.get_crl(url)))
        except FetchError as e:
            warnings.append(str(e))
    return out


def _leaf_details(leaf: Any) -> dict[str, str]:
    """subject, issuer, serial (hex) and sha256 of a parsed leaf, as --json prints them."""
    from cryptography.hazmat.primitives.serialization import Encoding

    return {
        "subject": leaf.subject.rfc4514_string(),
        "issuer": leaf.issuer.rfc4514_string(),
        "serial": format(leaf.serial_number, "x"),
        "sha256": hashlib.sha256(leaf.public_bytes(Encoding.DER)).hexdigest(),
    }


def _result_json(target: str, leaf: dict[str, str] | None, verdict: Verdict) -> dict[str, Any]:
    body = verdict.to_json()
    out: dict[str, Any] = {"target": target}
    out["valid"] = body["valid"]
    out["status"] = body["status"]
    out["reason"] = body["reason"]
    if leaf is not None:
        out.update(leaf)
    else:
        out.update(subject=None, issuer=None, serial=None, sha256=None)
    out["chain"] = body["chain"]
    out["revocation"] = body["revocation"]
    out["ssh_identity"] = body["ssh_identity"] if leaf is not None else None
    assert tuple(out) == JSON_FIELDS
    return out


class _Express:
    """The inputs of a check as SHA-256 digests, read without `cryptography`, for
    `idm.validator.memo.express`. `ready` is False when any input is unusual (then
    every target takes the full way, which also reports what is wrong)."""

    def __init__(
        self,
        ca_paths: Sequence[Path],
        untrusted_paths: Sequence[Path],
        crl_paths: Sequence[Path],
        crl_max_bytes: int,
    ) -> None:
        from idm.identity.checker import CheckerError, crl_files
        from idm.validator.inputfile import InputFileError

        self.ready = False
        anchors = self._bundle(ca_paths) if ca_paths else None
        untrusted = self._bundle(untrusted_paths)
        if anchors is None or untrusted is None:
            return
        try:
            crls = [hashlib.sha256(data).hexdigest()
                    for _, data in crl_files(crl_paths, crl_max_bytes)]
        except (OSError, InputFileError, CheckerError):
            return  # the full way reports what is wrong
        self.anchors, self.untrusted, self.crls = anchors, untrusted, crls
        self.ready = True

    @staticmethod
    def _bundle(paths: Sequence[Path]) -> list[str] | None:
        """SHA-256 of the certificates `load_bundle` would return, in its order."""
        from idm.validator.bundle import FOLDER_SUFFIXES
        from idm.validator.inputfile import BUNDLE_MAX_BYTES, InputFileError, read_input_file
        from idm.validator.memo import certificate_ders

        out: list[str] = []
        for p in paths:
            try:
                if p.is_dir():
                    files = sorted(
                        f
                        for f in p.iterdir()
                        if f.suffix.lower() in FOLDER_SUFFIXES and f.is_file()
                    )
                else:
                    files = [p]
                for f in files:
                    ders = certificate_ders(read_input_file(f, "", BUNDLE_MAX_BYTES))
                    if ders is None:
                        return None
                    for der in ders:
                        sha = hashlib.sha256(der).hexdigest()
                        if sha not in out:
                            out.append(sha)
            except (OSError, InputFileError):
                return None  # the full way reports what is wrong
        return out

    def check(self, target: str, policy: Any, at: datetime | None, store: Any) -> Any:
        """(verdict, leaf details) for a certificate file TARGET, or None."""
        from idm.validator.inputfile import CERTIFICATE_MAX_BYTES, InputFileError, read_input_file
        from idm.validator.memo import certificate_ders, express

        if not self.ready or target.startswith("pkcs11:"):
            return None
        try:
            ders = certificate_ders(read_input_file(target, "", CERTIFICATE_MAX_BYTES))
        except InputFileError:
            return None  # not a file (an inventory fingerprint), or the full way says why
        if ders is None:
            return None
        shas = [hashlib.sha256(d).hexdigest() for d in ders]
        found = express(
            shas[0],
            self.anchors,
            [*shas[1:], *self.untrusted],
            policy=policy,
            at=at,
            store=store,
            supplied_crl_sha256s=self.crls,
        )
        if found is None:
            return None
        verdict, record = found
        leaf = {
            "subject": record.chain_subjects[0],
            "issuer": record.leaf_issuer,
            "serial": format(record.leaf_serial, "x"),
            "sha256": shas[0],
        }
        return verdict, leaf


def _open_store(app: AppContext) -> Any:
    from idm.identity.inventory.revocation import open_revocation_store

    try:
        return open_revocation_store(app.db_url, defer_indexing_above=DEFER_INDEXING_ABOVE)
    except Exception as e:  # InventoryError and the like: one line for the user
        raise UserError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None


def _report(target: str, leaf: dict[str, str] | None, verdict: Verdict, as_json: bool) -> None:
    if as_json:
        print_json(_result_json(target, leaf, verdict))
    else:
        say(f"{target}: {verdict.status}: {verdict.reason}")
    for w in verdict.warnings:
        warn(f"{target}: {w}")


def _malformed_json(target: str, reason: str, der: bytes | None = None) -> dict[str, Any]:
    return {
        "target": target,
        "valid": False,
        "status": "malformed",
        "reason": reason,
        "subject": None,
        "issuer": None,
        "serial": None,
        "sha256": hashlib.sha256(der).hexdigest() if der else None,
        "chain": [],
        "revocation": [],
        "ssh_identity": None,
    }


@click.command("verify")
@click.option(
    "--ca",
    "ca",
    multiple=True,
    metavar="PATH",
    help="Trust anchors: PEM bundle, DER file or folder (repeatable). Default: [validation] ca.",
)
@click.option(
    "--untrusted",
    multiple=True,
    metavar="PATH",
    help="Untrusted intermediates that may help build the path (repeatable).",
)
@click.option(
    "--crl",
    "crl",
    multiple=True,
    metavar="PATH|URL",
    help="Extra CRL: file, folder or http(s) URL (repeatable).",
)
@click.option(
    "--ocsp-url", metavar="URL", help="OCSP responder for certificates whose AIA names none."
)
@click.option(
    "--revocation",
    type=click.Choice(["require", "hard-fail", "soft-fail", "off"]),
    help="Revocation policy. Default: [revocation] policy (hard-fail).",
)
@click.option(
    "--at",
    "at",
    metavar="ISO-8601",
    help="Validate at this moment instead of now (UTC unless a zone is given).",
)
@click.option(
    "--purpose",
    type=click.Choice(["ssh-client", "any"]),
    help="Required purpose. Default: [validation] purpose (ssh-client).",
)
@click.option(
    "--offline",
    is_flag=True,
    default=None,
    help="Use only cached and given revocation data; no network.",
)
@click.option(
    "--no-cache", is_flag=True, help="Neither read nor write the inventory's revocation cache."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per target per line.")
@click.argument("targets", nargs=-1, required=True, metavar="TARGET...")
@click.pass_obj
def verify(
    app: AppContext,
    ca: tuple[str, ...],
    untrusted: tuple[str, ...],
    crl: tuple[str, ...],
    ocsp_url: str | None,
    revocation: str | None,
    at: str | None,
    purpose: str | None,
    offline: bool | None,
    no_cache: bool,
    as_json: bool,
    targets: tuple[str, ...],
) -> None:
    """Validate certificates: chain to a trust anchor, revocation (CRL, OCSP), purpose.

    TARGET is a certificate file (PEM or DER; in a PEM file with several certificates
    the first is the leaf and the rest are untrusted intermediates), a certificate's
    SHA-256 fingerprint from the inventory, or a pkcs11: URI of a certificate on a token.

    Exit status: 0 when every target is valid, 1 when any is not, 2 for usage or
    input errors.
    """
    from idm.identity.checker import CheckerError, fetcher_from_config, policy_from_config
    from idm.validator.policy import PolicyError

    config = app.config
    moment = _parse_at(at)
    overrides = dict(
        purpose=purpose, revocation=revocation, ocsp_url=ocsp_url, offline=offline or None
    )
    effective_offline = bool(offline) or config.revocation.offline
    urls = [c for c in crl if c.lower().startswith(("http://", "https://"))]
    paths = [c for c in crl if c not in urls]
    for p in paths:
        if not Path(p).exists():
            raise UserError(f"--crl {p}: no such file or folder")
    skip_revocation = (revocation or config.revocation.policy) == "off"
    use_cache = not (no_cache or skip_revocation)
    try:
        policy = policy_from_config(config, **overrides)
    except PolicyError as e:
        raise UserError(str(e)) from None
    store = _open_store(app) if use_cache else None
    crl_paths = [] if skip_revocation else [Path(p) for p in paths]
    express = None
    if store is not None and not urls:
        express = _Express(
            [Path(c) for c in ca] or list(config.validation.ca),
            [*config.validation.untrusted, *(Path(u) for u in untrusted)],
            [*config.revocation.crl, *crl_paths],
            config.revocation.crl_max_bytes,
        )
    checker: Any = None

    def full_checker() -> Any:
        from idm.identity.checker import CertificateChecker
        from idm.validator.errors import MalformedInputError
        from idm.validator.revocation.store import MemoryRevocationStore

        warnings: list[str] = []
        fetcher = fetcher_from_config(config)
        extra = [] if skip_revocation else _load_crls(urls, fetcher, effective_offline, warnings)
        try:
            built = CertificateChecker.from_config(
                config,
                None,
                ca=[Path(c) for c in ca],
                untrusted=[Path(u) for u in untrusted],
                crl_paths=crl_paths,
                extra_crls=extra,
                **overrides,
            )
        except (CheckerError, MalformedInputError, PolicyError) as e:
            raise UserError(str(e)) from None
        built.store = store if store is not None else MemoryRevocationStore()
        for w in warnings:
            warn(w)
        return built

    any_invalid = False
    input_error = False
    try:
        for target in targets:
            if express is not None:
                quick = express.check(target, policy, moment, store)
                if quick is not None:
                    verdict, details = quick
                    any_invalid |= not verdict.valid
                    _report(target, details, verdict, as_json)
                    continue
            if checker is None:
                checker = full_checker()
            outcome = _full_check(app, checker, target, moment, as_json)
            if outcome is None:
                input_error = True
            else:
                any_invalid |= not outcome
    finally:
        if store is not None:
            store.finish_deferred()  # large new CRLs: stored and indexed in the background
            store.close()
    # sys.exit, not ctx.exit: click's non-standalone main() turns Exit into a return value.
    if input_error:
        sys.exit(2)
    if any_invalid:
        sys.exit(1)


def _full_check(
    app: AppContext, checker: Any, target: str, moment: datetime | None, as_json: bool
) -> bool | None:
    """Validate one TARGET the full way and print it; None for an input error."""
    from idm.validator.bundle import parse_certificate
    from idm.validator.errors import MalformedInputError

    try:
        resolved = resolve_target(target, app)
    except TargetError as e:
        say(f"idm: error: {e}", err=True)
        if as_json and e.malformed:
            print_json(_malformed_json(target, str(e)))
        return None
    try:
        leaf = parse_certificate(resolved.leaf_der, target)
        extra_certs = [parse_certificate(d, target) for d in resolved.intermediates]
    except MalformedInputError as e:
        # Only reachable for inventory or token objects: files were parsed already.
        if as_json:
            print_json(_malformed_json(target, str(e), resolved.leaf_der))
        else:
            say(f"{target}: malformed: {e}")
        return False
    try:
        verdict = checker.check(leaf, intermediates=extra_certs, at=moment)
    except MalformedInputError as e:  # a --crl file that is not a CRL
        raise UserError(str(e)) from None
    if resolved.inventory_sha256 is not None:
        app.inventory().record_verdict(
            resolved.inventory_sha256,
            verdict.status,
            verified_at=moment or datetime.now(UTC),
            fresh_until=verdict.fresh_until,
        )
    _report(target, _leaf_details(leaf), verdict, as_json)
    return verdict.valid
