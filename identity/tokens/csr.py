"""PKCS#10 certification requests signed by a key that never leaves its token.

`cryptography`'s CSR builder only signs with software keys, so the
CertificationRequestInfo is assembled here (asn1crypto, already a dependency of
python-pkcs11 and pyhanko-certvalidator) from `cryptography` values (the subject
`x509.Name`, the public key), signed through a callback (the token), and the result is
loaded back with `cryptography`, which checks the signature.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from asn1crypto import algos, core, csr, keys
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from idm.identity.tokens.errors import TokenOperationError

HASHES = ("sha256", "sha384", "sha512")

# RFC 4055 / RFC 5758 signature algorithm names as asn1crypto knows them.
_RSA_ALGORITHMS = {
    "sha256": "sha256_rsa",
    "sha384": "sha384_rsa",
    "sha512": "sha512_rsa",
}
_ECDSA_ALGORITHMS = {
    "sha256": "sha256_ecdsa",
    "sha384": "sha384_ecdsa",
    "sha512": "sha512_ecdsa",
}

# Signs a digest: (digest, hash name) -> signature. RSA returns the PKCS#1 v1.5
# signature, EC the raw r||s the token produced.
DigestSigner = Callable[[bytes, str], bytes]

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def default_hash(public_key: PublicKey) -> str:
    """SHA-384 for P-384 and larger curves, SHA-256 otherwise."""
    if isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.curve.key_size >= 384:
        return "sha384"
    return "sha256"


def build_csr(
    subject: x509.Name,
    public_key: PublicKey,
    sign_digest: DigestSigner,
    hash_name: str | None = None,
) -> x509.CertificateSigningRequest:
    """Build and sign a PKCS#10 request for `public_key` with `sign_digest`.

    The request carries no attributes or extensions: the CA decides those. Raises
    `TokenOperationError` if the token's signature does not verify.
    """
    hash_name = hash_name or default_hash(public_key)
    if hash_name not in HASHES:
        raise ValueError(f"hash must be one of {', '.join(HASHES)}, not {hash_name!r}")
    spki_der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    info = csr.CertificationRequestInfo(
        {
            "version": "v1",
            "subject": asn1_x509.Name.load(subject.public_bytes()),
            "subject_pk_info": keys.PublicKeyInfo.load(spki_der),
            "attributes": csr.CRIAttributes([]),
        }
    )
    tbs = info.dump()
    digest = hashlib.new(hash_name, tbs).digest()
    raw = sign_digest(digest, hash_name)
    if isinstance(public_key, rsa.RSAPublicKey):
        # RFC 4055: the RSA signature algorithms carry explicit NULL parameters.
        algorithm = algos.SignedDigestAlgorithm(
            {"algorithm": _RSA_ALGORITHMS[hash_name], "parameters": core.Null()}
        )
        signature = raw
    else:
        # RFC 5758: ECDSA signature algorithms have absent parameters.
        algorithm = algos.SignedDigestAlgorithm({"algorithm": _ECDSA_ALGORITHMS[hash_name]})
        half = len(raw) // 2
        if len(raw) % 2:
            raise TokenOperationError("the token returned a malformed ECDSA signature")
        r = int.from_bytes(raw[:half], "big")
        s = int.from_bytes(raw[half:], "big")
        signature = encode_dss_signature(r, s)
    request = csr.CertificationRequest(
        {
            "certification_request_info": info,
            "signature_algorithm": algorithm,
            "signature": core.OctetBitString(signature),
        }
    )
    result = x509.load_der_x509_csr(request.dump())
    if not result.is_signature_valid:
        raise TokenOperationError(
            "the token's signature on the certificate request does not verify; the key on "
            "the token does not match the public key used"
        )
    return result
