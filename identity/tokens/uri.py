"""RFC 7512 `pkcs11:` URIs: the serialized ids of tokens and objects.

A `Pkcs11Uri` names a token (and optionally one object on it) without the token being
present, so an identity can be configured, stored in the inventory and shown while the
card is out. Values are percent-encoded UTF-8; `id` (CKA_ID) is raw bytes, always
formatted percent-encoded byte by byte. Formatting is canonical (fixed attribute order,
minimal escaping, upper-case hex), so ``str(Pkcs11Uri.parse(s))`` is stable and
``Pkcs11Uri.parse(str(u)) == u`` for every value ``u``.

pkcs11-helper's legacy serialized ids (``manufacturer/model/serial/label[/HEXID]`` with
``\\xHH`` escapes, as written by OpenVPN and the old OpenSSH PKCS#11 patches) are accepted
by `parse_token_reference`, which returns the equivalent URI.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

SCHEME = "pkcs11:"

# Path attributes in the order RFC 7512 lists them; `__str__` emits them in this order.
PATH_ATTRIBUTES: tuple[str, ...] = (
    "token",
    "manufacturer",
    "serial",
    "model",
    "library-manufacturer",
    "library-description",
    "library-version",
    "slot-description",
    "slot-manufacturer",
    "slot-id",
    "object",
    "type",
    "id",
)
QUERY_ATTRIBUTES: tuple[str, ...] = ("pin-source", "pin-value", "module-name", "module-path")
OBJECT_TYPES: tuple[str, ...] = ("public", "private", "cert", "secret-key", "data")
# Attributes that say which token is meant (as opposed to slot, library or object).
TOKEN_ATTRIBUTES: tuple[str, ...] = ("token", "manufacturer", "serial", "model")

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_RES_AVAIL = frozenset(b":[]@!$'()*+,=")
# RFC 7512 section 2.3: "&" may appear unencoded in the path, "/", "?" and "|" in the query.
_PATH_SAFE = _UNRESERVED | _RES_AVAIL | frozenset(b"&")
_QUERY_SAFE = _UNRESERVED | _RES_AVAIL | frozenset(b"/?|")
_VENDOR_NAME = re.compile(r"x-[A-Za-z0-9_-]+\Z")
_LIB_VERSION = re.compile(r"[0-9]+(\.[0-9]+)?\Z")
_DIGITS = re.compile(r"[0-9]+\Z")


class UriError(ValueError):
    """A `pkcs11:` URI or legacy id is malformed; the message says what and where."""


def _field_name(attribute: str) -> str:
    return attribute.replace("-", "_")


def percent_encode(data: bytes, safe: frozenset[int] = _PATH_SAFE) -> str:
    """Percent-encode `data`, leaving bytes in `safe` as they are (upper-case hex)."""
    return "".join(chr(b) if b in safe else f"%{b:02X}" for b in data)


def percent_decode(text: str, what: str) -> bytes:
    """Decode %HH escapes; `what` names the attribute for error messages."""
    out = bytearray()
    i = 0
    raw = text.encode("utf-8")
    while i < len(raw):
        b = raw[i]
        if b == 0x25:  # "%"
            pair = raw[i + 1 : i + 3]
            if len(pair) != 2 or not all(c in b"0123456789abcdefABCDEF" for c in pair):
                raise UriError(f"bad percent-escape in {what}: {text[i : i + 3]!r}")
            out.append(int(pair, 16))
            i += 3
        else:
            out.append(b)
            i += 1
    return bytes(out)


def _decode_text(value: str, what: str) -> str:
    try:
        return percent_decode(value, what).decode("utf-8")
    except UnicodeDecodeError:
        raise UriError(f"{what} is not valid UTF-8 after percent-decoding") from None


@dataclass(frozen=True)
class Pkcs11Uri:
    """A parsed RFC 7512 URI. Every attribute is optional; None means "not given".

    `id` is CKA_ID as bytes; `slot_id` an integer; the rest are text. Vendor attributes
    (``x-…``) are kept, in order, in `vendor_path` / `vendor_query`. `pin_value` is a
    secret: `redacted()` drops it for display and logs.
    """

    token: str | None = None
    manufacturer: str | None = None
    serial: str | None = None
    model: str | None = None
    library_manufacturer: str | None = None
    library_description: str | None = None
    library_version: str | None = None
    slot_description: str | None = None
    slot_manufacturer: str | None = None
    slot_id: int | None = None
    object: str | None = None
    type: str | None = None
    id: bytes | None = None
    pin_source: str | None = None
    pin_value: str | None = None
    module_name: str | None = None
    module_path: str | None = None
    vendor_path: tuple[tuple[str, str], ...] = ()
    vendor_query: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.type is not None and self.type not in OBJECT_TYPES:
            raise UriError(f"type must be one of {', '.join(OBJECT_TYPES)}, not {self.type!r}")
        if self.library_version is not None and not _LIB_VERSION.match(self.library_version):
            raise UriError(f"library-version must be N or N.M, not {self.library_version!r}")
        if self.slot_id is not None and self.slot_id < 0:
            raise UriError("slot-id must be a non-negative integer")
        if self.pin_source is not None and self.pin_value is not None:
            raise UriError("pin-source and pin-value must not both be given")
        for name, _ in self.vendor_path + self.vendor_query:
            if not _VENDOR_NAME.match(name):
                raise UriError(f"vendor attribute names must look like x-name, not {name!r}")

    # -- parsing ---------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str) -> Pkcs11Uri:
        """Parse a `pkcs11:` URI; raises `UriError` with a one-line reason."""
        if not isinstance(text, str):
            raise UriError("a pkcs11: URI must be text")
        if text[: len(SCHEME)].lower() != SCHEME:
            raise UriError(f"not a pkcs11: URI: {_preview(text)}")
        body = text[len(SCHEME) :]
        path, sep, query = body.partition("?")
        values: dict[str, Any] = {}
        vendor_path: list[tuple[str, str]] = []
        vendor_query: list[tuple[str, str]] = []
        for part in _split(path, ";"):
            name, value = _attribute(part, "path")
            if name.startswith("x-"):
                vendor_path.append((name, _decode_text(value, name)))
                continue
            if name not in PATH_ATTRIBUTES:
                raise UriError(f"unknown path attribute {name!r} in pkcs11: URI")
            key = _field_name(name)
            if key in values:
                raise UriError(f"path attribute {name!r} given twice")
            values[key] = _parse_path_value(name, value)
        if sep:
            for part in _split(query, "&"):
                name, value = _attribute(part, "query")
                if name.startswith("x-"):
                    vendor_query.append((name, _decode_text(value, name)))
                    continue
                if name not in QUERY_ATTRIBUTES:
                    raise UriError(f"unknown query attribute {name!r} in pkcs11: URI")
                key = _field_name(name)
                if key in values:
                    raise UriError(f"query attribute {name!r} given twice")
                values[key] = _decode_text(value, name)
        return cls(**values, vendor_path=tuple(vendor_path), vendor_query=tuple(vendor_query))

    # -- formatting ------------------------------------------------------------------

    def __str__(self) -> str:
        path: list[str] = []
        for name in PATH_ATTRIBUTES:
            value = getattr(self, _field_name(name))
            if value is None:
                continue
            if name == "id":
                # CKA_ID is binary: every byte escaped, as RFC 7512 recommends.
                encoded = "".join(f"%{b:02X}" for b in value)
            elif name == "slot-id":
                encoded = str(value)
            else:
                encoded = percent_encode(value.encode("utf-8"), _PATH_SAFE)
            path.append(f"{name}={encoded}")
        for name, value in self.vendor_path:
            path.append(f"{name}={percent_encode(value.encode('utf-8'), _PATH_SAFE)}")
        query: list[str] = []
        for name in QUERY_ATTRIBUTES:
            value = getattr(self, _field_name(name))
            if value is not None:
                query.append(f"{name}={percent_encode(value.encode('utf-8'), _QUERY_SAFE)}")
        for name, value in self.vendor_query:
            query.append(f"{name}={percent_encode(value.encode('utf-8'), _QUERY_SAFE)}")
        text = SCHEME + ";".join(path)
        if query:
            text += "?" + "&".join(query)
        return text

    def __repr__(self) -> str:
        return f"Pkcs11Uri({str(self.redacted())!r})"

    # -- derived URIs ----------------------------------------------------------------

    def redacted(self) -> Pkcs11Uri:
        """The same URI without `pin-value`, safe to print or log."""
        return replace(self, pin_value=None)

    def token_uri(self) -> Pkcs11Uri:
        """Only the token-identifying attributes (token, manufacturer, serial, model)."""
        return Pkcs11Uri(
            token=self.token, manufacturer=self.manufacturer, serial=self.serial, model=self.model
        )

    def without_object(self) -> Pkcs11Uri:
        """This URI with the object attributes (object, id, type) removed.

        Unlike `token_uri`, slot, library and query attributes (module-path, pin-source)
        are kept: the result still says where to look and how to log in.
        """
        return replace(self, object=None, id=None, type=None)

    def with_object(
        self, *, object: str | None = None, id: bytes | None = None, type: str | None = None
    ) -> Pkcs11Uri:
        """The token part of this URI plus the given object attributes."""
        return replace(self.token_uri(), object=object, id=id, type=type)

    @property
    def names_object(self) -> bool:
        """True if the URI selects objects (object label, id or type is given)."""
        return self.object is not None or self.id is not None or self.type is not None

    # -- matching --------------------------------------------------------------------

    def matches_token(
        self,
        *,
        label: str,
        manufacturer: str,
        model: str,
        serial: str,
        slot_id: int | None = None,
        slot_description: str | None = None,
        slot_manufacturer: str | None = None,
        library_manufacturer: str | None = None,
        library_description: str | None = None,
        library_version: str | None = None,
    ) -> bool:
        """True if every token/slot/library attribute present in the URI equals the value.

        PKCS#11 pads these fields with blanks; both sides are compared without trailing
        blanks. Attributes absent from the URI match anything (RFC 7512 section 2.4).
        """
        pairs: list[tuple[object, object]] = [
            (self.token, label),
            (self.manufacturer, manufacturer),
            (self.model, model),
            (self.serial, serial),
            (self.slot_description, slot_description),
            (self.slot_manufacturer, slot_manufacturer),
            (self.library_manufacturer, library_manufacturer),
            (self.library_description, library_description),
        ]
        for wanted, actual in pairs:
            if wanted is None:
                continue
            if actual is None or _blank_strip(str(wanted)) != _blank_strip(str(actual)):
                return False
        if self.slot_id is not None and self.slot_id != slot_id:
            return False
        if self.library_version is not None:
            if library_version is None or not _version_matches(
                self.library_version, library_version
            ):
                return False
        return True

    def matches_object(self, *, label: str | None, id: bytes | None, type: str) -> bool:
        """True if the object attributes present in the URI (object, id, type) match."""
        if self.type is not None and self.type != type:
            return False
        if self.object is not None and self.object != label:
            return False
        if self.id is not None and self.id != id:
            return False
        return True


def _preview(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _blank_strip(value: str) -> str:
    return value.rstrip(" \x00")


def _version_matches(wanted: str, actual: str) -> bool:
    # "library-version=2" matches 2.x; "2.6" matches exactly 2.6 (RFC 7512 section 2.3).
    w_major, _, w_minor = wanted.partition(".")
    a_major, _, a_minor = actual.partition(".")
    if int(w_major) != int(a_major or "0"):
        return False
    return not w_minor or int(w_minor) == int(a_minor or "0")


def _split(text: str, sep: str) -> Iterable[str]:
    if text == "":
        return []
    parts = text.split(sep)
    if any(p == "" for p in parts):
        raise UriError(f"empty attribute in pkcs11: URI (stray {sep!r})")
    return parts


def _attribute(part: str, where: str) -> tuple[str, str]:
    name, eq, value = part.partition("=")
    if not eq:
        raise UriError(f"{where} attribute without '=' in pkcs11: URI: {_preview(part)}")
    if not name:
        raise UriError(f"{where} attribute without a name in pkcs11: URI")
    return name, value


def _parse_path_value(name: str, value: str) -> Any:
    if name == "id":
        return percent_decode(value, name)
    if name == "slot-id":
        decoded = _decode_text(value, name)
        if not _DIGITS.match(decoded):
            raise UriError(f"slot-id must be a decimal number, not {decoded!r}")
        return int(decoded)
    return _decode_text(value, name)


# -- pkcs11-helper legacy serialized ids ------------------------------------------------

_LEGACY_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")


def _legacy_unescape(field: str, what: str) -> str:
    out = bytearray()
    i = 0
    while i < len(field):
        ch = field[i]
        if ch == "\\":
            m = _LEGACY_ESCAPE.match(field, i)
            if not m:
                raise UriError(f"bad escape in legacy id {what}: use \\xHH")
            out.append(int(m.group(1), 16))
            i = m.end()
        else:
            out += ch.encode("utf-8")
            i += 1
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise UriError(f"legacy id {what} is not valid UTF-8") from None


def parse_legacy_id(text: str) -> Pkcs11Uri:
    """Parse a pkcs11-helper id ``manufacturer/model/serial/label[/HEXID]``.

    Fields use ``\\xHH`` escapes for "/", "\\" and other special bytes; HEXID is CKA_ID in
    hexadecimal. Returns the equivalent `Pkcs11Uri` (with ``type=private`` when an id is
    present, since pkcs11-helper ids name a certificate/key pair).
    """
    parts = text.split("/")
    if len(parts) not in (4, 5):
        raise UriError(
            "a legacy pkcs11-helper id has the form manufacturer/model/serial/label[/HEXID]"
        )
    manufacturer, model, serial, label = (
        _legacy_unescape(f, what)
        for f, what in zip(parts[:4], ("manufacturer", "model", "serial", "label"), strict=True)
    )
    key_id: bytes | None = None
    if len(parts) == 5:
        hex_id = parts[4]
        if not re.fullmatch(r"(?:[0-9a-fA-F]{2})+", hex_id):
            raise UriError(f"legacy id: CKA_ID must be hexadecimal bytes, not {hex_id!r}")
        key_id = bytes.fromhex(hex_id)
    return Pkcs11Uri(token=label, manufacturer=manufacturer, model=model, serial=serial, id=key_id)


def format_legacy_id(uri: Pkcs11Uri) -> str:
    """pkcs11-helper's serialized id for a URI naming a token (and optionally an id)."""
    values = (uri.manufacturer, uri.model, uri.serial, uri.token)
    if any(v is None for v in values):
        raise UriError("a legacy id needs token, manufacturer, model and serial")

    def esc(v: str) -> str:
        return "".join(
            f"\\x{b:02x}" if (b < 0x21 or b in b"/\\" or b > 0x7E) else chr(b)
            for b in v.encode("utf-8")
        )

    text = "/".join(esc(v) for v in values if v is not None)
    if uri.id is not None:
        text += "/" + uri.id.hex().upper()
    return text


