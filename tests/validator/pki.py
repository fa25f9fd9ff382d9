"""Certificates, CRLs and OCSP responses built with `cryptography` for validator tests.

sample-ca covers the common PKI; this builds the odd cases it does not issue on purpose
(expired intermediates, wrong-key responses, pools of same-name CAs, missing CDPs...).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
DAY = dt.timedelta(days=1)
# One key reused for speed where the test does not care which key signs.
_SHARED_KEY = ec.generate_private_key(ec.SECP256R1())


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def der(obj: x509.Certificate | x509.CertificateRevocationList) -> bytes:
    return obj.public_bytes(serialization.Encoding.DER)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class CA:
    """A CA certificate with its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    crl_number: int = 0
    revoked: list[tuple[int, dt.datetime]] = field(default_factory=list)

    def crl(
        self,
        *,
        this_update: dt.datetime | None = None,
        next_update: dt.datetime | None = None,
        key: ec.EllipticCurvePrivateKey | None = None,
        number: int | None = None,
    ) -> bytes:
        """A DER CRL listing `self.revoked`."""
        self.crl_number += 1
        tu = this_update or NOW - dt.timedelta(minutes=1)
        b = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(tu)
            .next_update(next_update or tu + 7 * DAY)
            .add_extension(x509.CRLNumber(number or self.crl_number), critical=False)
        )
        for serial, when in self.revoked:
            b = b.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
            )
        return der(b.sign(key or self.key, hashes.SHA256()))

    def revoke(self, cert: x509.Certificate, when: dt.datetime | None = None) -> None:
        self.revoked.append((cert.serial_number, when or NOW - dt.timedelta(hours=1)))


def make_cert(
    subject: str,
    issuer: CA | None,
    *,
    ca: bool = False,
    key: ec.EllipticCurvePrivateKey | None = None,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    eku: list[x509.ObjectIdentifier] | None = None,
    key_usage: str | None = "default",
    cdp: str | None = None,
    ocsp_url: str | None = None,
    path_length: int | None = None,
    subject_name: x509.Name | None = None,
) -> CA:
    """A certificate (CA when `ca`); self-signed when `issuer` is None."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    subj = subject_name or name(subject)
    b = (
        x509.CertificateBuilder()
        .subject_name(subj)
        .issuer_name(issuer.cert.subject if issuer else subj)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - DAY)
        .not_valid_after(not_after or NOW + 365 * DAY)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if issuer is not None:
        b = b.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), False
        )
    if ca:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=path_length), True)
        b = b.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), True
        )
    else:
        b = b.add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        if key_usage == "default":
            b = b.add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False), True
            )
        elif key_usage == "encipher-only":
            b = b.add_extension(
                x509.KeyUsage(False, False, True, False, False, False, False, False, False), True
            )
        if eku is not None:
            b = b.add_extension(x509.ExtendedKeyUsage(eku), False)
    if cdp:
        b = b.add_extension(
            x509.CRLDistributionPoints(
                [x509.DistributionPoint([x509.UniformResourceIdentifier(cdp)], None, None, None)]
            ),
            False,
        )
    if ocsp_url:
        b = b.add_extension(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        x509.oid.AuthorityInformationAccessOID.OCSP,
                        x509.UniformResourceIdentifier(ocsp_url),
                    )
                ]
            ),
            False,
        )
    signer = issuer.key if issuer else key
    return CA(b.sign(signer, hashes.SHA256()), key)


def make_pki(**leaf_kw: object) -> tuple[CA, CA, CA]:
    """root -> intermediate -> leaf (clientAuth), with leaf options passed through."""
    root = make_cert("Test Root", None, ca=True)
    inter = make_cert("Test Intermediate", root, ca=True)
    kw: dict[str, object] = {"eku": [ExtendedKeyUsageOID.CLIENT_AUTH]}
    kw.update(leaf_kw)
    leaf = make_cert("alice", inter, **kw)  # type: ignore[arg-type]
    return root, inter, leaf


def ocsp_response(
    cert: x509.Certificate,
    issuer: CA,
    *,
    status: str = "good",
    signer: CA | None = None,
    this_update: dt.datetime | None = None,
    next_update: dt.datetime | None = None,
    nonce: bytes | None = None,
    include_signer: bool = True,
) -> bytes:
    """A DER OCSP response about `cert`, signed by `signer` (default: the issuer)."""
    signer = signer or issuer
    cert_status = {
        "good": ocsp.OCSPCertStatus.GOOD,
        "revoked": ocsp.OCSPCertStatus.REVOKED,
        "unknown": ocsp.OCSPCertStatus.UNKNOWN,
    }[status]
    tu = this_update or NOW - dt.timedelta(minutes=1)
    b = ocsp.OCSPResponseBuilder().add_response(
        cert=cert,
        issuer=issuer.cert,
        algorithm=hashes.SHA1(),
        cert_status=cert_status,
        this_update=tu,
        next_update=next_update or tu + DAY,
        revocation_time=NOW - DAY if status == "revoked" else None,
        revocation_reason=None,
    )
    b = b.responder_id(ocsp.OCSPResponderEncoding.HASH, signer.cert)
    if include_signer and signer is not issuer:
        b = b.certificates([signer.cert])
    if nonce is not None:
        b = b.add_extension(x509.OCSPNonce(nonce), critical=False)
    return b.sign(signer.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def ocsp_responder_cert(issuer: CA, *, eku: bool = True) -> CA:
    """A delegated responder certificate issued by `issuer`."""
    return make_cert(
        "OCSP responder",
        issuer,
        eku=[ExtendedKeyUsageOID.OCSP_SIGNING] if eku else [ExtendedKeyUsageOID.CLIENT_AUTH],
    )


def unsuccessful_ocsp(status: ocsp.OCSPResponseStatus) -> bytes:
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(
        serialization.Encoding.DER
    )


def shared_key() -> ec.EllipticCurvePrivateKey:
    return _SHARED_KEY
