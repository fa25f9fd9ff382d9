"""Which certificates a CRL speaks for: distribution points and CRL scope (RFC 5280 §6.3.3).

A certificate names where its status is published (cRLDistributionPoints: names, reason
subsets, a cRLIssuer for indirect CRLs); a CRL says what it covers
(issuingDistributionPoint: its distribution point names, only user / only CA / only
attribute certificates, onlySomeReasons, indirectCRL; deltaCRLIndicator for a delta CRL).
Both are reduced here to small value objects that survive a trip through the inventory
(as JSON text), so that the rules can be applied to CRLs held in the cache without
parsing them again, and without importing `cryptography` when nothing is new.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography import x509

# The reason flags a CRL can cover (RFC 5280 §5.2.5 / §4.2.1.13), by `cryptography` name.
ALL_REASONS = frozenset({
    "key_compromise", "ca_compromise", "affiliation_changed", "superseded",
    "cessation_of_operation", "certificate_hold", "privilege_withdrawn", "aa_compromise",
})


@dataclass(frozen=True)
class DistPoint:
    """One distribution point of a certificate.

    `names`: its full names as `general_name_key` strings (a relative name already made
    full against the CRL issuer); `crl_issuers`: `name_key`s of the cRLIssuer field (empty:
    the certificate's issuer issues the CRL); `reasons`: the reasons it covers (None: all).
    """

    names: frozenset[str] = frozenset()
    crl_issuers: frozenset[str] = frozenset()
    reasons: frozenset[str] | None = None

    def to_json(self) -> list[Any]:
        return [sorted(self.names), sorted(self.crl_issuers),
                None if self.reasons is None else sorted(self.reasons)]

    @classmethod
    def from_json(cls, d: list[Any]) -> DistPoint:
        names, issuers, reasons = d
        return cls(frozenset(names), frozenset(issuers),
                   None if reasons is None else frozenset(reasons))


@dataclass(frozen=True)
class CrlScope:
    """What a CRL covers, from its issuingDistributionPoint and deltaCRLIndicator.

    The default value is a complete CRL without issuingDistributionPoint: every
    certificate of its issuer, every reason.
    """

    names: frozenset[str] = frozenset()
    only_user: bool = False
    only_ca: bool = False
    only_attribute: bool = False
    reasons: frozenset[str] | None = None
    indirect: bool = False
    delta_base: int | None = None  # set for a delta CRL: the base CRL number

    @property
    def is_delta(self) -> bool:
        return self.delta_base is not None

    def key(self) -> str:
        """The scope without the delta marker, as text: a delta CRL applies to a complete
        CRL of the same issuer with the same key."""
        if self == CrlScope(delta_base=self.delta_base):
            return ""
        return json.dumps(
            [sorted(self.names), self.only_user, self.only_ca, self.only_attribute,
             None if self.reasons is None else sorted(self.reasons), self.indirect],
            separators=(",", ":"),
        )

    def to_text(self) -> str:
        """The scope as stored in the inventory ("" for the default)."""
        if self == CrlScope():
            return ""
        return json.dumps({"s": self.key(), "d": self.delta_base}, separators=(",", ":"))

    @classmethod
    def lineage(cls, text: str | None) -> tuple[str, bool]:
        """What a newer CRL of the same signer replaces: complete CRLs of the same scope
        replace each other, and so do delta CRLs of that scope, whatever their base.
        (A text this code did not write is its own lineage.)"""
        try:
            scope = cls.from_text(text)
        except (ValueError, KeyError, TypeError):
            return f"unknown:{text}", False
        return scope.key(), scope.is_delta

    @classmethod
    def from_text(cls, text: str | None) -> CrlScope:
        if not text:
            return cls()
        d = json.loads(text)
        delta = d["d"]
        if not d["s"]:
            return cls(delta_base=delta)
        names, user, ca, attr, reasons, indirect = json.loads(d["s"])
        return cls(frozenset(names), user, ca, attr,
                   None if reasons is None else frozenset(reasons), indirect, delta)

    def problem_for(self, dp: DistPoint, is_ca: bool, indirect_issuer: bool) -> str | None:
        """Why this CRL does not cover a certificate through `dp` (RFC 5280 §6.3.3 (b)),
        or None. `is_ca`: the certificate is a CA certificate; `indirect_issuer`: the CRL
        was found through the DP's cRLIssuer rather than as the certificate's issuer."""
        if indirect_issuer and not self.indirect:
            return "it is not an indirect CRL, but the distribution point names a cRLIssuer"
        if self.names:
            if dp.names:
                if not self.names & dp.names:
                    return "its distribution point names none of the certificate's"
            elif not (dp.crl_issuers and any("dn:" + i in self.names for i in dp.crl_issuers)):
                return "it is scoped to a distribution point the certificate does not name"
        if self.only_user and is_ca:
            return "it covers only end-entity certificates"
        if self.only_ca and not is_ca:
            return "it covers only CA certificates"
        if self.only_attribute:
            return "it covers only attribute certificates"
        return None


def _reasons(flags: frozenset[Any] | None) -> frozenset[str] | None:
    if flags is None:
        return None
    return frozenset(f.name for f in flags) & ALL_REASONS


def _full_names(
    full: list[x509.GeneralName] | None,
    relative: x509.RelativeDistinguishedName | None,
    relative_to: list[x509.Name],
) -> frozenset[str]:
    from cryptography import x509

    from idm.validator.names import general_name_key

    if full:
        return frozenset(general_name_key(g) for g in full)
    if relative is not None:
        return frozenset(
            general_name_key(x509.DirectoryName(x509.Name([*base.rdns, relative])))
            for base in relative_to
        )
    return frozenset()


def distribution_points(cert: x509.Certificate) -> tuple[DistPoint, ...]:
    """The certificate's cRLDistributionPoints as `DistPoint`s (empty when it has none)."""
    from cryptography import x509

    from idm.validator.names import name_key

    try:
        cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return ()
    out = []
    for dp in cdp:
        issuers = [g.value for g in dp.crl_issuer or () if isinstance(g, x509.DirectoryName)]
        out.append(DistPoint(
            _full_names(dp.full_name, dp.relative_name, issuers or [cert.issuer]),
            frozenset(name_key(n) for n in issuers),
            _reasons(dp.reasons),
        ))
    return tuple(out)


def crl_scope(crl: x509.CertificateRevocationList) -> CrlScope:
    """The scope of a CRL (its extensions must already have parsed)."""
    from cryptography import x509

    delta = None
    idp = None
    for ext in crl.extensions:
        if isinstance(ext.value, x509.DeltaCRLIndicator):
            delta = ext.value.crl_number
        elif isinstance(ext.value, x509.IssuingDistributionPoint):
            idp = ext.value
    if idp is None:
        return CrlScope(delta_base=delta)
    return CrlScope(
        _full_names(idp.full_name, idp.relative_name, [crl.issuer]),
        idp.only_contains_user_certs,
        idp.only_contains_ca_certs,
        idp.only_contains_attribute_certs,
        _reasons(idp.only_some_reasons),
        idp.indirect_crl,
        delta,
    )
