"""Malformed certificates, CRLs and OCSP responses never crash: they give a clear error."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idm.validator.api import validate
from idm.validator.bundle import parse_certificates
from idm.validator.errors import MalformedInputError
from idm.validator.policy import Policy
from idm.validator.revocation.crl import CrlError, index_crl
from idm.validator.revocation.ocsp import OcspError, check_response
from idm.validator.revocation.store import MemoryRevocationStore
from tests.validator.pki import NOW, der, make_pki, ocsp_response, pem

ROOT, INTER, LEAF = make_pki()
LEAF_DER = der(LEAF.cert)
CRL_DER = INTER.crl()
OCSP_DER = ocsp_response(LEAF.cert, INTER)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _mutate(data: bytes, draw_pos: int, value: int, cut: int) -> bytes:
    """Flip one byte and optionally truncate: mostly-valid DER, the interesting case."""
    pos = draw_pos % len(data)
    out = data[:pos] + bytes([value]) + data[pos + 1 :]
    return out[: max(1, len(out) - cut)]


mutation = st.tuples(st.integers(0, 1 << 16), st.integers(0, 255), st.integers(0, 40))


@SETTINGS
@given(st.one_of(st.binary(max_size=300), mutation.map(lambda m: _mutate(LEAF_DER, *m))))
def test_certificate_bytes(data):
    try:
        certs = parse_certificates(data, "fuzz")
    except MalformedInputError as e:
        assert str(e).startswith("fuzz: ") and "\n" not in str(e)
        return
    v = validate(
        certs[0], anchors=[ROOT.cert], intermediates=[INTER.cert], policy=Policy(revocation="off")
    )
    assert v.status in {
        "valid",
        "malformed",
        "invalid-path",
        "untrusted",
        "expired",
        "not-yet-valid",
    }
    assert v.reason and "\n" not in v.reason


@SETTINGS
@given(mutation.map(lambda m: _mutate(LEAF_DER, *m)))
def test_validate_on_bytes_never_raises(data):
    v = validate(
        data, anchors=[ROOT.cert], intermediates=[INTER.cert], policy=Policy(revocation="off")
    )
    # valid only for what was signed: the leaf's own TBSCertificate
    assert not v.valid or v.leaf.tbs_certificate_bytes == LEAF.cert.tbs_certificate_bytes


@SETTINGS
@given(st.one_of(st.binary(max_size=200), mutation.map(lambda m: _mutate(CRL_DER, *m))))
def test_crl_bytes(data):
    store = MemoryRevocationStore()
    try:
        index_crl(data, "fuzz.crl", [INTER.cert, ROOT.cert], store)
    except (MalformedInputError, CrlError) as e:
        assert "fuzz.crl" in str(e) and "\n" not in str(e)


@SETTINGS
@given(st.one_of(st.binary(max_size=200), mutation.map(lambda m: _mutate(OCSP_DER, *m))))
def test_ocsp_bytes(data):
    try:
        st_ = check_response(data, LEAF.cert, INTER.cert, nonce=None, at=NOW, max_age=86400)
    except (MalformedInputError, OcspError) as e:
        assert "OCSP" in str(e) and "\n" not in str(e)
    else:
        assert st_.status in {"good", "revoked", "unknown"}


def test_pem_with_trailing_junk_and_empty_inputs():
    for data in (b"", b"   ", pem(LEAF.cert)[:-30], b"-----BEGIN PRIVATE KEY-----\nAA==\n"):
        try:
            parse_certificates(data, "x")
        except MalformedInputError:
            pass


@SETTINGS
@given(st.one_of(st.binary(max_size=200), mutation.map(lambda m: _mutate(CRL_DER, *m))),
       mutation.map(lambda m: _mutate(LEAF_DER, *m)))
def test_validate_with_hostile_crl_and_certificate_gives_a_verdict(crl, leaf):
    """Revocation on, a mangled CRL supplied, a mangled leaf: a verdict with a one-line
    reason, or (only for a CRL that does not parse at all) the caller's input error."""
    try:
        v = validate(leaf, anchors=[ROOT.cert], intermediates=[INTER.cert], crls=[crl],
                     policy=Policy(revocation="hard-fail"))
    except MalformedInputError as e:
        assert "\n" not in str(e)
        return
    assert v.reason and "\n" not in v.reason
    if v.valid:
        assert v.leaf.tbs_certificate_bytes == LEAF.cert.tbs_certificate_bytes
