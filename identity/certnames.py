"""The names a certificate carries for SSH purposes: subject CN, SAN e-mails and UPNs.

Used by enrollment (which identities a new card supersedes) and by the server's mapping
rules (which users a certificate logs in as), so both read a certificate the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID, ObjectIdentifier

UPN_OID = ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")


class MalformedNamesError(ValueError):
    """The certificate's subjectAltName cannot be parsed."""


def _der_utf8(value: bytes) -> str | None:
    """Decode a DER UTF8String (tag 0x0C), as found in a UPN otherName; None if not one."""
    if len(value) < 2 or value[0] != 0x0C:
        return None
    length = value[1]
    offset = 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or len(value) < 2 + count:
            return None
        length = int.from_bytes(value[2 : 2 + count], "big")
        offset = 2 + count
    if offset + length != len(value):
        return None
    try:
        return value[offset:].decode("utf-8")
    except UnicodeDecodeError:
        return None


@dataclass(frozen=True)
class CertificateNames:
    """The names in a certificate that the rules look at."""

    subject: x509.Name
    common_names: tuple[str, ...]
    emails: tuple[str, ...]
    upns: tuple[str, ...]

    @classmethod
    def of(cls, cert: x509.Certificate) -> CertificateNames:
        cns = tuple(
            str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        )
        emails: list[str] = []
        upns: list[str] = []
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            san = None
        except ValueError as exc:  # a malformed SAN: map by nothing from it
            raise MalformedNamesError(
                f"certificate has a malformed subjectAltName: {exc}"
            ) from None
        if san is not None:
            emails = [str(e) for e in san.get_values_for_type(x509.RFC822Name)]
            for other in san.get_values_for_type(x509.OtherName):
                if other.type_id == UPN_OID:
                    text = _der_utf8(other.value)
                    if text:
                        upns.append(text)
        return cls(cert.subject, cns, tuple(emails), tuple(upns))

    def principal_names(self) -> set[str]:
        """What ``--principal NAME`` is compared with (domains lower-cased)."""
        names = set(self.common_names)
        names.update(fold_domain(e) for e in self.emails)
        names.update(fold_domain(u) for u in self.upns)
        return names


def fold_domain(address: str) -> str:
    """An e-mail address or UPN with its domain lower-cased (domains are case-blind)."""
    local, sep, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}" if sep else address
