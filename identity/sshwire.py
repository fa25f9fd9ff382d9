"""SSH wire encodings: the one place in idm that packs and parses SSH binary formats.

Everything here is pure (no I/O, no tokens) and follows ../shared/reference/ssh-x509-wire.md.
Malformed input of any kind raises :class:`WireFormatError` (a ``ValueError``) with a
one-line message; nothing else escapes the parsers.

Primitives (RFC 4251)
    ``pack_byte``, ``pack_bool``, ``pack_uint32``, ``pack_uint64``, ``pack_string``,
    ``pack_mpint``, ``pack_name_list``; :class:`WireReader` reads the same with bounds
    checks (``read_byte``, ``read_bool``, ``read_uint32``, ``read_uint64``, ``read_string``,
    ``read_mpint``, ``read_name_list``, ``read_rest``, ``expect_end``).

Public keys
    ``key_algorithm(public_key)`` -> ``"ssh-rsa"`` / ``"ecdsa-sha2-nistp256"`` / ... ;
    ``public_key_blob(public_key)`` -> plain blob; ``public_key_from_blob(blob)`` -> key.
    ``x509_algorithm(public_key)`` -> the RFC 6187 name idm serves for that key;
    ``x509_rfc6187_blob(chain, name=None, ocsp_responses=())`` and
    ``x509_raw_der_blob(certificate)`` (PKIX-SSH's agent form: the raw DER, named
    ``x509v3-sign-rsa`` for RSA and ``x509v3-ecdsa-sha2-<curve>`` for EC keys).
    ``parse_key_blob(blob)`` -> :class:`KeyBlob` (``form`` a :class:`BlobForm`,
    ``algorithm``, ``public_key``, ``chain`` DERs, ``ocsp_responses``, ``plain_blob``,
    ``certificate``). ``KeyBlob.plain(key)``, ``KeyBlob.rfc6187(chain)``,
    ``KeyBlob.raw_der(cert)`` build the three forms from ``cryptography`` objects.
    ``fingerprint_sha256(blob)`` -> ``"SHA256:<base64, no padding>"`` like ``ssh-keygen -l``.

Signatures
    ``signature_scheme(key_blob, flags)`` -> :class:`SignatureScheme` (``name``, ``hash``)
    per the table in the reference (flags ``SIGN_RSA_SHA2_256``, ``SIGN_RSA_SHA2_512``,
    ``SIGN_ECDSA_DER``); ``signature_blob(name, sig_bytes)``,
    ``rsa_signature_blob``, ``ecdsa_signature_blob(name, r, s)``,
    ``ecdsa_signature_from_raw(name, r_concat_s)`` (PKCS#11 output),
    ``ecdsa_signature_from_der(name, der)``; ``parse_signature_blob(blob)`` ->
    ``(name, sig_bytes)``; ``sign_with_private_key(private_key, scheme, data)`` and
    ``verify_signature(key_blob, data, signature_blob)`` for software keys and checks.
    ``DIGEST_INFO_PREFIXES`` and ``digest_info(hash_name, data)`` build the input of
    ``CKM_RSA_PKCS`` (``DigestInfo(hash) || hash``).

Private keys (agent ADD_IDENTITY, PROTOCOL.agent / draft-miller-ssh-agent)
    ``read_private_key(reader)`` -> ``cryptography`` private key;
    ``pack_private_key(private_key)`` (the inverse, for clients and tests).

Text lines
    ``public_key_line(key_blob, comment=None)`` -> ``"<name> <base64> [comment]"``; X.509
    forms use the raw DER of the leaf in base64 (as PKIX-SSH and asyncssh do);
    ``authorized_keys_line(key_blob, comment=None, options=())``;
    ``expiry_time_option(when)`` -> ``expiry-time="YYYYMMDDHHMMSSZ"`` (UTC);
    ``parse_public_key_line(line)`` -> :class:`PublicKeyLine`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import enum
import hashlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

__all__ = [
    "BlobForm",
    "DIGEST_INFO_PREFIXES",
    "KeyBlob",
    "PublicKeyLine",
    "SIGN_ECDSA_DER",
    "SIGN_RSA_SHA2_256",
    "SIGN_RSA_SHA2_512",
    "SignatureScheme",
    "WireFormatError",
    "WireReader",
    "authorized_keys_line",
    "digest_info",
    "ecdsa_signature_blob",
    "ecdsa_signature_from_der",
    "ecdsa_signature_from_raw",
    "expiry_time_option",
    "fingerprint_sha256",
    "key_algorithm",
    "pack_bool",
    "pack_byte",
    "pack_mpint",
    "pack_name_list",
    "pack_private_key",
    "pack_string",
    "pack_uint32",
    "pack_uint64",
    "parse_key_blob",
    "parse_public_key_line",
    "parse_signature_blob",
    "public_key_blob",
    "public_key_from_blob",
    "public_key_line",
    "raw_der_algorithm",
    "read_private_key",
    "rsa_signature_blob",
    "sign_with_private_key",
    "signature_blob",
    "signature_scheme",
    "verify_signature",
    "x509_algorithm",
    "x509_raw_der_blob",
    "x509_rfc6187_blob",
]

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
# Functions that take a key from elsewhere (a certificate, a token) accept any
# ``cryptography`` public key and raise WireFormatError for types SSH here does not speak.

# Agent sign-request flags (draft-miller-ssh-agent; 0x10000 is PKIX-SSH's).
SIGN_RSA_SHA2_256 = 0x02
SIGN_RSA_SHA2_512 = 0x04
SIGN_ECDSA_DER = 0x00010000

# OpenSSH refuses RSA moduli above 16384 bits; so do we (bounds the work a blob can cause).
MAX_RSA_BITS = 16384
MIN_RSA_BITS = 1024

SSH_RSA = "ssh-rsa"
SSH_ED25519 = "ssh-ed25519"
X509_SIGN_RSA = "x509v3-sign-rsa"
X509_SSH_RSA = "x509v3-ssh-rsa"
X509_RSA2048_SHA256 = "x509v3-rsa2048-sha256"

# curve identifier -> (cryptography curve class, hash for signatures, key size bits)
_CURVES: dict[str, tuple[type[ec.EllipticCurve], str]] = {
    "nistp256": (ec.SECP256R1, "sha256"),
    "nistp384": (ec.SECP384R1, "sha384"),
    "nistp521": (ec.SECP521R1, "sha512"),
}
_CURVE_BY_OPENSSL_NAME = {"secp256r1": "nistp256", "secp384r1": "nistp384", "secp521r1": "nistp521"}

ECDSA_ALGORITHMS = tuple(f"ecdsa-sha2-{c}" for c in _CURVES)
X509_ECDSA_ALGORITHMS = tuple(f"x509v3-ecdsa-sha2-{c}" for c in _CURVES)
RFC6187_ALGORITHMS = (X509_SSH_RSA, X509_RSA2048_SHA256, *X509_ECDSA_ALGORITHMS)
PLAIN_ALGORITHMS = (SSH_RSA, *ECDSA_ALGORITHMS, SSH_ED25519)
X509_ALGORITHMS = (X509_SIGN_RSA, *RFC6187_ALGORITHMS)

# DER DigestInfo headers for PKCS#1 v1.5 (RFC 8017 section 9.2, note 1).
DIGEST_INFO_PREFIXES: dict[str, bytes] = {
    "sha1": bytes.fromhex("3021300906052b0e03021a05000414"),
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "sha512": bytes.fromhex("3051300d060960864801650304020305000440"),
}

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}

# Caps on counts inside one blob: far above any real chain, low enough to bound work.
MAX_CHAIN_LENGTH = 16
MAX_OCSP_RESPONSES = 16


class WireFormatError(ValueError):
    """Malformed SSH wire data: truncated, overlong, inconsistent or of an unknown type."""


# --------------------------------------------------------------------------- primitives


def pack_byte(value: int) -> bytes:
    """One byte (0..255)."""
    return bytes((value,))


def pack_bool(value: bool) -> bytes:
    """An RFC 4251 boolean."""
    return b"\x01" if value else b"\x00"


def pack_uint32(value: int) -> bytes:
    """A big-endian uint32."""
    return struct.pack(">I", value)


def pack_uint64(value: int) -> bytes:
    """A big-endian uint64."""
    return struct.pack(">Q", value)


def pack_string(value: bytes | str) -> bytes:
    """An RFC 4251 string: uint32 length then the bytes (str is encoded as UTF-8)."""
    if isinstance(value, str):
        value = value.encode("utf-8")
    return struct.pack(">I", len(value)) + value


def pack_mpint(value: int) -> bytes:
    """An RFC 4251 mpint: two's complement, minimal length, zero is the empty string."""
    if value == 0:
        return pack_string(b"")
    length = (value.bit_length() + 8) // 8  # +8 leaves room for the sign bit
    raw = value.to_bytes(length, "big", signed=True)
    # to_bytes with the +8 rounding can leave one redundant leading byte; strip it.
    if len(raw) > 1 and (
        (raw[0] == 0 and raw[1] < 0x80) or (raw[0] == 0xFF and raw[1] >= 0x80)
    ):
        raw = raw[1:]
    return pack_string(raw)


