"""``idm agent --only SELECTOR``: which token identities the agent may offer.

A selector is one of:

* a ``pkcs11:`` URI (RFC 7512): its token attributes (token, manufacturer, model,
  serial) must match the identity's card, and its object attributes (object = label,
  id = CKA_ID, type) the certificate or its private key. ``pkcs11:token=alice-card``
  selects every identity on that card; ``pkcs11:token=alice-card;id=%01`` one of them.
* a distinguished name (anything with ``=`` that parses as RFC 4514, e.g. ``CN=alice``
  or ``CN=alice,O=idm demo,C=XX``): every attribute given must appear in the
  certificate's subject (case-insensitive values, any order).
* anything else is a label: the certificate object's label or the card's label,
  compared exactly.

Several selectors are a union: an identity is offered when any one matches. No selector
at all offers everything the gate lets through. Selectors never widen what is offered:
they only filter approved, validated identities.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509

from idm.identity.tokens.uri import Pkcs11Uri, TokenIdentity, UriError


class SelectorError(ValueError):
    """A ``--only`` value that cannot be used (the message says why)."""


@dataclass(frozen=True)
class SelectableIdentity:
    """What a selector looks at: the card, the object label and id, and the subject."""

    token: TokenIdentity | None
    label: str | None
    cka_id: bytes | None
    subject: x509.Name


def _attributes(name: x509.Name) -> set[tuple[str, str]]:
    return {(a.oid.dotted_string, str(a.value).strip().casefold()) for a in name}


@dataclass(frozen=True)
class Selector:
    """One parsed ``--only`` value (see the module docstring)."""

    text: str
    uri: Pkcs11Uri | None = None
    dn: frozenset[tuple[str, str]] | None = None

    @classmethod
    def parse(cls, text: str) -> Selector:
        """Parse a selector; raises :class:`SelectorError` for an unusable one."""
        value = text.strip()
        if not value:
            raise SelectorError("empty --only selector: give a pkcs11: URI, a label or a DN")
        if value.lower().startswith("pkcs11:"):
            try:
                uri = Pkcs11Uri.parse(value)
            except UriError as exc:
                raise SelectorError(f"--only {value!r}: {exc}") from None
            if uri.pin_value is not None or uri.pin_source is not None:
                raise SelectorError("--only URIs must not carry a PIN (pin-value/pin-source)")
            return cls(value, uri=uri)
        if "=" in value:
            try:
                name = x509.Name.from_rfc4514_string(value)
            except ValueError:
                return cls(value)  # not a DN after all: a label that contains '='
            if len(name) > 0:
                return cls(value, dn=frozenset(_attributes(name)))
        return cls(value)

    def matches(self, ident: SelectableIdentity) -> bool:
        """True when this selector selects ``ident``."""
        if self.uri is not None:
            # module-path/module-name say where a card sits, not which card: not matched.
            if ident.token is None or not ident.token.matches(self.uri):
                return False
            return self.uri.matches_object(
                label=ident.label, id=ident.cka_id, type="cert"
            ) or self.uri.matches_object(label=ident.label, id=ident.cka_id, type="private")
        if self.dn is not None:
            return self.dn <= _attributes(ident.subject)
        return self.text == ident.label or (
            ident.token is not None and self.text == ident.token.label
        )


@dataclass(frozen=True)
class Selection:
    """A union of selectors; empty means "everything"."""

    selectors: tuple[Selector, ...] = ()

    @classmethod
    def parse(cls, texts: Iterable[str]) -> Selection:
        return cls(tuple(Selector.parse(t) for t in texts))

    @property
    def everything(self) -> bool:
        return not self.selectors

    def matches(self, ident: SelectableIdentity) -> bool:
        return self.everything or any(s.matches(ident) for s in self.selectors)

    def describe(self) -> Sequence[str]:
        return [s.text for s in self.selectors]
