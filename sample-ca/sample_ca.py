#!/usr/bin/env python3
"""sample_ca: a small demo and test PKI for idm.  NOT FOR PRODUCTION.

It makes a root CA, an intermediate CA, a delegated OCSP responder and user
certificates in one directory, keeps a JSON record of everything it issued, writes
CRLs, and serves CRLs and OCSP on 127.0.0.1.  All private keys are written
unencrypted.  It uses only the standard library and `cryptography`, and deliberately
does not import idm: idm's tests and demo use it as an independent PKI.

Run `python sample-ca/sample_ca.py --help` for the commands, the file layout and the
subject DN pattern.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import traceback
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

if TYPE_CHECKING:
    from http.server import BaseHTTPRequestHandler

PROG = "sample_ca"

# ---------------------------------------------------------------------------
# Layout and naming (also shown in --help and README.md)
# ---------------------------------------------------------------------------

ORG = "idm demo"
COUNTRY = "XX"
EMAIL_DOMAIN = "example.org"
ROOT_CN = "idm demo Root CA"
INTERMEDIATE_CN = "idm demo Intermediate CA"
OCSP_CN = "idm demo OCSP Responder"

STATE_FILE = "state.json"
LOCK_FILE = ".lock"
CA_NAMES = ("root", "intermediate")
# Files that `init` owns; `init --force` removes exactly these (plus users/ and crl/).
LAYOUT_FILES = (
    "root.pem",
    "root.key",
    "intermediate.pem",
    "intermediate.key",
    "ocsp.pem",
    "ocsp.key",
    "ca-bundle.pem",
    "chain.pem",
    STATE_FILE,
)
DEFAULT_USER_DAYS = 365
DEFAULT_CRL_HOURS = 7 * 24
DEFAULT_OCSP_MINUTES = 60
ROOT_DAYS = 3650
INTERMEDIATE_DAYS = 1825
OCSP_DAYS = 825
# Certificates start a little in the past so that a verifier whose clock is a few
# seconds behind ours does not see them as not-yet-valid.
BACKDATE = dt.timedelta(minutes=5)
MAX_OCSP_REQUEST = 64 * 1024

LAYOUT_HELP = f"""\
file layout of DIR (all keys are unencrypted PKCS#8 PEM, mode 0600):
  root.pem, root.key                 self-signed root CA (the trust anchor)
  intermediate.pem, intermediate.key intermediate CA (pathlen 0), issued by the root
  ocsp.pem, ocsp.key                 delegated OCSP responder, issued by the intermediate
  ca-bundle.pem                      the root only: what a verifier trusts
  chain.pem                          the intermediate only: untrusted intermediates
  users/NAME.pem, users/NAME.key     a user certificate and its key
  users/NAME-chain.pem               user certificate + its issuing CA (leaf only if
                                     issued by the root or self-signed)
  crl/root.crl, crl/intermediate.crl DER CRLs of the two CAs
  state.json                         every issued certificate: serial (hex), subject,
                                     issuer CA, file, status, revocation time, reason

subject DN pattern (RFC 4514, most specific first):
  users:        CN=NAME,O={ORG},C={COUNTRY}     SAN email NAME@{EMAIL_DOMAIN}
  root:         CN={ROOT_CN},O={ORG},C={COUNTRY}
  intermediate: CN={INTERMEDIATE_CN},O={ORG},C={COUNTRY}
  OCSP:         CN={OCSP_CN},O={ORG},C={COUNTRY}

URLs in certificates (PORT is the one given to `init`; `serve` answers them):
  CRL DP (intermediate)     http://127.0.0.1:PORT/crl/root.crl
  CRL DP (users)            http://127.0.0.1:PORT/crl/intermediate.crl
  AIA OCSP                  http://127.0.0.1:PORT/ocsp
  AIA caIssuers (users)     http://127.0.0.1:PORT/ca/intermediate.cer (DER)

A demo PKI: keys are unencrypted and checks are minimal. Never use it in production.
"""

KEY_TYPES = ("rsa2048", "rsa3072", "ec-p256", "ec-p384", "ec-p521")
EKU_CHOICES: dict[str, ObjectIdentifier | None] = {
    "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH,
    # id-kp-secureShellClient (RFC 6187 section 2.2)
    "sshClient": ObjectIdentifier("1.3.6.1.5.5.7.3.21"),
    "any": ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
    "none": None,
}
# RFC 5280 CRLReason names (removeFromCRL is left out: this CA never un-revokes).
REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "cACompromise": x509.ReasonFlags.ca_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "certificateHold": x509.ReasonFlags.certificate_hold,
    "privilegeWithdrawn": x509.ReasonFlags.privilege_withdrawn,
    "aACompromise": x509.ReasonFlags.aa_compromise,
}
UPN_OID = ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")  # Microsoft UPN otherName
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class SampleCAError(Exception):
    """A user-facing error: one line, printed without a traceback, exit status 2."""


# ---------------------------------------------------------------------------
# Small helpers: time, files, keys, DER
# ---------------------------------------------------------------------------


def utcnow() -> dt.datetime:
    """Current UTC time truncated to whole seconds (what X.509 times can encode)."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def iso(t: dt.datetime) -> str:
    """ISO 8601 UTC with a Z suffix, as stored in state.json."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_RELATIVE_RE = re.compile(r"^([+-])(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_when(text: str) -> dt.datetime:
    """Parse an ISO 8601 time (naive means UTC), `now`, or an offset like -2d, +1h, +30m."""
    text = text.strip()
    if text == "now":
        return utcnow()
    m = _RELATIVE_RE.match(text)
    if m:
        delta = dt.timedelta(**{_UNITS[m.group(3)]: int(m.group(2))})
        return utcnow() + (delta if m.group(1) == "+" else -delta)
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise SampleCAError(
            f"bad time {text!r}: use ISO 8601 (2030-01-31T12:00:00Z), 'now' or an offset "
            "like -2d, +1h, +30m"
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.astimezone(dt.UTC).replace(microsecond=0)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` via a temporary file and rename, so readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def generate_key(kind: str) -> PrivateKey:
    """Make a software key of one of KEY_TYPES."""
    if kind == "rsa2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "rsa3072":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    if kind == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "ec-p521":
        return ec.generate_private_key(ec.SECP521R1())
    raise SampleCAError(f"unknown key type {kind!r}: choose one of {', '.join(KEY_TYPES)}")


def key_pem(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM (this is a demo PKI)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def serial_hex(serial: int) -> str:
    """Serial as upper-case hex, whole bytes, no separators (as `openssl x509 -serial`)."""
    text = f"{serial:X}"
    return "0" + text if len(text) % 2 else text


def parse_serial(text: str) -> int:
    """Accept hex with or without 0x, colons or spaces, any case."""
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "").replace(" ", "")
    if not cleaned or not re.fullmatch(r"[0-9a-f]+", cleaned):
        raise SampleCAError(f"bad serial {text!r}: expected hexadecimal like 1A2B3C")
    return int(cleaned, 16)


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise SampleCAError(
            f"bad name {name!r}: use letters, digits, '.', '_' or '-' (max 64, no leading dot)"
        )
    return name


def subject_for(cn: str) -> x509.Name:
    """The fixed DN pattern CN=<cn>,O=idm demo,C=XX (C first in the encoded sequence)."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, COUNTRY),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORG),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def der_utf8string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return b"\x0c" + _der_length(len(raw)) + raw


def _der_tlv(buf: bytes, off: int) -> tuple[int, int, int]:
    """Read one DER TLV at `off`: return (tag, content start, content end)."""
    tag = buf[off]
    length = buf[off + 1]
    pos = off + 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(buf[pos : pos + count], "big")
        pos += count
    return tag, pos, pos + length


def public_key_bits(cert: x509.Certificate) -> bytes:
    """The subjectPublicKey BIT STRING contents (what RFC 6960 issuerKeyHash hashes)."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _, start, _ = _der_tlv(spki, 0)  # SubjectPublicKeyInfo SEQUENCE
    _, _, alg_end = _der_tlv(spki, start)  # AlgorithmIdentifier
    tag, bits_start, bits_end = _der_tlv(spki, alg_end)
    if tag != 0x03:
        raise ValueError("SubjectPublicKeyInfo without a BIT STRING")
    return spki[bits_start + 1 : bits_end]  # skip the unused-bits octet


def digest(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    h = hashes.Hash(algorithm)
    h.update(data)
    return h.finalize()


# ---------------------------------------------------------------------------
# State file
# ---------------------------------------------------------------------------


class State:
    """The JSON record of a sample CA directory (state.json).

    Keys: version, port, user_days, crl_next_update_hours, crl_numbers {root,
    intermediate}, certs [ {serial, subject, issuer, file, kind, status, not_before,
    not_after, revoked_at, reason} ].  `issuer` is "root", "intermediate" or "self".
    """

    def __init__(self, directory: Path, data: dict[str, Any]) -> None:
        self.dir = directory
        self.data = data

    @classmethod
    def new(cls, directory: Path, port: int, user_days: int, crl_hours: float) -> State:
        return cls(
            directory,
            {
                "version": 1,
                "port": port,
                "user_days": user_days,
                "crl_next_update_hours": crl_hours,
                "crl_numbers": {"root": 0, "intermediate": 0},
                "certs": [],
            },
        )

    @classmethod
    def load(cls, directory: Path) -> State:
        path = directory / STATE_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise SampleCAError(
                f"{directory} is not a sample CA (no {STATE_FILE}): run `init` first"
            ) from None
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as e:
            raise SampleCAError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(data, dict) or data.get("version") != 1:
            raise SampleCAError(f"{path} is not a version 1 sample CA state file")
        return cls(directory, data)

    def save(self) -> None:
        body = json.dumps(self.data, indent=2, sort_keys=True).encode() + b"\n"
        atomic_write(self.dir / STATE_FILE, body)

    @property
    def port(self) -> int:
        return int(self.data["port"])

    @property
    def certs(self) -> list[dict[str, Any]]:
        return self.data["certs"]  # type: ignore[no-any-return]

    def add(self, cert: x509.Certificate, issuer: str, file: Path, kind: str) -> dict[str, Any]:
        try:
            rel = str(file.resolve().relative_to(self.dir.resolve()))
        except ValueError:
            rel = str(file.resolve())
        record = {
            "serial": serial_hex(cert.serial_number),
            "subject": cert.subject.rfc4514_string(),
            "issuer": issuer,
            "file": rel,
            "kind": kind,
            "status": "valid",
            "not_before": iso(cert.not_valid_before_utc),
            "not_after": iso(cert.not_valid_after_utc),
            "revoked_at": None,
            "reason": None,
        }
        self.certs.append(record)
        return record

    def find(self, serial: int, issuer: str | None = None) -> dict[str, Any] | None:
        for record in self.certs:
            if int(record["serial"], 16) == serial and (
                issuer is None or record["issuer"] == issuer
            ):
                return record
        return None


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Serialize writers (user, issue, revoke, crl) on one CA directory."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK_FILE, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------
# Certificate building
# ---------------------------------------------------------------------------


def urls(port: int) -> dict[str, str]:
    base = f"http://127.0.0.1:{port}"
    return {
        "root_crl": f"{base}/crl/root.crl",
        "intermediate_crl": f"{base}/crl/intermediate.crl",
        "ocsp": f"{base}/ocsp",
        "root_cer": f"{base}/ca/root.cer",
        "intermediate_cer": f"{base}/ca/intermediate.cer",
    }


def load_cert_file(path: Path) -> x509.Certificate:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SampleCAError(f"cannot read certificate {path}: {e.strerror}") from None
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise SampleCAError(f"{path} is not an X.509 certificate (PEM or DER)") from None


def load_ca(directory: Path, name: str) -> tuple[x509.Certificate, PrivateKey]:
    """Load a CA (or the OCSP responder) certificate and key from the layout."""
    cert = load_cert_file(directory / f"{name}.pem")
    try:
        key = serialization.load_pem_private_key(
            (directory / f"{name}.key").read_bytes(),
            None,
            # Our own keys: skip the slow RSA consistency check (~50 ms per load).
            unsafe_skip_rsa_key_validation=True,
        )
    except (OSError, ValueError, TypeError) as e:
        raise SampleCAError(f"cannot load {directory / (name + '.key')}: {e}") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise SampleCAError(f"{name}.key is not an RSA or EC key")
    return cert, key


def _ski(public_key: Any) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(public_key)


def _aki(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _cdp(url: str) -> x509.CRLDistributionPoints:
    return x509.CRLDistributionPoints(
        [x509.DistributionPoint([x509.UniformResourceIdentifier(url)], None, None, None)]
    )


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _signing_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def build_certificate(
    subject: x509.Name,
    public_key: Any,
    issuer_name: x509.Name,
    issuer_key: PrivateKey,
    not_before: dt.datetime,
    not_after: dt.datetime,
    extensions: list[tuple[x509.ExtensionType, bool]],
) -> x509.Certificate:
    if not_after <= not_before:
        raise SampleCAError(
            f"not-after {iso(not_after)} is not later than not-before {iso(not_before)}"
        )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass(frozen=True)
class LeafOptions:
    """What varies between user certificates (see the `user` command's options)."""

    emails: tuple[str, ...]
    upn: str | None
    ekus: tuple[str, ...]
    cdp: bool
    ocsp: bool


def leaf_extensions(
    public_key: Any,
    issuer: x509.Certificate | None,
    issuer_ca: str,
    port: int,
    opts: LeafOptions,
    extra_san: list[x509.GeneralName] | None = None,
) -> list[tuple[x509.ExtensionType, bool]]:
    """Extensions of a user certificate; `issuer` None means self-signed."""
    u = urls(port)
    exts: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (_signing_key_usage(), True),
        (_ski(public_key), False),
    ]
    oids = [EKU_CHOICES[e] for e in opts.ekus if EKU_CHOICES[e] is not None]
    if oids:
        exts.append((x509.ExtendedKeyUsage([o for o in oids if o is not None]), False))
    names: list[x509.GeneralName] = list(extra_san or [])
    for email in opts.emails:
        if x509.RFC822Name(email) not in names:
            names.append(x509.RFC822Name(email))
    if opts.upn:
        names.append(x509.OtherName(UPN_OID, der_utf8string(opts.upn)))
    if names:
        exts.append((x509.SubjectAlternativeName(names), False))
    if issuer is not None:
        exts.append((_aki(issuer), False))
        if opts.cdp:
            exts.append((_cdp(u[f"{issuer_ca}_crl"]), False))
        access: list[x509.AccessDescription] = []
        if opts.ocsp:
            access.append(
                x509.AccessDescription(
                    x509.AuthorityInformationAccessOID.OCSP,
                    x509.UniformResourceIdentifier(u["ocsp"]),
                )
            )
            access.append(
                x509.AccessDescription(
                    x509.AuthorityInformationAccessOID.CA_ISSUERS,
                    x509.UniformResourceIdentifier(u[f"{issuer_ca}_cer"]),
                )
            )
        if access:
            exts.append((x509.AuthorityInformationAccess(access), False))
    return exts


@dataclass(frozen=True)
class Validity:
    not_before: dt.datetime
    not_after: dt.datetime


def resolve_validity(
    not_before: str | None, not_after: str | None, days: int | None, default_days: int
) -> Validity:
    """Defaults: not-before 5 minutes ago (or 1 day before an earlier --not-after),
    not-after = not-before + days."""
    after = parse_when(not_after) if not_after else None
    if not_before:
        before = parse_when(not_before)
    else:
        before = utcnow() - BACKDATE
        if after is not None and after - dt.timedelta(days=1) < before:
            before = after - dt.timedelta(days=1)
    if after is None:
        n = default_days if days is None else days
        if n <= 0:
            raise SampleCAError(f"--days must be positive, got {n}")
        after = before + dt.timedelta(days=n)
    return Validity(before, after)


# ---------------------------------------------------------------------------
# CRLs
# ---------------------------------------------------------------------------


def write_crl(state: State, ca_name: str, hours: float) -> Path:
    """Regenerate DIR/crl/<ca_name>.crl with the next CRL number (state saved first)."""
    cert, key = load_ca(state.dir, ca_name)
    number = int(state.data["crl_numbers"].get(ca_name, 0)) + 1
    state.data["crl_numbers"][ca_name] = number
    state.save()
    now = utcnow()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(cert.subject)
        .last_update(now)
        .next_update(now + dt.timedelta(hours=hours))
        .add_extension(x509.CRLNumber(number), critical=False)
        # The CRL's AKI names the key that signed it: the CA's own SKI.
        .add_extension(_aki(cert), critical=False)
    )
    for record in state.certs:
        if record["issuer"] != ca_name or record["status"] != "revoked":
            continue
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(int(record["serial"], 16))
            .revocation_date(parse_when(record["revoked_at"]))
        )
        reason = REASONS.get(record.get("reason") or "unspecified", x509.ReasonFlags.unspecified)
        # RFC 5280 5.3.1: leave the reason code out rather than say "unspecified".
        if reason is not x509.ReasonFlags.unspecified:
            entry = entry.add_extension(x509.CRLReason(reason), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    crl = builder.sign(key, hashes.SHA256())
    path = state.dir / "crl" / f"{ca_name}.crl"
    atomic_write(path, crl.public_bytes(serialization.Encoding.DER))
    return path


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------


def _write_leaf(
    directory: Path,
    name: str,
    cert: x509.Certificate,
    key: PrivateKey | None,
    issuer_cert: x509.Certificate | None,
) -> Path:
    users = directory / "users"
    cert_path = users / f"{name}.pem"
    atomic_write(cert_path, cert_pem(cert))
    if key is not None:
        atomic_write(users / f"{name}.key", key_pem(key), mode=0o600)
    chain = cert_pem(cert)
    # A chain file carries only untrusted certificates: never the root (the anchor).
    if issuer_cert is not None and issuer_cert.subject != issuer_cert.issuer:
        chain += cert_pem(issuer_cert)
    atomic_write(users / f"{name}-chain.pem", chain)
    return cert_path


def cmd_init(args: argparse.Namespace) -> int:
    directory: Path = args.dir
    port: int = args.port
    if not 1 <= port <= 65535:
        raise SampleCAError(f"--port must be 1..65535, got {port}")
    if args.days <= 0:
        raise SampleCAError(f"--days must be positive, got {args.days}")
    if args.next_update_hours <= 0:
        raise SampleCAError(f"--next-update-hours must be positive, got {args.next_update_hours}")
    if directory.exists() and not directory.is_dir():
        raise SampleCAError(f"{directory} exists and is not a directory")
    existing = [f for f in (*LAYOUT_FILES, "users", "crl") if (directory / f).exists()]
    if existing and not args.force:
        raise SampleCAError(
            f"{directory} already holds a sample CA ({existing[0]}): use --force to replace it"
        )
    with locked(directory):
        for f in existing:
            p = directory / f
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
        init_pki(directory, port, args.days, args.next_update_hours)
    print(f"sample CA created in {directory} (port {port})")
    return 0


def init_pki(directory: Path, port: int, user_days: int, crl_hours: float) -> None:
    """Create root, intermediate, OCSP responder, alice and bob, bundles and CRLs."""
    u = urls(port)
    state = State.new(directory, port, user_days, crl_hours)
    start = utcnow() - BACKDATE

    root_key = generate_key("rsa2048")
    root_name = subject_for(ROOT_CN)
    root = build_certificate(
        root_name,
        root_key.public_key(),
        root_name,
        root_key,
        start,
        start + dt.timedelta(days=ROOT_DAYS),
        [
            (x509.BasicConstraints(ca=True, path_length=None), True),
            (_ca_key_usage(), True),
            (_ski(root_key.public_key()), False),
        ],
    )
    atomic_write(directory / "root.key", key_pem(root_key), 0o600)
    atomic_write(directory / "root.pem", cert_pem(root))
    state.add(root, "root", directory / "root.pem", "ca")

    int_key = generate_key("rsa2048")
    intermediate = build_certificate(
        subject_for(INTERMEDIATE_CN),
        int_key.public_key(),
        root.subject,
        root_key,
        start,
        start + dt.timedelta(days=INTERMEDIATE_DAYS),
        [
            (x509.BasicConstraints(ca=True, path_length=0), True),
            (_ca_key_usage(), True),
            (_ski(int_key.public_key()), False),
            (_aki(root), False),
            (_cdp(u["root_crl"]), False),
            (
                x509.AuthorityInformationAccess(
                    [
                        x509.AccessDescription(
                            x509.AuthorityInformationAccessOID.OCSP,
                            x509.UniformResourceIdentifier(u["ocsp"]),
                        )
                    ]
                ),
                False,
            ),
        ],
    )
    atomic_write(directory / "intermediate.key", key_pem(int_key), 0o600)
    atomic_write(directory / "intermediate.pem", cert_pem(intermediate))
    state.add(intermediate, "root", directory / "intermediate.pem", "ca")

    ocsp_key = generate_key("rsa2048")
    responder = build_certificate(
        subject_for(OCSP_CN),
        ocsp_key.public_key(),
        intermediate.subject,
        int_key,
        start,
        start + dt.timedelta(days=OCSP_DAYS),
        [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (_signing_key_usage(), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), False),
            # RFC 6960 4.2.2.2.1: clients need not check the responder's own revocation.
            (x509.OCSPNoCheck(), False),
            (_ski(ocsp_key.public_key()), False),
            (_aki(intermediate), False),
        ],
    )
    atomic_write(directory / "ocsp.key", key_pem(ocsp_key), 0o600)
    atomic_write(directory / "ocsp.pem", cert_pem(responder))
    state.add(responder, "intermediate", directory / "ocsp.pem", "ocsp")

    atomic_write(directory / "ca-bundle.pem", cert_pem(root))
    atomic_write(directory / "chain.pem", cert_pem(intermediate))

    for name, kind in (("alice", "rsa2048"), ("bob", "ec-p256")):
        key = generate_key(kind)
        opts = LeafOptions((f"{name}@{EMAIL_DOMAIN}",), None, ("clientAuth",), True, True)
        cert = build_certificate(
            subject_for(name),
            key.public_key(),
            intermediate.subject,
            int_key,
            start,
            start + dt.timedelta(days=user_days),
            leaf_extensions(key.public_key(), intermediate, "intermediate", port, opts),
        )
        path = _write_leaf(directory, name, cert, key, intermediate)
        state.add(cert, "intermediate", path, "user")

    state.save()
    for ca_name in CA_NAMES:
        write_crl(state, ca_name, crl_hours)


