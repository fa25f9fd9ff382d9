"""OCSP (RFC 6960): request with a nonce, and a strict check of the response.

A response is accepted only when: its status is successful; it is signed either by the
certificate's issuing CA itself or by a delegated responder whose certificate the issuing
CA signed directly and which carries id-kp-OCSPSigning (and is valid at the time of the
check); it holds a single response for exactly this certificate (serial, issuer name hash
and issuer key hash); the nonce, when the responder echoes one, matches ours; and it is
fresh: thisUpdate not in the future (5 minutes of clock skew allowed), nextUpdate (when
given) not passed, and thisUpdate not older than the policy's maximum age. Responders
often omit the nonce (pre-produced responses), so a missing nonce is accepted; freshness
then rests on thisUpdate/nextUpdate. The delegated responder's own revocation status is
not checked (RFC 6960 4.2.2.2.1: responders usually carry id-pkix-ocsp-nocheck).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, SignatureAlgorithmOID

from idm.validator.errors import PARSE_ERRORS, MalformedInputError, ValidatorError

CLOCK_SKEW = timedelta(minutes=5)


class OcspError(ValidatorError):
    """An OCSP response that parses but must not be trusted, or is not fresh."""


@dataclass(frozen=True)
class OcspStatus:
    """The checked answer of a responder about one certificate."""

    status: str  # good | revoked | unknown
    this_update: datetime
    next_update: datetime | None
    produced_at: datetime
    revoked_at: datetime | None
    reason: str | None


def build_request(
    cert: x509.Certificate, issuer: x509.Certificate, nonce: bytes | None = None
) -> tuple[bytes, bytes]:
    """A DER OCSP request for `cert` (CertID with SHA-1, as responders expect) and its nonce."""
    from cryptography.hazmat.primitives.serialization import Encoding

    nonce = nonce if nonce is not None else os.urandom(16)
    req = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(cert, issuer, hashes.SHA1())
        .add_extension(x509.OCSPNonce(nonce), critical=False)
        .build()
    )
    return req.public_bytes(Encoding.DER), nonce


def verify_signature(
    key: object, signature: bytes, data: bytes, hash_alg: hashes.HashAlgorithm | None, oid: object
) -> None:
    """Check `signature` over `data` with public `key`; raise InvalidSignature if wrong."""
    if isinstance(key, rsa.RSAPublicKey):
        if hash_alg is None:
            raise InvalidSignature()
        if oid == SignatureAlgorithmOID.RSASSA_PSS:
            pad: padding.AsymmetricPadding = padding.PSS(
                mgf=padding.MGF1(hash_alg), salt_length=padding.PSS.AUTO
            )
        else:
            pad = padding.PKCS1v15()
        key.verify(signature, data, pad, hash_alg)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if hash_alg is None:
            raise InvalidSignature()
        key.verify(signature, data, ec.ECDSA(hash_alg))
    elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        key.verify(signature, data)
    else:
        raise InvalidSignature()


def _name_hash(name: x509.Name, alg: hashes.HashAlgorithm) -> bytes:
    h = hashes.Hash(alg)
    h.update(name.public_bytes())
    return h.finalize()


def _key_hash(cert: x509.Certificate, alg: hashes.HashAlgorithm) -> bytes:
    # RFC 6960: hash of the BIT STRING value of subjectPublicKey (not the whole SPKI).
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    bits = _spki_bits(spki)
    h = hashes.Hash(alg)
    h.update(bits)
    return h.finalize()


def _der_len(data: bytes, i: int) -> tuple[int, int]:
    first = data[i]
    if first < 0x80:
        return first, i + 1
    n = first & 0x7F
    return int.from_bytes(data[i + 1 : i + 1 + n], "big"), i + 1 + n


def _spki_bits(spki: bytes) -> bytes:
    # SEQUENCE { AlgorithmIdentifier SEQUENCE, BIT STRING }: skip the outer header and
    # the algorithm, then drop the BIT STRING's unused-bits octet.
    _, i = _der_len(spki, 1)
    alg_len, j = _der_len(spki, i + 1)
    k = j + alg_len
    bits_len, m = _der_len(spki, k + 1)
    return spki[m + 1 : m + bits_len]


def _responder_matches(resp: ocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    if resp.responder_name is not None:
        return resp.responder_name == cert.subject
    key_hash = resp.responder_key_hash
    return key_hash is not None and key_hash == _key_hash(cert, hashes.SHA1())


def _has_ocsp_signing(cert: x509.Certificate) -> bool:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (x509.ExtensionNotFound, ValueError):
        return False
    return ExtendedKeyUsageOID.OCSP_SIGNING in eku


def find_signer(
    resp: ocsp.OCSPResponse, issuer: x509.Certificate, at: datetime
) -> x509.Certificate:
    """The certificate authorized to sign `resp` for certificates of `issuer` (RFC 6960)."""
    if _responder_matches(resp, issuer):
        return issuer
    for cand in resp.certificates:
        if not _responder_matches(resp, cand):
            continue
        if cand.issuer != issuer.subject:
            raise OcspError("delegated OCSP responder is not certified by the issuing CA")
        try:
            cand.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            raise OcspError(
                "delegated OCSP responder certificate is not signed by the issuing CA"
            ) from None
        if not _has_ocsp_signing(cand):
            raise OcspError("delegated OCSP responder certificate lacks id-kp-OCSPSigning")
        if not cand.not_valid_before_utc <= at <= cand.not_valid_after_utc:
            raise OcspError("delegated OCSP responder certificate is not valid now")
        return cand
    raise OcspError(
        "OCSP response is signed by neither the issuing CA nor a responder it certified"
    )


def check_response(
    data: bytes,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    *,
    nonce: bytes | None,
    at: datetime,
    max_age: int,
    what: str = "OCSP response",
) -> OcspStatus:
    """Parse and check an OCSP response about `cert`; see the module docstring."""
    try:
        resp = ocsp.load_der_ocsp_response(data)
    except PARSE_ERRORS as e:
        raise MalformedInputError(f"{what}: malformed OCSP response ({e})") from None
    try:
        return _check_loaded(resp, cert, issuer, nonce=nonce, at=at, max_age=max_age, what=what)
    except PARSE_ERRORS as e:
        # cryptography parses lazily: a broken field surfaces on first access.
        raise MalformedInputError(f"{what}: malformed OCSP response ({e})") from None


def _check_loaded(
    resp: ocsp.OCSPResponse,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    *,
    nonce: bytes | None,
    at: datetime,
    max_age: int,
    what: str,
) -> OcspStatus:
    if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise OcspError(f"{what}: responder answered {resp.response_status.name.lower()}")
    try:
        try:
            signer = find_signer(resp, issuer, at)
        except OcspError as e:
            raise OcspError(f"{what}: {e}") from None
        try:
            verify_signature(
                signer.public_key(),
                resp.signature,
                resp.tbs_response_bytes,
                resp.signature_hash_algorithm,
                resp.signature_algorithm_oid,
            )
        except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):
            raise OcspError(f"{what}: signature does not verify") from None
        if nonce is not None:
            for ext in resp.extensions:
                if isinstance(ext.value, x509.OCSPNonce) and ext.value.nonce != nonce:
                    raise OcspError(f"{what}: nonce does not match the request")
        try:
            single = _find_single(resp, cert, issuer)
        except OcspError as e:
            raise OcspError(f"{what}: {e}") from None
        except UnsupportedAlgorithm:
            raise OcspError(f"{what}: unsupported hash algorithm in CertID") from None
    except PARSE_ERRORS as e:
        raise MalformedInputError(f"{what}: malformed OCSP response ({e})") from None
    this_update = single.this_update_utc
    next_update = single.next_update_utc
    if this_update > at + CLOCK_SKEW:
        raise OcspError(f"{what}: thisUpdate {this_update.isoformat()} is in the future")
    if next_update is not None and next_update < at:
        raise OcspError(f"{what}: stale (nextUpdate {next_update.isoformat()} has passed)")
    if this_update + timedelta(seconds=max_age) < at:
        raise OcspError(f"{what}: stale (older than the maximum age of {max_age} s)")
    status = single.certificate_status
    reason = None
    revoked_at = None
    if status == ocsp.OCSPCertStatus.REVOKED:
        revoked_at = single.revocation_time_utc
        if single.revocation_reason is not None:
            reason = single.revocation_reason.name
    return OcspStatus(
        status=status.name.lower(),
        this_update=this_update,
        next_update=next_update,
        produced_at=resp.produced_at_utc,
        revoked_at=revoked_at,
        reason=reason,
    )


def _find_single(
    resp: ocsp.OCSPResponse, cert: x509.Certificate, issuer: x509.Certificate
) -> ocsp.OCSPSingleResponse:
    for single in resp.responses:
        if single.serial_number != cert.serial_number:
            continue
        alg = single.hash_algorithm
        if single.issuer_name_hash == _name_hash(issuer.subject, alg) and (
            single.issuer_key_hash == _key_hash(issuer, alg)
        ):
            return single
    raise OcspError("OCSP response does not cover this certificate")


def ocsp_urls(cert: x509.Certificate) -> list[str]:
    """The OCSP responder URLs named in the certificate's AIA extension."""
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except (x509.ExtensionNotFound, ValueError):
        return []
    return [
        d.access_location.value
        for d in aia
        if d.access_method == x509.oid.AuthorityInformationAccessOID.OCSP
        and isinstance(d.access_location, x509.UniformResourceIdentifier)
    ]


def response_digest(data: bytes) -> str:
    """Hex SHA-256 of a response (for logs)."""
    return hashlib.sha256(data).hexdigest()
