"""Signature checks on certificates and CRLs, by key type, with no name comparison.

`cryptography`'s `verify_directly_issued_by` also requires the issuer name to be encoded
exactly like the parent's subject, which RFC 5280 §7.1 does not (names are compared after
RFC 4518 preparation: idm.validator.names). So names are matched there, and signatures
here. For a CRL the TBSCertList is taken from the DER as received when it is at hand: the
re-encoding that `cryptography` would do costs ~0.1 s for 200,000 entries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from idm.validator.names import names_equal

if TYPE_CHECKING:
    from cryptography import x509


def verify(
    public_key: Any, signature: bytes, data: bytes, params: Any, hash_algorithm: Any
) -> bool:
    """True when `public_key` verifies `signature` over `data`.

    `params` is what `cryptography` reports as `signature_algorithm_parameters` (an RSA
    padding, an `ECDSA(hash)`, or None for EdDSA); a key of another type than the
    signature algorithm's never verifies.
    """
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa

    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            if not isinstance(params, padding.PKCS1v15 | padding.PSS) or hash_algorithm is None:
                return False
            public_key.verify(signature, data, params, hash_algorithm)
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            if not isinstance(params, ec.ECDSA):
                return False
            public_key.verify(signature, data, params)
        elif isinstance(public_key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            if params is not None or hash_algorithm is not None:
                return False
            public_key.verify(signature, data)
        elif isinstance(public_key, dsa.DSAPublicKey):
            if hash_algorithm is None:
                return False
            public_key.verify(signature, data, hash_algorithm)
        else:
            return False
    except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):
        return False
    return True


def _algorithm(obj: Any) -> tuple[Any, Any] | None:
    """(parameters, hash) of a certificate's or CRL's signature algorithm, or None."""
    from cryptography.exceptions import UnsupportedAlgorithm

    try:
        return obj.signature_algorithm_parameters, obj.signature_hash_algorithm
    except (UnsupportedAlgorithm, ValueError):
        return None


def cert_signature_ok(child: x509.Certificate, public_key: Any) -> bool:
    """True when `public_key` verifies the signature of `child`."""
    alg = _algorithm(child)
    if alg is None:
        return False
    return verify(public_key, child.signature, child.tbs_certificate_bytes, *alg)


def usable_public_key(cert: x509.Certificate) -> Any:
    """The certificate's public key, or None when `cryptography` cannot use it (an unknown
    key type or broken key parameters): such a certificate signs nothing."""
    from cryptography.exceptions import UnsupportedAlgorithm

    try:
        return cert.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None


def signed_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    """True when `parent` names (RFC 5280 §7.1) and signs `child` (no other checks)."""
    if not names_equal(child.issuer, parent.subject):
        return False
    key = usable_public_key(parent)
    return key is not None and cert_signature_ok(child, key)


def is_self_signed(cert: x509.Certificate) -> bool:
    """True when the certificate names itself as issuer and its own key verifies it."""
    return signed_by(cert, cert)


def tbs_from_der(der: bytes) -> bytes | None:
    """The to-be-signed part exactly as encoded in a signed object's DER."""
    from idm.validator.revocation.crlder import der_header

    try:
        _, i, end = der_header(der, 0, len(der))
        _, j, k = der_header(der, i, end)
    except ValueError:
        return None
    return der[i:k]


def crl_signature_ok(
    crl: x509.CertificateRevocationList, public_key: Any, der: bytes | None = None
) -> bool:
    """True when `public_key` verifies the CRL's signature (`der`: its DER, if at hand)."""
    alg = _algorithm(crl)
    if alg is None:
        return False
    tbs = tbs_from_der(der) if der is not None else None
    if tbs is None:
        tbs = crl.tbs_certlist_bytes
    return verify(public_key, crl.signature, tbs, *alg)