def _leaf_options(args: argparse.Namespace, name: str) -> LeafOptions:
    ekus = tuple(args.eku) if args.eku else ("clientAuth",)
    if "none" in ekus and len(ekus) > 1:
        raise SampleCAError("--eku none cannot be combined with other --eku values")
    if getattr(args, "no_email", False):
        emails: tuple[str, ...] = ()
    elif args.email:
        emails = tuple(args.email)
    else:
        emails = (f"{name}@{EMAIL_DOMAIN}",) if name else ()
    for e in emails:
        if "@" not in e or any(c.isspace() for c in e):
            raise SampleCAError(f"bad --email {e!r}: expected an address like user@example.org")
    return LeafOptions(
        emails=emails,
        upn=getattr(args, "upn", None),
        ekus=ekus,
        cdp=not getattr(args, "no_cdp", False),
        ocsp=not getattr(args, "no_ocsp", False),
    )


def _refuse_overwrite(directory: Path, name: str, force: bool) -> None:
    if (directory / "users" / f"{name}.pem").exists() and not force:
        raise SampleCAError(f"users/{name}.pem already exists: use --force to issue a new one")


def cmd_user(args: argparse.Namespace) -> int:
    directory: Path = args.dir
    name = check_name(args.name)
    with locked(directory):
        state = State.load(directory)
        _refuse_overwrite(directory, name, args.force)
        opts = _leaf_options(args, name)
        validity = resolve_validity(
            args.not_before, args.not_after, args.days, int(state.data["user_days"])
        )
        issuer_cert, issuer_key = load_ca(directory, args.issuer)
        key = generate_key(args.key)
        cert = build_certificate(
            subject_for(args.cn or name),
            key.public_key(),
            issuer_cert.subject,
            issuer_key,
            validity.not_before,
            validity.not_after,
            leaf_extensions(key.public_key(), issuer_cert, args.issuer, state.port, opts),
        )
        path = _write_leaf(directory, name, cert, key, issuer_cert)
        state.add(cert, args.issuer, path, "user")
        state.save()
    print(serial_hex(cert.serial_number))
    return 0


