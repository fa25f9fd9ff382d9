"""Distinguished names compared the way RFC 5280 §7.1 says: after RFC 4518 preparation.

Issuer/subject chaining, CRL issuers and distribution point names are matched by
`name_key`, never by comparing encodings: a CA may write its name as a PrintableString in
its own certificate and as a UTF8String (or in another case, or with other spaces) in the
certificates and CRLs it issues (NIST PKITS 4.3.3-4.3.11).

Preparation of a string value (RFC 4518 §2, for the caseIgnoreMatch rules that the usual
naming attributes use): Unicode NFKC, case folding, characters mapped to nothing removed,
other white space mapped to SPACE, then insignificant spaces removed (leading and
trailing ones dropped, inner runs collapsed to one). A value that is not a string (an
unusual attribute type encoded otherwise) is compared by its bytes.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509

# RFC 3454 table B.1 (commonly mapped to nothing), the part that occurs in practice.
_MAPPED_TO_NOTHING = dict.fromkeys(
    [0x00AD, 0x034F, 0x1806, 0x180B, 0x180C, 0x180D, 0x200B, 0x200C, 0x200D, 0x2060, 0xFEFF]
    + list(range(0xFE00, 0xFE10)),
    None,
)
_SPACES = dict.fromkeys([0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x85, 0xA0, 0x1680, 0x2028, 0x2029,
                         0x202F, 0x205F, 0x3000, *range(0x2000, 0x200B)], " ")


def prepare(value: str) -> str:
    """An attribute value prepared for caseIgnoreMatch (see the module docstring)."""
    text = value.translate(_MAPPED_TO_NOTHING).translate(_SPACES)
    text = unicodedata.normalize("NFKC", text).casefold()
    text = unicodedata.normalize("NFKC", text)
    return " ".join(p for p in text.split(" ") if p)


def _value(attr: x509.NameAttribute) -> str:
    value = attr.value
    if isinstance(value, bytes):
        return "bytes:" + value.hex()
    return "text:" + prepare(value)


def name_key(name: x509.Name) -> str:
    """A short key equal for two names exactly when RFC 5280 §7.1 calls them equal."""
    rdns = [
        sorted([attr.oid.dotted_string, _value(attr)] for attr in rdn)
        for rdn in name.rdns
    ]
    return hashlib.sha256(json.dumps(rdns, separators=(",", ":")).encode()).hexdigest()[:32]


def names_equal(a: x509.Name, b: x509.Name) -> bool:
    return a == b or name_key(a) == name_key(b)


def general_name_key(gn: x509.GeneralName) -> str:
    """A general name as a comparable string (directory names by `name_key`)."""
    from cryptography import x509

    if isinstance(gn, x509.DirectoryName):
        return "dn:" + name_key(gn.value)
    if isinstance(gn, x509.UniformResourceIdentifier):
        return "uri:" + gn.value
    if isinstance(gn, x509.RFC822Name | x509.DNSName):
        return f"{type(gn).__name__}:{gn.value.lower()}"
    return f"{type(gn).__name__}:{gn.value!r}"
