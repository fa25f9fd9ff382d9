"""Loading certificates and CA bundles from PEM, DER, bundles and folders.

Every failure is a `MalformedInputError` with a one-line message naming the file. Files
are read with `idm.validator.inputfile.read_input_file` (regular files only, size caps).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from idm.validator.errors import MalformedInputError
from idm.validator.inputfile import BUNDLE_MAX_BYTES, CERTIFICATE_MAX_BYTES, read_input_file

if TYPE_CHECKING:  # imported on use: FOLDER_SUFFIXES alone must not load `cryptography`
    from cryptography import x509

    from idm.validator.inputfile import FileCheck

PEM_CERT_BEGIN = b"-----BEGIN CERTIFICATE-----"
# Extensions picked up when a CA folder is scanned; anything else (README, .0 hash links
# that duplicate real files, keys) is skipped rather than failing the whole folder.
FOLDER_SUFFIXES = {".pem", ".crt", ".cer", ".der"}


def parse_certificates(data: bytes, what: str = "input") -> list[x509.Certificate]:
    """All certificates in `data`: one or more PEM blocks, or one DER certificate.

    `what` names the input in error messages (a file name, "pkcs11 object", ...).
    """
    from cryptography import x509

    from idm.validator.errors import PARSE_ERRORS
    if PEM_CERT_BEGIN in data:
        try:
            certs = x509.load_pem_x509_certificates(data)
        except PARSE_ERRORS as e:
            raise MalformedInputError(f"{what}: malformed PEM certificate ({e})") from None
        if not certs:
            raise MalformedInputError(f"{what}: no certificate in PEM data")
        return certs
    if data.lstrip().startswith(b"-----BEGIN"):
        raise MalformedInputError(f"{what}: PEM data holds no CERTIFICATE block")
    try:
        return [x509.load_der_x509_certificate(data)]
    except PARSE_ERRORS:
        raise MalformedInputError(f"{what}: neither a PEM nor a DER certificate") from None


def parse_certificate(data: bytes, what: str = "input") -> x509.Certificate:
    """Exactly one certificate (the first of a PEM file)."""
    return parse_certificates(data, what)[0]


def load_certificate_file(
    path: str | Path, what: str = "certificate file"
) -> tuple[x509.Certificate, list[x509.Certificate]]:
    """A certificate file: (leaf, untrusted intermediates that follow it in a PEM file).

    ``what`` names the input in messages (an option such as "--cert")."""
    p = Path(path)
    certs = parse_certificates(read_input_file(p, what, CERTIFICATE_MAX_BYTES), str(p))
    return certs[0], certs[1:]


def load_bundle(
    paths: Iterable[str | Path], what: str = "certificate bundle", check: FileCheck | None = None
) -> list[x509.Certificate]:
    """Certificates from PEM bundles, DER files and folders, without duplicates.

    A folder contributes its files with a certificate-like suffix (.pem .crt .cer .der);
    an unparsable file named explicitly is an error, one inside a folder is an error too
    (a silently skipped CA would be a surprise), but other files in the folder are ignored.
    ``check``, when given, is called with each file's path and stat before it is read
    (the sshd helper passes its StrictModes check: whoever can write an anchor adds a CA).
    """
    from cryptography.hazmat.primitives.serialization import Encoding

    seen: set[bytes] = set()
    out: list[x509.Certificate] = []
    for path in paths:
        p = Path(path)
        if p.is_dir():
            files = sorted(
                f for f in p.iterdir() if f.suffix.lower() in FOLDER_SUFFIXES and f.is_file()
            )
        elif p.exists():
            files = [p]
        else:
            raise MalformedInputError(f"{what} {p}: no such file or folder")
        for f in files:
            data = read_input_file(f, what, BUNDLE_MAX_BYTES, check)
            for cert in parse_certificates(data, str(f)):
                fp = hashlib.sha256(cert.public_bytes(Encoding.DER)).digest()
                if fp not in seen:
                    seen.add(fp)
                    out.append(cert)
    return out