def load_csr(path: Path) -> x509.CertificateSigningRequest:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SampleCAError(f"cannot read CSR {path}: {e.strerror}") from None
    try:
        if b"-----BEGIN" in data:
            csr = x509.load_pem_x509_csr(data)
        else:
            csr = x509.load_der_x509_csr(data)
    except ValueError:
        raise SampleCAError(f"{path} is not a PKCS#10 certificate request (PEM or DER)") from None
    try:
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm) as e:
        raise SampleCAError(f"cannot check the signature of CSR {path}: {e}") from None
    if not valid:
        raise SampleCAError(f"CSR {path} has a bad signature (not signed by its own key): refused")
    return csr


def cmd_issue(args: argparse.Namespace) -> int:
    directory: Path = args.dir
    csr = load_csr(args.csr)
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        csr_names = list(san)
    except x509.ExtensionNotFound:
        csr_names = []
    except ValueError as e:
        raise SampleCAError(f"CSR {args.csr} has malformed extensions: {e}") from None
    if len(csr.subject) == 0 and not csr_names and not args.email:
        raise SampleCAError(f"CSR {args.csr} has an empty subject and no SAN: nothing to certify")
    with locked(directory):
        state = State.load(directory)
        opts = _leaf_options(args, "")
        validity = resolve_validity(None, None, args.days, int(state.data["user_days"]))
        issuer_cert, issuer_key = load_ca(directory, args.issuer)
        public_key = csr.public_key()
        cert = build_certificate(
            csr.subject,
            public_key,
            issuer_cert.subject,
            issuer_key,
            validity.not_before,
            validity.not_after,
            leaf_extensions(public_key, issuer_cert, args.issuer, state.port, opts, csr_names),
        )
        out: Path = args.out
        atomic_write(out, cert_pem(cert))
        state.add(cert, args.issuer, out, "user")
        state.save()
    print(serial_hex(cert.serial_number))
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    directory: Path = args.dir
    if (args.certfile is None) == (args.serial is None):
        raise SampleCAError("give exactly one of CERTFILE or --serial HEX")
    serial = (
        load_cert_file(args.certfile).serial_number if args.certfile else parse_serial(args.serial)
    )
    revoked_at = parse_when(args.at) if args.at else utcnow()
    with locked(directory):
        state = State.load(directory)
        record = state.find(serial)
        if record is None:
            raise SampleCAError(
                f"serial {serial_hex(serial)} was not issued by the CA in {directory}"
            )
        if record["kind"] == "ca" and record["issuer"] == "root" and record["file"] == "root.pem":
            raise SampleCAError("the root cannot be revoked: it is the trust anchor")
        if record["issuer"] == "self":
            raise SampleCAError(
                f"{record['file']} is self-signed: no CA can revoke it (delete it instead)"
            )
        if record["status"] == "revoked":
            raise SampleCAError(
                f"serial {record['serial']} is already revoked ({record['reason']}, "
                f"{record['revoked_at']})"
            )
        record["status"] = "revoked"
        record["revoked_at"] = iso(revoked_at)
        record["reason"] = args.reason
        state.save()
        write_crl(state, record["issuer"], float(state.data["crl_next_update_hours"]))
    print(f"revoked {record['serial']} ({record['subject']}); crl/{record['issuer']}.crl updated")
    return 0


