"""Certificate → user mapping rules: email, UPN, CN, explicit principals; first rule wins."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from idm.identity.certnames import UPN_OID
from idm.identity.server.mapping import (
    Explicit,
    Mapper,
    MappingError,
    read_principals_dir,
    valid_username,
)

KEY = ec.generate_private_key(ec.SECP256R1())


def utf8_der(text: str) -> bytes:
    raw = text.encode()
    assert len(raw) < 128
    return bytes([0x0C, len(raw)]) + raw


def cert(cn: str | None = "Alice Example", emails: tuple[str, ...] = (),
         upns: tuple[str, ...] = (), org: str = "Example") -> x509.Certificate:
    attrs = [x509.NameAttribute(NameOID.COUNTRY_NAME, "XX"),
             x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)]
    if cn:
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    name = x509.Name(attrs)
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(KEY.public_key()).serial_number(1)
        .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=1))
    )
    sans: list[x509.GeneralName] = [x509.RFC822Name(e) for e in emails]
    sans += [x509.OtherName(UPN_OID, utf8_der(u)) for u in upns]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(KEY, hashes.SHA256())


def test_email_local_part() -> None:
    assert Mapper(["email"]).map(cert(emails=("alice@example.org",))) == ("email", {"alice"})


def test_upn_local_part() -> None:
    c = cert(upns=("asmith@corp.example",))
    assert Mapper(["upn"]).map(c) == ("upn", {"asmith"})


def test_cn_rule_and_unusable_names_are_ignored() -> None:
    assert Mapper(["cn"]).map(cert(cn="bob")) == ("cn", {"bob"})
    # "Alice Example" has a space: not a user name, never mapped.
    assert Mapper(["cn"]).map(cert(cn="Alice Example")) == (None, set())
    assert Mapper(["cn"]).map(cert(cn="-oProxyCommand=x")) == (None, set())


def test_first_rule_that_names_a_user_wins() -> None:
    c = cert(cn="carol", emails=("c.jones@example.org",))
    assert Mapper(["email", "cn"]).map(c) == ("email", {"c.jones"})
    assert Mapper(["cn", "email"]).map(c) == ("cn", {"carol"})
    assert Mapper(["upn", "cn"]).map(c) == ("cn", {"carol"})


def test_explicit_subject_dn_matches_regardless_of_spacing() -> None:
    c = cert(cn="dave")
    mapper = Mapper(["principals", "cn"], [Explicit("root", "subject", "CN=dave, O=Example, C=XX")])
    assert mapper.map(c) == ("principals", {"root"})
    other = cert(cn="dave", org="Other")
    assert mapper.map(other) == ("cn", {"dave"})


def test_explicit_principal_matches_cn_email_or_upn() -> None:
    explicit = [
        Explicit("ops", "principal", "erin@EXAMPLE.org"),
        Explicit("dba", "principal", "erin"),
        Explicit("win", "principal", "erin@corp.example"),
    ]
    c = cert(cn="erin", emails=("erin@example.org",), upns=("erin@corp.example",))
    assert Mapper(["principals"], explicit).map(c) == ("principals", {"ops", "dba", "win"})
    assert Mapper(["principals"], explicit).map(cert(cn="frank")) == (None, set())


def test_principals_dir_one_file_per_user(tmp_path: Path) -> None:
    (tmp_path / "alice").write_text("# alice's certificates\nCN=Alice Example,O=Example,C=XX\n")
    (tmp_path / "bob").write_text("bob@example.org  # by e-mail\n\n")
    (tmp_path / ".hidden").write_text("CN=x\n")
    found = read_principals_dir(tmp_path)
    assert Explicit("alice", "subject", "CN=Alice Example,O=Example,C=XX") in found
    assert Explicit("bob", "principal", "bob@example.org") in found
    assert all(e.username != ".hidden" for e in found)
    mapper = Mapper(["principals"], found)
    assert mapper.map(cert()) == ("principals", {"alice"})
    assert mapper.map(cert(cn="x", emails=("bob@example.org",))) == ("principals", {"bob"})


def test_principals_dir_missing_is_empty_and_bad_dn_is_an_error(tmp_path: Path) -> None:
    assert read_principals_dir(tmp_path / "nope") == []
    (tmp_path / "carol").write_text("CN=carol,=broken\n")
    with pytest.raises(MappingError, match="not a distinguished name"):
        read_principals_dir(tmp_path)


def test_unknown_rule_is_rejected() -> None:
    with pytest.raises(MappingError, match="unknown mapping rule"):
        Mapper(["uid"])


def test_valid_username() -> None:
    assert valid_username("alice") and valid_username("a.b-c_d") and valid_username("x@corp")
    for bad in ("", "-x", "a b", "a/b", "ä", "a\n"):
        assert not valid_username(bad)


def test_principals_files_are_held_to_strict_modes(tmp_path: Path) -> None:
    """A principals file grants logins: one writable by others is refused, as sshd refuses
    such an AuthorizedPrincipalsFile (the helper and refresh pass the StrictModes check)."""
    from idm.identity.server.strictmodes import check_strict_modes

    (tmp_path / "alice").write_text("alice@example.org\n")
    os.chmod(tmp_path / "alice", 0o666)
    with pytest.raises(MappingError, match="StrictModes"):
        read_principals_dir(tmp_path, check_strict_modes)
    assert read_principals_dir(tmp_path)  # without the check (not a login decision)