def parse_token_reference(text: str) -> Pkcs11Uri:
    """Parse what a user typed to name a token or object: a `pkcs11:` URI or a legacy id."""
    text = text.strip()
    if text[: len(SCHEME)].lower() == SCHEME:
        return Pkcs11Uri.parse(text)
    if text.count("/") in (3, 4):
        return parse_legacy_id(text)
    raise UriError(
        f"expected a pkcs11: URI (e.g. pkcs11:token=MyCard) or a pkcs11-helper id, got "
        f"{_preview(text)}"
    )


# -- token identity ---------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class TokenIdentity:
    """What a token *is*: (manufacturer, model, serial, label), never the slot it sits in.

    Values are the CK_TOKEN_INFO fields without their blank padding. Two tokens with the
    same identity are the same card, wherever and whenever it is inserted.
    """

    manufacturer: str
    model: str
    serial: str
    label: str

    def uri(self) -> Pkcs11Uri:
        """The token URI naming exactly this token."""
        return Pkcs11Uri(
            token=self.label, manufacturer=self.manufacturer, serial=self.serial, model=self.model
        )

    def matches(self, uri: Pkcs11Uri) -> bool:
        """True if the token attributes of `uri` select this token."""
        return uri.matches_token(
            label=self.label, manufacturer=self.manufacturer, model=self.model, serial=self.serial
        )

    def __str__(self) -> str:
        return f"{self.label!r} ({self.manufacturer} {self.model}, serial {self.serial})"