def cmd_crl(args: argparse.Namespace) -> int:
    directory: Path = args.dir
    with locked(directory):
        state = State.load(directory)
        if args.next_update_hours is not None:
            if args.next_update_hours <= 0:
                raise SampleCAError(
                    f"--next-update-hours must be positive, got {args.next_update_hours}"
                )
            state.data["crl_next_update_hours"] = args.next_update_hours
        hours = float(state.data["crl_next_update_hours"])
        for ca_name in CA_NAMES:
            write_crl(state, ca_name, hours)
        numbers = state.data["crl_numbers"]
    print(f"CRLs written: root #{numbers['root']}, intermediate #{numbers['intermediate']}")
    return 0


def cmd_selfsigned(args: argparse.Namespace) -> int:
    directory: Path = args.dir
    name = check_name(args.name)
    with locked(directory):
        state = State.load(directory)
        _refuse_overwrite(directory, name, args.force)
        opts = _leaf_options(args, name)
        validity = resolve_validity(None, None, args.days, int(state.data["user_days"]))
        key = generate_key(args.key)
        subject = subject_for(args.cn or name)
        cert = build_certificate(
            subject,
            key.public_key(),
            subject,
            key,
            validity.not_before,
            validity.not_after,
            leaf_extensions(key.public_key(), None, "self", state.port, opts),
        )
        path = _write_leaf(directory, name, cert, key, None)
        state.add(cert, "self", path, "selfsigned")
        state.save()
    print(serial_hex(cert.serial_number))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    state = State.load(args.dir)
    if args.json:
        print(json.dumps(state.certs, indent=2))
        return 0
    print(f"{'SERIAL':<42} {'STATUS':<8} {'ISSUER':<13} {'FILE':<28} SUBJECT")
    for r in state.certs:
        print(
            f"{r['serial']:<42} {r['status']:<8} {r['issuer']:<13} {r['file']:<28} {r['subject']}"
        )
    return 0


