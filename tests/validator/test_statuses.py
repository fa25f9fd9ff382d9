"""Each verdict status from a real scenario, through the public validate() API."""

from __future__ import annotations

import datetime as dt

from cryptography.x509.oid import ExtendedKeyUsageOID

from idm.validator.api import validate
from idm.validator.policy import Policy
from idm.validator.revocation.store import MemoryRevocationStore
from tests.validator.pki import DAY, NOW, der, make_cert, make_pki, pem

OFF = Policy(revocation="off")


def test_valid_path_through_intermediate():
    root, inter, leaf = make_pki()
    v = validate(leaf.cert, anchors=[root.cert], intermediates=[inter.cert], policy=OFF)
    assert v.valid and v.status == "valid"
    assert [c.subject for c in v.chain] == [
        leaf.cert.subject,
        inter.cert.subject,
        root.cert.subject,
    ]
    assert v.ssh_identity == "x509"
    assert v.fresh_until == min(c.not_valid_after_utc for c in v.chain)


def test_valid_from_der_and_pem_bytes():
    root, inter, leaf = make_pki()
    for data in (der(leaf.cert), pem(leaf.cert)):
        v = validate(data, anchors=[root.cert], intermediates=[inter.cert], policy=OFF)
        assert v.status == "valid"


def test_revoked_by_crl():
    root, inter, leaf = make_pki()
    inter.revoke(leaf.cert)
    v = validate(
        leaf.cert,
        anchors=[root.cert],
        intermediates=[inter.cert],
        crls=[inter.crl(), root.crl()],
    )
    assert v.status == "revoked" and not v.valid
    assert "revoked since" in v.reason and "alice" in v.reason
    assert any(e.status == "revoked" and e.source == "crl" for e in v.revocation)