def pack_name_list(names: Iterable[str]) -> bytes:
    """An RFC 4251 name-list: comma-separated ASCII names in a string."""
    names = list(names)
    for name in names:
        if not name or "," in name or not name.isascii():
            raise WireFormatError(f"invalid name in name-list: {name!r}")
    return pack_string(",".join(names).encode("ascii"))


class WireReader:
    """Reads RFC 4251 types from a byte buffer; every read is bounds checked.

    Reading past the end, or a length field that points past it, raises
    :class:`WireFormatError` naming what was being read.
    """

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(bytes(data))
        self._pos = 0

    @property
    def remaining(self) -> int:
        """Bytes not read yet."""
        return len(self._data) - self._pos

    def at_end(self) -> bool:
        """True when every byte has been read."""
        return self._pos >= len(self._data)

    def expect_end(self, what: str = "message") -> None:
        """Raise if unread bytes remain (trailing garbage is an error, as in OpenSSH)."""
        if not self.at_end():
            raise WireFormatError(f"{what} has {self.remaining} unexpected trailing bytes")

    def read_bytes(self, n: int, what: str = "data") -> bytes:
        """Exactly ``n`` raw bytes."""
        if n < 0 or n > self.remaining:
            raise WireFormatError(
                f"truncated {what}: need {n} bytes, {self.remaining} left"
            )
        out = bytes(self._data[self._pos : self._pos + n])
        self._pos += n
        return out

    def read_byte(self, what: str = "byte") -> int:
        """One byte as an int."""
        return self.read_bytes(1, what)[0]

    def read_bool(self, what: str = "boolean") -> bool:
        """An RFC 4251 boolean (any non-zero byte is true)."""
        return self.read_byte(what) != 0

    def read_uint32(self, what: str = "uint32") -> int:
        """A big-endian uint32."""
        return int(struct.unpack(">I", self.read_bytes(4, what))[0])

    def read_uint64(self, what: str = "uint64") -> int:
        """A big-endian uint64."""
        return int(struct.unpack(">Q", self.read_bytes(8, what))[0])

    def read_string(self, what: str = "string") -> bytes:
        """An RFC 4251 string's bytes."""
        length = self.read_uint32(f"length of {what}")
        if length > self.remaining:
            raise WireFormatError(
                f"truncated {what}: length {length} but only {self.remaining} bytes left"
            )
        return self.read_bytes(length, what)

    def read_text(self, what: str = "string") -> str:
        """A string that must be UTF-8 text."""
        raw = self.read_string(what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WireFormatError(f"{what} is not valid UTF-8") from exc

    def read_name(self, what: str = "name") -> str:
        """A string holding an algorithm or extension name (printable ASCII)."""
        raw = self.read_string(what)
        if not raw or any(b < 0x21 or b > 0x7E for b in raw):
            raise WireFormatError(f"{what} is not a printable ASCII name")
        return raw.decode("ascii")

    def read_mpint(self, what: str = "mpint", allow_negative: bool = False) -> int:
        """An RFC 4251 mpint; rejects non-minimal encodings and (by default) negatives."""
        raw = self.read_string(what)
        if not raw:
            return 0
        if (raw[0] == 0 and (len(raw) == 1 or raw[1] < 0x80)) or (
            raw[0] == 0xFF and len(raw) > 1 and raw[1] >= 0x80
        ):
            raise WireFormatError(f"{what} is not minimally encoded")
        value = int.from_bytes(raw, "big", signed=True)
        if value < 0 and not allow_negative:
            raise WireFormatError(f"{what} is negative")
        return value

    def read_name_list(self, what: str = "name-list") -> list[str]:
        """An RFC 4251 name-list."""
        raw = self.read_string(what)
        if not raw:
            return []
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError as exc:
            raise WireFormatError(f"{what} is not ASCII") from exc
        names = text.split(",")
        if any(not n for n in names):
            raise WireFormatError(f"{what} has an empty name")
        return names

    def read_rest(self) -> bytes:
        """All unread bytes."""
        return self.read_bytes(self.remaining, "rest")


# --------------------------------------------------------------------------- public keys


def _curve_id(curve: ec.EllipticCurve) -> str:
    try:
        return _CURVE_BY_OPENSSL_NAME[curve.name]
    except KeyError:
        raise WireFormatError(f"unsupported elliptic curve {curve.name}") from None


def key_algorithm(public_key: PublicKeyTypes) -> str:
    """The plain SSH key algorithm name of a ``cryptography`` public key."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return SSH_RSA
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return f"ecdsa-sha2-{_curve_id(public_key.curve)}"
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return SSH_ED25519
    raise WireFormatError(f"unsupported public key type {type(public_key).__name__}")


def public_key_blob(public_key: PublicKeyTypes) -> bytes:
    """The plain SSH public key blob (``ssh-rsa``, ``ecdsa-sha2-*``, ``ssh-ed25519``)."""
    if isinstance(public_key, rsa.RSAPublicKey):
        nums = public_key.public_numbers()
        return pack_string(SSH_RSA) + pack_mpint(nums.e) + pack_mpint(nums.n)
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        curve = _curve_id(public_key.curve)
        point = public_key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return pack_string(f"ecdsa-sha2-{curve}") + pack_string(curve) + pack_string(point)
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return pack_string(SSH_ED25519) + pack_string(raw)
    raise WireFormatError(f"unsupported public key type {type(public_key).__name__}")


def _rsa_public(e: int, n: int) -> rsa.RSAPublicKey:
    if n.bit_length() > MAX_RSA_BITS:
        raise WireFormatError(f"RSA modulus of {n.bit_length()} bits exceeds {MAX_RSA_BITS}")
    if n.bit_length() < MIN_RSA_BITS:
        raise WireFormatError(f"RSA modulus of {n.bit_length()} bits is below {MIN_RSA_BITS}")
    try:
        return rsa.RSAPublicNumbers(e, n).public_key()
    except (ValueError, TypeError) as exc:
        raise WireFormatError(f"invalid RSA public key: {exc}") from None


def _ec_public(curve_id: str, point: bytes) -> ec.EllipticCurvePublicKey:
    curve_cls = _CURVES[curve_id][0]
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(curve_cls(), point)
    except (ValueError, TypeError):
        raise WireFormatError(f"invalid {curve_id} public point") from None


def _read_plain_key(reader: WireReader, name: str) -> PublicKey:
    """Read the key fields that follow ``name`` in a plain public key blob."""
    if name == SSH_RSA:
        e = reader.read_mpint("RSA exponent")
        n = reader.read_mpint("RSA modulus")
        return _rsa_public(e, n)
    if name in ECDSA_ALGORITHMS:
        curve = reader.read_name("ECDSA curve")
        if f"ecdsa-sha2-{curve}" != name:
            raise WireFormatError(f"ECDSA curve {curve!r} does not match key type {name}")
        return _ec_public(curve, reader.read_string("ECDSA point"))
    if name == SSH_ED25519:
        raw = reader.read_string("Ed25519 key")
        if len(raw) != 32:
            raise WireFormatError(f"Ed25519 key must be 32 bytes, got {len(raw)}")
        try:
            return ed25519.Ed25519PublicKey.from_public_bytes(raw)
        except ValueError:
            raise WireFormatError("invalid Ed25519 public key") from None
    raise WireFormatError(f"unsupported key type {name!r}")


def public_key_from_blob(blob: bytes) -> PublicKey:
    """Parse a plain SSH public key blob into a ``cryptography`` public key."""
    reader = WireReader(blob)
    name = reader.read_name("key type")
    key = _read_plain_key(reader, name)
    reader.expect_end("public key blob")
    return key


def x509_algorithm(public_key: PublicKeyTypes) -> str:
    """The RFC 6187 algorithm idm serves for a certificate holding ``public_key``.

    RSA keys of at least 2048 bits get ``x509v3-rsa2048-sha256`` (SHA-256 signatures),
    smaller RSA keys ``x509v3-ssh-rsa``; ECDSA keys ``x509v3-ecdsa-sha2-<curve>``.
    """
    if isinstance(public_key, rsa.RSAPublicKey):
        return X509_RSA2048_SHA256 if public_key.key_size >= 2048 else X509_SSH_RSA
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return f"x509v3-ecdsa-sha2-{_curve_id(public_key.curve)}"
    raise WireFormatError(f"no X.509 SSH algorithm for {type(public_key).__name__} keys")


def _check_x509_algorithm(name: str, public_key: PublicKey) -> None:
    """Raise unless the certificate key fits the X.509 algorithm name."""
    if name in (X509_SIGN_RSA, X509_SSH_RSA, X509_RSA2048_SHA256):
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise WireFormatError(f"{name} needs an RSA certificate key")
        if name == X509_RSA2048_SHA256 and public_key.key_size < 2048:
            raise WireFormatError(f"{name} needs an RSA key of at least 2048 bits")
        return
    if name in X509_ECDSA_ALGORITHMS:
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or (
            f"x509v3-ecdsa-sha2-{_curve_id(public_key.curve)}" != name
        ):
            raise WireFormatError(f"{name} does not match the certificate's key")
        return
    raise WireFormatError(f"unsupported X.509 key type {name!r}")


def _der_of(cert: x509.Certificate | bytes) -> bytes:
    if isinstance(cert, x509.Certificate):
        return cert.public_bytes(serialization.Encoding.DER)
    return bytes(cert)


def _load_certificate(der: bytes, what: str) -> x509.Certificate:
    if not der or der[0] != 0x30:
        raise WireFormatError(f"{what} is not a DER certificate")
    try:
        return x509.load_der_x509_certificate(der)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise WireFormatError(f"{what} is not a valid DER certificate: {exc}") from None


def _certificate_key(cert: x509.Certificate, what: str) -> PublicKey:
    try:
        key = cert.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise WireFormatError(f"{what} has an unusable public key: {exc}") from None
    if isinstance(key, rsa.RSAPublicKey):
        if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
            raise WireFormatError(f"{what} has an RSA key of unsupported size {key.key_size}")
        return key
    if isinstance(key, ec.EllipticCurvePublicKey):
        _curve_id(key.curve)
        return key
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    raise WireFormatError(f"{what} has an unsupported {type(key).__name__} key")


def x509_rfc6187_blob(
    chain: Sequence[x509.Certificate | bytes],
    name: str | None = None,
    ocsp_responses: Sequence[bytes] = (),
) -> bytes:
    """An RFC 6187 blob: name, certificate count, DERs (leaf first), OCSP count, responses.

    ``name`` defaults to :func:`x509_algorithm` of the leaf's key.
    """
    if not chain:
        raise WireFormatError("an RFC 6187 blob needs at least one certificate")
    ders = [_der_of(c) for c in chain]
    leaf = chain[0] if isinstance(chain[0], x509.Certificate) else None
    if leaf is None:
        leaf = _load_certificate(ders[0], "leaf certificate")
    key = _certificate_key(leaf, "leaf certificate")
    if name is None:
        name = x509_algorithm(key)
    elif name not in RFC6187_ALGORITHMS:
        raise WireFormatError(f"{name!r} is not an RFC 6187 algorithm")
    _check_x509_algorithm(name, key)
    parts = [pack_string(name), pack_uint32(len(ders))]
    parts += [pack_string(d) for d in ders]
    parts.append(pack_uint32(len(ocsp_responses)))
    parts += [pack_string(r) for r in ocsp_responses]
    return b"".join(parts)


def raw_der_algorithm(public_key: PublicKeyTypes) -> str:
    """The name of a raw-DER X.509 blob holding ``public_key``, as PKIX-SSH reads it.

    PKIX-SSH's agent lists every certificate as its raw DER (its X509key_to_buf); the
    client names it by key type: ``x509v3-sign-rsa`` for RSA, ``x509v3-ecdsa-sha2-<curve>``
    for EC keys.
    """
    if isinstance(public_key, rsa.RSAPublicKey):
        return X509_SIGN_RSA
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return f"x509v3-ecdsa-sha2-{_curve_id(public_key.curve)}"
    raise WireFormatError(f"no raw-DER X.509 form for {type(public_key).__name__} keys")


def x509_raw_der_blob(certificate: x509.Certificate | bytes) -> bytes:
    """PKIX-SSH's agent form of an RSA or EC certificate: the raw DER, nothing else."""
    der = _der_of(certificate)
    cert = certificate if isinstance(certificate, x509.Certificate) else _load_certificate(
        der, "certificate"
    )
    raw_der_algorithm(_certificate_key(cert, "certificate"))
    return der


class BlobForm(enum.Enum):
    """Which of the three key blob layouts a blob uses."""

    PLAIN = "plain"
    RFC6187 = "rfc6187"
    RAW_DER = "raw-der"  # PKIX-SSH's agent form (x509v3-sign-rsa, x509v3-ecdsa-sha2-*)


@dataclass(frozen=True)
class KeyBlob:
    """A parsed SSH public key blob in one of the three forms idm speaks.

    ``blob`` is the exact wire encoding; ``algorithm`` its key type name
    (:func:`raw_der_algorithm` for the raw-DER form); ``chain`` the certificate DERs, leaf first
    (empty for plain keys); ``plain_blob`` the plain key blob of the same public key, the
    key to match a sign request in any form against an identity.
    """

    form: BlobForm
    algorithm: str
    public_key: PublicKey = field(compare=False, repr=False)
    blob: bytes = field(repr=False)
    chain: tuple[bytes, ...] = field(default=(), repr=False)
    ocsp_responses: tuple[bytes, ...] = field(default=(), repr=False)

    @property
    def plain_blob(self) -> bytes:
        """The plain SSH blob of this blob's public key."""
        if self.form is BlobForm.PLAIN:
            return self.blob
        return public_key_blob(self.public_key)

    @property
    def plain_algorithm(self) -> str:
        """The plain key algorithm (``ssh-rsa``, ``ecdsa-sha2-nistp256``, ...)."""
        return key_algorithm(self.public_key)

    @property
    def is_x509(self) -> bool:
        """True for the RFC 6187 and raw-DER forms."""
        return self.form is not BlobForm.PLAIN

    @property
    def certificate(self) -> x509.Certificate | None:
        """The leaf certificate, or None for a plain key."""
        if not self.chain:
            return None
        return _load_certificate(self.chain[0], "leaf certificate")

    @property
    def fingerprint(self) -> str:
        """``SHA256:...`` of this blob (as ssh-keygen -l shows for its form)."""
        return fingerprint_sha256(self.blob)

    @classmethod
    def plain(cls, public_key: PublicKey) -> KeyBlob:
        """The plain form of a public key."""
        return cls(BlobForm.PLAIN, key_algorithm(public_key), public_key,
                   public_key_blob(public_key))

    @classmethod
    def rfc6187(
        cls,
        chain: Sequence[x509.Certificate | bytes],
        name: str | None = None,
        ocsp_responses: Sequence[bytes] = (),
    ) -> KeyBlob:
        """The RFC 6187 form of a certificate chain (leaf first)."""
        return parse_key_blob(x509_rfc6187_blob(chain, name, ocsp_responses))

    @classmethod
    def raw_der(cls, certificate: x509.Certificate | bytes) -> KeyBlob:
        """PKIX-SSH's raw-DER form of an RSA or EC certificate."""
        return parse_key_blob(x509_raw_der_blob(certificate))


def parse_key_blob(blob: bytes) -> KeyBlob:
    """Recognise a plain, RFC 6187 or raw-DER blob and parse it.

    A blob starting with byte 0x30 is the raw DER of a certificate (a plain or RFC 6187
    blob starts with a uint32 name length, whose first byte is 0 for any sane name).
    """
    blob = bytes(blob)
    if not blob:
        raise WireFormatError("empty key blob")
    if blob[0] == 0x30:
        cert = _load_certificate(blob, "raw DER certificate blob")
        key = _certificate_key(cert, "raw DER certificate blob")
        return KeyBlob(BlobForm.RAW_DER, raw_der_algorithm(key), key, blob, (blob,))
    reader = WireReader(blob)
    name = reader.read_name("key type")
    if name in PLAIN_ALGORITHMS:
        key = _read_plain_key(reader, name)
        reader.expect_end("public key blob")
        return KeyBlob(BlobForm.PLAIN, name, key, blob)
    if name in RFC6187_ALGORITHMS:
        count = reader.read_uint32("certificate count")
        if count < 1:
            raise WireFormatError(f"{name} blob has no certificate")
        if count > MAX_CHAIN_LENGTH:
            raise WireFormatError(f"{name} blob has {count} certificates (max {MAX_CHAIN_LENGTH})")
        ders = tuple(reader.read_string(f"certificate {i + 1}") for i in range(count))
        ocsp_count = reader.read_uint32("OCSP response count")
        if ocsp_count > MAX_OCSP_RESPONSES:
            raise WireFormatError(f"{name} blob has {ocsp_count} OCSP responses")
        ocsp = tuple(reader.read_string(f"OCSP response {i + 1}") for i in range(ocsp_count))
        reader.expect_end(f"{name} blob")
        leaf = _load_certificate(ders[0], "leaf certificate")
        key = _certificate_key(leaf, "leaf certificate")
        _check_x509_algorithm(name, key)
        for i, der in enumerate(ders[1:], start=2):
            _load_certificate(der, f"certificate {i}")
        return KeyBlob(BlobForm.RFC6187, name, key, blob, ders, ocsp)
    raise WireFormatError(f"unsupported key type {name!r}")


def fingerprint_sha256(blob: bytes) -> str:
    """OpenSSH's fingerprint of a key blob: ``SHA256:`` + unpadded base64 of SHA-256."""
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


# --------------------------------------------------------------------------- signatures


@dataclass(frozen=True)
class SignatureScheme:
    """What to sign with: the sig-name inside the signature blob and the hash.

    ``hash`` is ``"sha1"``, ``"sha256"``, ``"sha384"``, ``"sha512"`` or ``None``
    (Ed25519 signs the data itself). ``key_type`` is ``"rsa"``, ``"ecdsa"`` or
    ``"ed25519"``; ``ecdsa_der`` asks for a DER ECDSA-Sig-Value instead of two mpints.
    """

    name: str
    hash: str | None
    key_type: str
    ecdsa_der: bool = False


def signature_scheme(key_blob: KeyBlob, flags: int = 0) -> SignatureScheme:
    """The signature name and hash for a sign request on ``key_blob`` with ``flags``.

    Follows the reference table: RSA SHA-2 flags apply to plain ``ssh-rsa`` blobs only
    (SHA-256 wins if both are set, as in OpenSSH); X.509 blobs get their fixed scheme.
    """
    alg = key_blob.algorithm
    if alg == SSH_RSA:
        if flags & SIGN_RSA_SHA2_256:
            return SignatureScheme("rsa-sha2-256", "sha256", "rsa")
        if flags & SIGN_RSA_SHA2_512:
            return SignatureScheme("rsa-sha2-512", "sha512", "rsa")
        return SignatureScheme(SSH_RSA, "sha1", "rsa")
    if alg == X509_SIGN_RSA:
        return SignatureScheme(X509_SIGN_RSA, "sha1", "rsa")
    if alg == X509_SSH_RSA:
        return SignatureScheme(SSH_RSA, "sha1", "rsa")
    if alg == X509_RSA2048_SHA256:
        return SignatureScheme("rsa2048-sha256", "sha256", "rsa")
    if alg in ECDSA_ALGORITHMS or alg in X509_ECDSA_ALGORITHMS:
        curve = alg.rsplit("-", 1)[1]
        return SignatureScheme(
            f"ecdsa-sha2-{curve}", _CURVES[curve][1], "ecdsa", bool(flags & SIGN_ECDSA_DER)
        )
    if alg == SSH_ED25519:
        return SignatureScheme(SSH_ED25519, None, "ed25519")
    raise WireFormatError(f"no signature scheme for key type {alg!r}")


def signature_blob(name: str, sig_bytes: bytes) -> bytes:
    """An SSH signature blob: ``string sig-name, string sig-bytes``."""
    return pack_string(name) + pack_string(sig_bytes)


def rsa_signature_blob(name: str, pkcs1_signature: bytes) -> bytes:
    """An RSA signature blob (the bytes are the PKCS#1 v1.5 signature)."""
    return signature_blob(name, pkcs1_signature)


def ecdsa_signature_blob(name: str, r: int, s: int, der: bool = False) -> bytes:
    """An ECDSA signature blob: ``mpint r, mpint s`` (or a DER ECDSA-Sig-Value if ``der``)."""
    if der:
        return signature_blob(name, encode_dss_signature(r, s))
    return signature_blob(name, pack_mpint(r) + pack_mpint(s))


def ecdsa_signature_from_raw(name: str, raw: bytes, der: bool = False) -> bytes:
    """An ECDSA signature blob from PKCS#11's raw ``r || s`` (two equal halves)."""
    if not raw or len(raw) % 2:
        raise WireFormatError(f"raw ECDSA signature of odd length {len(raw)}")
    half = len(raw) // 2
    r = int.from_bytes(raw[:half], "big")
    s = int.from_bytes(raw[half:], "big")
    return ecdsa_signature_blob(name, r, s, der)


def ecdsa_signature_from_der(name: str, der_signature: bytes, der: bool = False) -> bytes:
    """An ECDSA signature blob from a DER ECDSA-Sig-Value (what ``cryptography`` returns)."""
    try:
        r, s = decode_dss_signature(der_signature)
    except (ValueError, TypeError):
        raise WireFormatError("invalid DER ECDSA signature") from None
    return ecdsa_signature_blob(name, r, s, der)


def parse_signature_blob(blob: bytes) -> tuple[str, bytes]:
    """Split a signature blob into ``(sig-name, sig-bytes)``."""
    reader = WireReader(blob)
    name = reader.read_name("signature name")
    sig = reader.read_string("signature bytes")
    reader.expect_end("signature blob")
    return name, sig


def digest_info(hash_name: str, data: bytes) -> bytes:
    """``DigestInfo(hash) || hash(data)``: the input of a ``CKM_RSA_PKCS`` signature."""
    try:
        prefix = DIGEST_INFO_PREFIXES[hash_name]
    except KeyError:
        raise WireFormatError(f"no DigestInfo for hash {hash_name!r}") from None
    return prefix + hashlib.new(hash_name, data).digest()


def sign_with_private_key(private_key: PrivateKey, scheme: SignatureScheme, data: bytes) -> bytes:
    """Sign ``data`` with a software key; returns the SSH signature blob for ``scheme``."""
    if isinstance(private_key, rsa.RSAPrivateKey) and scheme.key_type == "rsa":
        assert scheme.hash is not None
        sig = private_key.sign(data, padding.PKCS1v15(), _HASHES[scheme.hash]())
        return rsa_signature_blob(scheme.name, sig)
    if isinstance(private_key, ec.EllipticCurvePrivateKey) and scheme.key_type == "ecdsa":
        assert scheme.hash is not None
        der = private_key.sign(data, ec.ECDSA(_HASHES[scheme.hash]()))
        return ecdsa_signature_from_der(scheme.name, der, scheme.ecdsa_der)
    if isinstance(private_key, ed25519.Ed25519PrivateKey) and scheme.key_type == "ed25519":
        return signature_blob(scheme.name, private_key.sign(data))
    raise WireFormatError(
        f"a {type(private_key).__name__} cannot make a {scheme.name} signature"
    )


_VERIFY_SCHEMES: dict[str, tuple[str, str | None]] = {
    "ssh-rsa": ("rsa", "sha1"),
    "rsa-sha2-256": ("rsa", "sha256"),
    "rsa-sha2-512": ("rsa", "sha512"),
    "x509v3-sign-rsa": ("rsa", "sha1"),
    "rsa2048-sha256": ("rsa", "sha256"),
    "ecdsa-sha2-nistp256": ("ecdsa", "sha256"),
    "ecdsa-sha2-nistp384": ("ecdsa", "sha384"),
    "ecdsa-sha2-nistp521": ("ecdsa", "sha512"),
    "ssh-ed25519": ("ed25519", None),
}


def verify_signature(
    key_blob: KeyBlob | bytes, data: bytes, signature: bytes, flags: int = 0
) -> None:
    """Check an SSH signature blob over ``data``; raises ``InvalidSignature`` if wrong.

    Raises :class:`WireFormatError` for a malformed blob or a sig-name that does not fit
    the key (by name, not by the reference table: any RSA name for an RSA key). ``flags``
    are those of the sign request: with ``SIGN_ECDSA_DER`` an ECDSA signature is DER.
    """
    if not isinstance(key_blob, KeyBlob):
        key_blob = parse_key_blob(key_blob)
    name, sig = parse_signature_blob(signature)
    try:
        key_type, hash_name = _VERIFY_SCHEMES[name]
    except KeyError:
        raise WireFormatError(f"unsupported signature type {name!r}") from None
    key = key_blob.public_key
    if key_type == "rsa" and isinstance(key, rsa.RSAPublicKey):
        assert hash_name is not None
        key.verify(sig, data, padding.PKCS1v15(), _HASHES[hash_name]())
        return
    if key_type == "ecdsa" and isinstance(key, ec.EllipticCurvePublicKey):
        if f"ecdsa-sha2-{_curve_id(key.curve)}" != name:
            raise WireFormatError(f"{name} signature does not match the key's curve")
        assert hash_name is not None
        if not flags & SIGN_ECDSA_DER:
            reader = WireReader(sig)
            r = reader.read_mpint("ECDSA r")
            s = reader.read_mpint("ECDSA s")
            reader.expect_end("ECDSA signature")
            sig = encode_dss_signature(r, s)
        key.verify(sig, data, ec.ECDSA(_HASHES[hash_name]()))
        return
    if key_type == "ed25519" and isinstance(key, ed25519.Ed25519PublicKey):
        key.verify(sig, data)
        return
    raise InvalidSignature(f"{name} signature does not fit a {key_blob.algorithm} key")


# --------------------------------------------------------------------------- private keys


def read_private_key(reader: WireReader) -> PrivateKey:
    """Read an agent ADD_IDENTITY key (type name and private fields, not the comment)."""
    name = reader.read_name("key type")
    try:
        if name == SSH_RSA:
            n = reader.read_mpint("RSA n")
            e = reader.read_mpint("RSA e")
            d = reader.read_mpint("RSA d")
            iqmp = reader.read_mpint("RSA iqmp")
            p = reader.read_mpint("RSA p")
            q = reader.read_mpint("RSA q")
            if not MIN_RSA_BITS <= n.bit_length() <= MAX_RSA_BITS:
                raise WireFormatError(f"RSA key of {n.bit_length()} bits is not supported")
            if p * q != n or p < 3 or q < 3:
                raise WireFormatError("RSA private key: p*q does not equal n")
            # Derive the CRT exponents ourselves instead of trusting more fields.
            numbers = rsa.RSAPrivateNumbers(
                p, q, d, d % (p - 1), d % (q - 1), iqmp, rsa.RSAPublicNumbers(e, n)
            )
            return numbers.private_key()
        if name in ECDSA_ALGORITHMS:
            curve = reader.read_name("ECDSA curve")
            if f"ecdsa-sha2-{curve}" != name:
                raise WireFormatError(f"ECDSA curve {curve!r} does not match key type {name}")
            point = reader.read_string("ECDSA point")
            secret = reader.read_mpint("ECDSA private scalar")
            pub = _ec_public(curve, point)
            key = ec.derive_private_key(secret, _CURVES[curve][0]())
            if key.public_key() != pub:
                raise WireFormatError("ECDSA private scalar does not match the public point")
            return key
        if name == SSH_ED25519:
            pub_raw = reader.read_string("Ed25519 public key")
            priv_raw = reader.read_string("Ed25519 private key")
            if len(pub_raw) != 32 or len(priv_raw) != 64 or priv_raw[32:] != pub_raw:
                raise WireFormatError("malformed Ed25519 private key")
            key25519 = ed25519.Ed25519PrivateKey.from_private_bytes(priv_raw[:32])
            derived = key25519.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
            if derived != pub_raw:
                raise WireFormatError("Ed25519 private key does not match its public key")
            return key25519
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        if isinstance(exc, WireFormatError):
            raise
        raise WireFormatError(f"invalid {name} private key: {exc}") from None
    raise WireFormatError(f"unsupported private key type {name!r}")


def pack_private_key(private_key: PrivateKey) -> bytes:
    """The agent wire form of a private key (type name and fields, without comment)."""
    if isinstance(private_key, rsa.RSAPrivateKey):
        nums = private_key.private_numbers()
        pub = nums.public_numbers
        return b"".join((
            pack_string(SSH_RSA), pack_mpint(pub.n), pack_mpint(pub.e), pack_mpint(nums.d),
            pack_mpint(nums.iqmp), pack_mpint(nums.p), pack_mpint(nums.q),
        ))
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        curve = _curve_id(private_key.curve)
        point = private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return b"".join((
            pack_string(f"ecdsa-sha2-{curve}"), pack_string(curve), pack_string(point),
            pack_mpint(private_key.private_numbers().private_value),
        ))
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        seed = private_key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        pub_raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return pack_string(SSH_ED25519) + pack_string(pub_raw) + pack_string(seed + pub_raw)
    raise WireFormatError(f"unsupported private key type {type(private_key).__name__}")


# --------------------------------------------------------------------------- text lines


def _text_base64(key_blob: KeyBlob) -> str:
    # X.509 keys are written as the leaf's raw DER in text form, whatever their name.
    raw = key_blob.chain[0] if key_blob.is_x509 else key_blob.blob
    return base64.b64encode(raw).decode("ascii")


def _check_comment(comment: str | None) -> None:
    if comment is not None and ("\n" in comment or "\r" in comment):
        raise WireFormatError("a key comment cannot contain a line break")


def public_key_line(key_blob: KeyBlob, comment: str | None = None) -> str:
    """A ``.pub`` line: ``<name> <base64> [comment]`` (no trailing newline)."""
    _check_comment(comment)
    line = f"{key_blob.algorithm} {_text_base64(key_blob)}"
    return f"{line} {comment}" if comment else line


def authorized_keys_line(
    key_blob: KeyBlob, comment: str | None = None, options: Sequence[str] = ()
) -> str:
    """An authorized_keys line: ``[options] <name> <base64> [comment]``.

    ``options`` are already formatted (``restrict``, ``expiry-time="..."``,
    ``principals="a,b"``); they are joined with commas.
    """
    for opt in options:
        if not opt or "\n" in opt or "\r" in opt:
            raise WireFormatError(f"invalid authorized_keys option {opt!r}")
        if '"' not in opt and (" " in opt or "\t" in opt):
            raise WireFormatError(f"an unquoted authorized_keys option has a space: {opt!r}")
    line = public_key_line(key_blob, comment)
    return f"{','.join(options)} {line}" if options else line


def expiry_time_option(when: _dt.datetime) -> str:
    """``expiry-time="YYYYMMDDHHMMSSZ"`` in UTC (OpenSSH reads the Z suffix as UTC)."""
    if when.tzinfo is None:
        raise WireFormatError("expiry time must be timezone-aware")
    utc = when.astimezone(_dt.UTC)
    return f'expiry-time="{utc:%Y%m%d%H%M%S}Z"'


@dataclass(frozen=True)
class PublicKeyLine:
    """A parsed ``.pub`` / authorized_keys line."""

    options: tuple[str, ...]
    key: KeyBlob
    comment: str | None


def _split_options(text: str) -> tuple[tuple[str, ...], str]:
    """Split a leading option list (commas, double quotes with backslash escapes)."""
    options: list[str] = []
    current: list[str] = []
    in_quotes = False
    i = 0
    while i < len(text):
        c = text[i]
        if in_quotes:
            if c == "\\" and i + 1 < len(text) and text[i + 1] == '"':
                current.append('\\"')
                i += 2
                continue
            if c == '"':
                in_quotes = False
            current.append(c)
        elif c == '"':
            in_quotes = True
            current.append(c)
        elif c == ",":
            options.append("".join(current))
            current = []
        elif c in " \t":
            break
        else:
            current.append(c)
        i += 1
    if in_quotes:
        raise WireFormatError("unterminated quote in authorized_keys options")
    options.append("".join(current))
    if any(not o for o in options):
        raise WireFormatError("empty authorized_keys option")
    return tuple(options), text[i:].lstrip(" \t")


def parse_public_key_line(line: str) -> PublicKeyLine:
    """Parse ``[options] <name> <base64> [comment]`` (X.509 names carry raw DER)."""
    text = line.strip()
    if not text or text.startswith("#"):
        raise WireFormatError("no key on this line")
    options: tuple[str, ...] = ()
    first = text.split(None, 1)[0]
    if first not in PLAIN_ALGORITHMS and first not in X509_ALGORITHMS:
        options, text = _split_options(text)
    fields = text.split(None, 2)
    if len(fields) < 2:
        raise WireFormatError("key line needs a key type and base64 data")
    name, b64 = fields[0], fields[1]
    comment = fields[2] if len(fields) > 2 else None
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise WireFormatError("key data is not valid base64") from None
    if name in PLAIN_ALGORITHMS:
        key = parse_key_blob(raw)
        if key.form is not BlobForm.PLAIN or key.algorithm != name:
            raise WireFormatError(f"key data is not a {name} key")
    elif name == X509_SIGN_RSA:
        key = parse_key_blob(raw)
        if key.form is not BlobForm.RAW_DER or key.algorithm != X509_SIGN_RSA:
            raise WireFormatError("x509v3-sign-rsa data must be an RSA DER certificate")
    elif name in RFC6187_ALGORITHMS:
        if not raw or raw[0] != 0x30:
            raise WireFormatError(f"{name} data must be a DER certificate")
        key = KeyBlob.rfc6187([raw], name)
    else:
        raise WireFormatError(f"unsupported key type {name!r}")
    return PublicKeyLine(options, key, comment)