# ---------------------------------------------------------------------------
# OCSP responder logic (pure: request bytes in, response bytes out)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Responder:
    """One CA this server answers for, and who signs the answers."""

    ca_name: str
    ca_cert: x509.Certificate
    signer_cert: x509.Certificate
    signer_key: PrivateKey
    extra_certs: tuple[x509.Certificate, ...]


def load_responders(directory: Path) -> list[Responder]:
    root_cert, root_key = load_ca(directory, "root")
    int_cert, _ = load_ca(directory, "intermediate")
    ocsp_cert, ocsp_key = load_ca(directory, "ocsp")
    return [
        # Certificates issued by the intermediate: the delegated responder signs, and the
        # response carries its certificate plus the intermediate so clients can chain it.
        Responder("intermediate", int_cert, ocsp_cert, ocsp_key, (ocsp_cert, int_cert)),
        # Certificates issued by the root (the intermediate itself): the root signs.
        Responder("root", root_cert, root_cert, root_key, ()),
    ]


def _unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(
        serialization.Encoding.DER
    )


def answer_ocsp(
    request_der: bytes, responders: list[Responder], state: State, validity: dt.timedelta
) -> bytes:
    """Build the DER OCSP response for a DER request; never raises on bad input."""
    try:
        req = ocsp.load_der_ocsp_request(request_der)
        algorithm = req.hash_algorithm
        name_hash, key_hash, serial = req.issuer_name_hash, req.issuer_key_hash, req.serial_number
        nonce_ext = req.extensions.get_extension_for_class(x509.OCSPNonce)
        nonce: bytes | None = nonce_ext.value.nonce
    except x509.ExtensionNotFound:
        nonce = None
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # Several requests in one (cryptography refuses them), garbage, unknown hash...
        return _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)

    responder = None
    for r in responders:
        if (
            digest(algorithm, r.ca_cert.subject.public_bytes()) == name_hash
            and digest(algorithm, public_key_bits(r.ca_cert)) == key_hash
        ):
            responder = r
            break
    if responder is None:
        # RFC 6960 2.3: we are not authoritative for that issuer.
        return _unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)

    record = state.find(serial, responder.ca_name)
    revocation_time = None
    reason = None
    if record is None:
        status = ocsp.OCSPCertStatus.UNKNOWN
    elif record["status"] == "revoked":
        status = ocsp.OCSPCertStatus.REVOKED
        revocation_time = parse_when(record["revoked_at"])
        flag = REASONS.get(record.get("reason") or "unspecified", x509.ReasonFlags.unspecified)
        reason = None if flag is x509.ReasonFlags.unspecified else flag
    else:
        status = ocsp.OCSPCertStatus.GOOD
    # thisUpdate a minute back: a validator that took its "now" just before asking (with
    # no clock tolerance, as idm and pyhanko-certvalidator run) must not see it as future.
    now = utcnow() - dt.timedelta(minutes=1)
    builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
        issuer_name_hash=name_hash,
        issuer_key_hash=key_hash,
        serial_number=serial,
        algorithm=algorithm,
        cert_status=status,
        this_update=now,
        next_update=now + validity,
        revocation_time=revocation_time,
        revocation_reason=reason,
    )
    builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, responder.signer_cert)
    if responder.extra_certs:
        builder = builder.certificates(list(responder.extra_certs))
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    response = builder.sign(responder.signer_key, hashes.SHA256())
    return response.public_bytes(serialization.Encoding.DER)


