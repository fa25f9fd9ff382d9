"""Purpose (keyUsage / extendedKeyUsage), held CRLs for certificates without CDP, caps."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from idm.validator.api import validate
from idm.validator.policy import Policy
from idm.validator.revocation.store import MemoryRevocationStore
from tests.validator.pki import make_cert, make_pki, name, shared_key

OFF = Policy(revocation="off")


@pytest.mark.parametrize(
    ("eku", "expected"),
    [
        ([ExtendedKeyUsageOID.CLIENT_AUTH], "valid"),
        ([x509.ObjectIdentifier("1.3.6.1.5.5.7.3.21")], "valid"),  # secureShellClient
        ([ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE], "valid"),
        ([ExtendedKeyUsageOID.SERVER_AUTH], "invalid-path"),
        ([ExtendedKeyUsageOID.EMAIL_PROTECTION, ExtendedKeyUsageOID.CODE_SIGNING], "invalid-path"),
        (None, "valid"),  # no EKU at all: any use
    ],
)
def test_ssh_client_eku(eku, expected):
    root, inter, leaf = make_pki(eku=eku)
    v = validate(leaf.cert, anchors=[root.cert], intermediates=[inter.cert], policy=OFF)
    assert v.status == expected
    if expected != "valid":
        assert "extendedKeyUsage" in v.reason
        anyp = Policy(revocation="off", purpose="any")
        assert validate(
            leaf.cert, anchors=[root.cert], intermediates=[inter.cert], policy=anyp
        ).valid


def test_ssh_client_key_usage_needs_digital_signature():
    root, inter, leaf = make_pki(key_usage="encipher-only")
    v = validate(leaf.cert, anchors=[root.cert], intermediates=[inter.cert], policy=OFF)
    assert v.status == "invalid-path" and "digitalSignature" in v.reason
    root, inter, leaf = make_pki(key_usage=None)
    assert validate(leaf.cert, anchors=[root.cert], intermediates=[inter.cert], policy=OFF).valid


def test_configurable_eku_list():
    root, inter, leaf = make_pki(eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    policy = Policy(revocation="off", client_ekus=(ExtendedKeyUsageOID.SERVER_AUTH.dotted_string,))
    assert validate(leaf.cert, anchors=[root.cert], intermediates=[inter.cert], policy=policy).valid


@pytest.mark.parametrize("mode", ["require", "hard-fail", "soft-fail"])
def test_serial_in_held_crl_revokes_certificate_without_cdp(mode):
    """pyhanko-certvalidator's own modes ignore a CRL for a cert with no CDP; idm must not."""
    root, inter, leaf = make_pki()  # no CDP, no AIA
    assert not any(isinstance(e.value, x509.CRLDistributionPoints) for e in leaf.cert.extensions)
    inter.revoke(leaf.cert)
    store = MemoryRevocationStore()
    kw = dict(anchors=[root.cert], intermediates=[inter.cert], store=store)
    v = validate(leaf.cert, crls=[inter.crl(), root.crl()], policy=Policy(revocation=mode), **kw)
    assert v.status == "revoked"
    # and later, from the cache alone (no CRL given, offline)
    cached = Policy(revocation=mode, offline=True)
    assert validate(leaf.cert, policy=cached, **kw).status == "revoked"
    # "off" means off
    assert validate(leaf.cert, policy=OFF, **kw).status == "valid"


def test_pool_cap_and_budget_with_same_subject_intermediates():
    """100 same-name intermediates, all sharing one key: every one 'signs' the next, so the
    search space explodes; the budget must end it with a verdict."""
    root = make_cert("Pool Root", None, ca=True)
    key = shared_key()
    pool = [
        make_cert("", root if i == 0 else None, ca=True, key=key, subject_name=name("Same CA")).cert
        for i in range(100)
    ]
    # all are self-issued "Same CA" certs signed by the same key except the first
    leaf = make_cert("dave", _fake_ca(key), eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    policy = Policy(revocation="off", budget_seconds=1.0)
    v = validate(
        leaf.cert,
        anchors=[make_cert("Elsewhere", None, ca=True).cert],
        intermediates=pool,
        policy=policy,
    )
    assert v.status == "invalid-path"
    assert v.reason == "validation budget of 1 s exceeded"
    assert any("first 64 of 100" in w for w in v.warnings)


def test_pool_of_impostors_still_finds_the_real_path():
    root, inter, leaf = make_pki()
    impostors = [make_cert("Test Intermediate", root, ca=True).cert for _ in range(40)]
    v = validate(
        leaf.cert,
        anchors=[root.cert],
        intermediates=[*impostors, inter.cert],
        policy=Policy(revocation="off"),
    )
    assert v.status == "valid"


def _fake_ca(key):
    from tests.validator.pki import CA

    holder = make_cert("", None, ca=True, key=key, subject_name=name("Same CA"))
    return CA(holder.cert, key)