def test_expired_leaf_and_expired_intermediate():
    root, inter, leaf = make_pki(not_before=NOW - 10 * DAY, not_after=NOW - DAY)
    v = validate(leaf.cert, anchors=[root.cert], intermediates=[inter.cert], policy=OFF)
    assert v.status == "expired" and "alice" in v.reason

    root = make_cert("Root", None, ca=True)
    old = make_cert("Old Intermediate", root, ca=True, not_after=NOW - dt.timedelta(minutes=1))
    leaf = make_cert("bob", old, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    v = validate(leaf.cert, anchors=[root.cert], intermediates=[old.cert], policy=OFF)
    assert v.status == "expired" and "Old Intermediate" in v.reason


def test_time_tolerance_is_zero():
    root, inter, leaf = make_pki()
    end = leaf.cert.not_valid_after_utc
    ok = validate(leaf.cert, anchors=[root.cert], intermediates=[inter.cert], policy=OFF, at=end)
    assert ok.status == "valid"
    late = validate(
        leaf.cert,
        anchors=[root.cert],
        intermediates=[inter.cert],
        policy=OFF,
        at=end + dt.timedelta(seconds=1),
    )
    assert late.status == "expired"


def test_not_yet_valid():
    root, inter, leaf = make_pki(not_before=NOW + DAY, not_after=NOW + 10 * DAY)
    v = validate(leaf.cert, anchors=[root.cert], intermediates=[inter.cert], policy=OFF)
    assert v.status == "not-yet-valid"


def test_untrusted_missing_anchor_and_self_signed():
    root, inter, leaf = make_pki()
    other = make_cert("Other Root", None, ca=True)
    v = validate(leaf.cert, anchors=[other.cert], intermediates=[inter.cert], policy=OFF)
    assert v.status == "untrusted" and "no path" in v.reason

    selfsigned = make_cert("selfie", None)
    v = validate(selfsigned.cert, anchors=[other.cert], policy=OFF)
    assert v.status == "untrusted" and "self-signed" in v.reason
    assert v.ssh_identity == "plain"


def test_self_signed_anchor_is_plain_identity():
    selfsigned = make_cert("selfie", None, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    v = validate(selfsigned.cert, anchors=[selfsigned.cert])
    assert v.status == "valid" and v.ssh_identity == "plain"


def test_invalid_path_when_intermediate_is_not_a_ca():
    root = make_cert("Root", None, ca=True)
    fake = make_cert("Not A CA", root, ca=False)
    leaf = make_cert("mallory", fake, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    v = validate(leaf.cert, anchors=[root.cert], intermediates=[fake.cert], policy=OFF)
    assert v.status == "invalid-path"
    assert "Not A CA" in v.reason or "CA" in v.reason


def test_invalid_path_when_path_length_exceeded():
    # RFC 5280 ignores the anchor's own constraints: put pathlen 0 on an intermediate.
    root = make_cert("Root", None, ca=True)
    upper = make_cert("Upper", root, ca=True, path_length=0)
    lower = make_cert("Lower", upper, ca=True)
    leaf = make_cert("carol", lower, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    pool = [upper.cert, lower.cert]
    v = validate(leaf.cert, anchors=[root.cert], intermediates=pool, policy=OFF)
    assert v.status == "invalid-path" and "path length" in v.reason.lower()


def test_malformed_bytes():
    root, _, _ = make_pki()
    v = validate(b"\x30\x03\x02\x01\x01", anchors=[root.cert])
    assert v.status == "malformed" and not v.valid
    v = validate(
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", anchors=[root.cert]
    )
    assert v.status == "malformed"


def test_revocation_unknown_hard_fail_when_crl_is_stale():
    root, inter, leaf = make_pki()
    stale = inter.crl(this_update=NOW - 10 * DAY, next_update=NOW - DAY)
    v = validate(
        leaf.cert,
        anchors=[root.cert],
        intermediates=[inter.cert],
        crls=[stale, root.crl()],
        policy=Policy(revocation="hard-fail"),
    )
    assert v.status == "revocation-unknown"
    assert "alice" in v.reason and "not current" in v.reason
    soft = validate(
        leaf.cert,
        anchors=[root.cert],
        intermediates=[inter.cert],
        crls=[stale, root.crl()],
        policy=Policy(revocation="soft-fail"),
    )
    assert soft.status == "valid" and any("soft-fail" in w for w in soft.warnings)


def test_require_needs_status_even_without_sources():
    root, inter, leaf = make_pki()
    v = validate(
        leaf.cert,
        anchors=[root.cert],
        intermediates=[inter.cert],
        policy=Policy(revocation="require"),
    )
    assert v.status == "revocation-unknown"
    # hard-fail asks nothing of a certificate that names no source, with no CRL at hand
    v = validate(
        leaf.cert,
        anchors=[root.cert],
        intermediates=[inter.cert],
        policy=Policy(revocation="hard-fail"),
    )
    assert v.status == "valid"
    # with current CRLs for both CAs, require is satisfied
    v = validate(
        leaf.cert,
        anchors=[root.cert],
        intermediates=[inter.cert],
        crls=[inter.crl(), root.crl()],
        policy=Policy(revocation="require"),
    )
    assert v.status == "valid"
    assert {e.status for e in v.revocation} == {"good"}
    assert v.fresh_until is not None and v.fresh_until <= NOW + 7 * DAY


def test_revoked_intermediate_revokes_the_leaf():
    root, inter, leaf = make_pki()
    root.revoke(inter.cert)
    v = validate(
        leaf.cert, anchors=[root.cert], intermediates=[inter.cert], crls=[root.crl(), inter.crl()]
    )
    assert v.status == "revoked" and "Test Intermediate" in v.reason


def test_revocation_date_after_at_is_not_yet_revoked():
    root, inter, leaf = make_pki()
    inter.revoke(leaf.cert, when=NOW - dt.timedelta(hours=1))
    store = MemoryRevocationStore()
    kw = dict(anchors=[root.cert], intermediates=[inter.cert], store=store)
    v = validate(leaf.cert, crls=[inter.crl(), root.crl()], **kw)
    assert v.status == "revoked"
    before = validate(leaf.cert, at=NOW - dt.timedelta(hours=2), **kw)
    assert before.status == "valid"


def test_forged_crl_at_hand_makes_status_unknown():
    """A CRL for the issuer that no known key signed is not used, but it is at hand:
    the issuer publishes CRLs, so status is needed, and there is none (fail closed)."""
    root, inter, leaf = make_pki()
    forged = inter.crl(key=make_cert("x", None).key)
    v = validate(
        leaf.cert, anchors=[root.cert], intermediates=[inter.cert], crls=[forged], policy=OFF
    )
    assert v.status == "valid"
    v = validate(leaf.cert, anchors=[root.cert], intermediates=[inter.cert],
                 crls=[forged, root.crl()])
    assert v.status == "revocation-unknown"
    assert "not signed by any known CA" in v.reason and "alice" in v.reason
    soft = validate(leaf.cert, anchors=[root.cert], intermediates=[inter.cert],
                    crls=[forged, root.crl()], policy=Policy(revocation="soft-fail"))
    assert soft.status == "valid" and any("not signed by any known CA" in w
                                          for w in soft.warnings)
    # A good CRL beside the forged one gives the status.
    good = validate(leaf.cert, anchors=[root.cert], intermediates=[inter.cert],
                    crls=[forged, inter.crl(), root.crl()])
    assert good.status == "valid", good.reason