def decode_ocsp_get(path_tail: str) -> bytes:
    """RFC 6960 appendix A.1: GET {url}/{url-encoding of base-64 encoding of the DER}."""
    text = urllib.parse.unquote(path_tail)
    # Be lenient about the base64 flavour and missing padding: clients differ.
    text = text.replace("-", "+").replace("_", "/").strip()
    text += "=" * (-len(text) % 4)
    return base64.b64decode(text, validate=True)


# ---------------------------------------------------------------------------
# HTTP server
# ---------------------------------------------------------------------------


def make_handler(
    directory: Path, responder_list: list[Responder], validity: dt.timedelta, quiet: bool
) -> type[BaseHTTPRequestHandler]:
    """The request handler class for one CA directory.

    Built in a function so that http.server is imported only by `serve`: every other
    command starts faster, which adds up over the many calls tests make.
    """
    from http.server import BaseHTTPRequestHandler

    class SampleCAHandler(BaseHTTPRequestHandler):
        """Serves CRLs, CA certificates (for AIA caIssuers) and OCSP from one CA directory."""

        server_version = "sample-ca/1"
        # A client that announces a body and never sends it must not pin a thread forever.
        timeout = 30
        ca_dir = directory
        responders = responder_list
        ocsp_validity = validity

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _not_found(self) -> None:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

        def _ocsp(self, request_der: bytes | None) -> None:
            if request_der is None:
                body = _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
            else:
                try:
                    # Re-read the state on every request so a `revoke` takes effect live.
                    state = State.load(self.ca_dir)
                    body = answer_ocsp(request_der, self.responders, state, self.ocsp_validity)
                except Exception:  # noqa: BLE001 - a responder answers internalError, never dies
                    traceback.print_exc(file=sys.stderr)
                    body = _unsuccessful(ocsp.OCSPResponseStatus.INTERNAL_ERROR)
            self._send(HTTPStatus.OK, body, "application/ocsp-response")

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            if path in ("/crl/root.crl", "/crl/intermediate.crl"):
                try:
                    body = (self.ca_dir / path.lstrip("/")).read_bytes()
                except OSError:
                    self._not_found()
                    return
                self._send(HTTPStatus.OK, body, "application/pkix-crl")
            elif path in ("/ca/root.cer", "/ca/intermediate.cer"):
                name = path.rsplit("/", 1)[1].removesuffix(".cer")
                try:
                    cert = load_cert_file(self.ca_dir / f"{name}.pem")
                except SampleCAError:
                    self._not_found()
                    return
                self._send(
                    HTTPStatus.OK,
                    cert.public_bytes(serialization.Encoding.DER),
                    "application/pkix-cert",
                )
            elif path.startswith("/ocsp/"):
                try:
                    der: bytes | None = decode_ocsp_get(path[len("/ocsp/") :])
                except (ValueError, binascii.Error):
                    der = None
                self._ocsp(der or None)
            else:
                self._not_found()

        do_HEAD = do_GET  # noqa: N815

        def do_POST(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0]
            if path not in ("/ocsp", "/ocsp/", "/"):
                self._not_found()
                return
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                length = -1
            if length < 0 or length > MAX_OCSP_REQUEST:
                # Unknown or oversized body: answer without reading it, then drop the connection.
                self.close_connection = True
                self._ocsp(None)
                return
            self._ocsp(self.rfile.read(length))

        if quiet:

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

    return SampleCAHandler


class _Stop(Exception):
    """Raised from the signal handler to leave serve_forever()."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop()


def cmd_serve(args: argparse.Namespace) -> int:
    directory: Path = args.dir
    state = State.load(directory)
    port = state.port if args.port is None else args.port
    if not 0 <= port <= 65535:
        raise SampleCAError(f"--port must be 0..65535, got {port}")
    if args.ocsp_validity_minutes <= 0:
        raise SampleCAError("--ocsp-validity-minutes must be positive")
    from http.server import ThreadingHTTPServer

    handler = make_handler(
        directory,
        load_responders(directory),
        dt.timedelta(minutes=args.ocsp_validity_minutes),
        args.quiet,
    )
    try:
        httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as e:
        raise SampleCAError(f"cannot listen on 127.0.0.1:{port}: {e.strerror}") from None
    httpd.daemon_threads = True
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    try:
        # Inside the try: a signal may arrive as soon as the ready line is out.
        print(f"serving http://127.0.0.1:{httpd.server_address[1]}", flush=True)
        httpd.serve_forever()
    except (_Stop, KeyboardInterrupt):
        pass
    finally:
        httpd.server_close()
    return 0


# ---------------------------------------------------------------------------
# Argument parsing
# ---------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse with our one-line error format (argparse already exits with status 2)."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return n


def _positive_float(text: str) -> float:
    try:
        n = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not n > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return n


def _port(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, got {text!r}")
    return n


def _add_leaf_options(p: argparse.ArgumentParser, *, dates: bool) -> None:
    p.add_argument(
        "--email",
        action="append",
        metavar="ADDR",
        help="rfc822Name in the SAN (repeatable; default NAME@example.org)",
    )
    p.add_argument(
        "--eku",
        action="append",
        choices=list(EKU_CHOICES),
        help="extended key usage (repeatable; default clientAuth; 'none' leaves the "
        "extension out; sshClient is id-kp-secureShellClient)",
    )
    if dates:
        p.add_argument(
            "--not-before",
            metavar="WHEN",
            help="start of validity: ISO 8601, 'now' or an offset like -2d (default 5 min "
            "ago, or one day before an earlier --not-after)",
        )
        group = p.add_mutually_exclusive_group()
        group.add_argument("--not-after", metavar="WHEN", help="end of validity (as --not-before)")
        group.add_argument(
            "--days", type=_positive_int, help="validity in days (default: init's --days)"
        )
    else:
        p.add_argument(
            "--days", type=_positive_int, help="validity in days (default: init's --days)"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="A demo and test PKI for idm: root + intermediate CA, delegated OCSP\n"
        "responder, users, CRLs, and an HTTP CRL/OCSP server on 127.0.0.1.\n"
        "Keys are unencrypted: never use it in production.",
        epilog=LAYOUT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Parser
    )
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser(
        "init",
        help="create a new PKI (root, intermediate, OCSP, alice, bob)",
        description="Create root, intermediate and OCSP responder certificates, "
        "users alice (RSA-2048) and bob (EC P-256), bundles and CRLs in DIR.",
        epilog=LAYOUT_HELP,
        formatter_class=fmt,
    )
    p.add_argument("dir", type=Path, metavar="DIR")
    p.add_argument(
        "--port",
        type=_port,
        required=True,
        help="port of the CRL/OCSP URLs written into certificates (and of `serve`)",
    )
    p.add_argument(
        "--days",
        type=_positive_int,
        default=DEFAULT_USER_DAYS,
        help=f"validity of user certificates in days (default {DEFAULT_USER_DAYS})",
    )
    p.add_argument(
        "--next-update-hours",
        type=_positive_float,
        default=DEFAULT_CRL_HOURS,
        help=f"CRL nextUpdate after thisUpdate (default {DEFAULT_CRL_HOURS} = 7 days)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing sample CA in DIR")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser(
        "user",
        help="issue a key and certificate for a user",
        description="Issue a software key and certificate: users/NAME.pem, "
        "users/NAME.key, users/NAME-chain.pem. Subject CN=NAME,O=idm demo,C=XX.",
    )
    p.add_argument("dir", type=Path, metavar="DIR")
    p.add_argument("name", metavar="NAME", help="file name under users/ and default CN")
    p.add_argument("--key", choices=KEY_TYPES, default="rsa2048", help="key type (default rsa2048)")
    p.add_argument(
        "--cn", help="subject CN instead of NAME (e.g. a second certificate for the same person)"
    )
    p.add_argument("--upn", help="Microsoft UPN otherName in the SAN")
    p.add_argument("--no-email", action="store_true", help="no rfc822Name in the SAN")
    _add_leaf_options(p, dates=True)
    p.add_argument("--no-cdp", action="store_true", help="leave out the CRL distribution point")
    p.add_argument("--no-ocsp", action="store_true", help="leave out the AIA (OCSP, caIssuers)")
    p.add_argument(
        "--issuer",
        choices=CA_NAMES,
        default="intermediate",
        help="issuing CA (default intermediate)",
    )
    p.add_argument("--force", action="store_true", help="overwrite users/NAME.*")
    p.set_defaults(func=cmd_user)

    p = sub.add_parser(
        "issue",
        help="certify a PKCS#10 request (prints the serial)",
        description="Verify the CSR's signature, copy its subject and SAN, add "
        "the user-certificate extensions, write the certificate (PEM) to --out.",
    )
    p.add_argument("dir", type=Path, metavar="DIR")
    p.add_argument("--csr", type=Path, required=True, metavar="FILE", help="PEM or DER CSR")
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help="certificate (PEM)")
    _add_leaf_options(p, dates=False)
    p.add_argument(
        "--issuer",
        choices=CA_NAMES,
        default="intermediate",
        help="issuing CA (default intermediate)",
    )
    p.set_defaults(func=cmd_issue, no_email=False, upn=None)

    p = sub.add_parser(
        "revoke",
        help="revoke a certificate and regenerate its CA's CRL",
        description="Mark a certificate revoked in state.json and rewrite the "
        "issuing CA's CRL. The running server answers from state.json at once.",
    )
    p.add_argument("dir", type=Path, metavar="DIR")
    p.add_argument("certfile", type=Path, nargs="?", metavar="CERTFILE")
    p.add_argument("--serial", metavar="HEX", help="serial number in hex instead of CERTFILE")
    p.add_argument(
        "--reason",
        choices=list(REASONS),
        default="unspecified",
        help="CRLReason (default unspecified: no reason code is written)",
    )
    p.add_argument("--at", metavar="WHEN", help="revocation time (default now)")
    p.set_defaults(func=cmd_revoke)

    p = sub.add_parser("crl", help="regenerate both CRLs (next CRL number)")
    p.add_argument("dir", type=Path, metavar="DIR")
    p.add_argument(
        "--next-update-hours",
        type=_positive_float,
        help="nextUpdate after thisUpdate (remembered for later CRLs)",
    )
    p.set_defaults(func=cmd_crl)

    p = sub.add_parser(
        "selfsigned",
        help="a self-signed end-entity certificate",
        description="Write users/NAME.pem/.key/-chain.pem, self-signed, "
        "subject CN=NAME,O=idm demo,C=XX (no CRL DP, no AIA).",
    )
    p.add_argument("dir", type=Path, metavar="DIR")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--key", choices=KEY_TYPES, default="rsa2048", help="key type (default rsa2048)")
    p.add_argument("--cn", help="subject CN instead of NAME")
    p.add_argument("--days", type=_positive_int, help="validity in days")
    p.add_argument("--force", action="store_true", help="overwrite users/NAME.*")
    p.set_defaults(func=cmd_selfsigned, email=None, eku=None, no_email=False, upn=None)

    p = sub.add_parser(
        "serve",
        help="serve CRLs and OCSP on 127.0.0.1",
        description="HTTP on 127.0.0.1 only: GET /crl/root.crl, "
        "/crl/intermediate.crl, /ca/root.cer, /ca/intermediate.cer; OCSP by "
        "POST /ocsp and GET /ocsp/<base64>. Prints 'serving http://127.0.0.1:PORT' "
        "when ready; stops on SIGTERM/SIGINT.",
    )
    p.add_argument("dir", type=Path, metavar="DIR")
    p.add_argument("--port", type=_port, help="port (default: the one given to init)")
    p.add_argument(
        "--ocsp-validity-minutes",
        type=_positive_float,
        default=DEFAULT_OCSP_MINUTES,
        help=f"OCSP nextUpdate after thisUpdate (default {DEFAULT_OCSP_MINUTES})",
    )
    p.add_argument("--quiet", action="store_true", help="no request log on stderr")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("list", help="list issued certificates from state.json")
    p.add_argument("dir", type=Path, metavar="DIR")
    p.add_argument("--json", action="store_true", help="print the records as JSON")
    p.set_defaults(func=cmd_list)
    return parser


_TIME_OPTIONS = ("--not-before", "--not-after", "--at")


def _join_negative_offsets(argv: list[str]) -> list[str]:
    """Let `--not-after -1d` work: argparse would take `-1d` for an option."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in _TIME_OPTIONS and i + 1 < len(argv) and _RELATIVE_RE.match(argv[i + 1]):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_join_negative_offsets(sys.argv[1:] if argv is None else argv))
    try:
        return int(args.func(args))
    except SampleCAError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        where = f" {e.filename}" if e.filename else ""
        print(f"{PROG}: error:{where} {e.strerror or e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
