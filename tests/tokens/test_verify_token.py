"""`idm verify pkcs11:…`: a certificate read from a SoftHSM2 token is validated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from idm.cli import main
from tests.softhsm import SoftHSM, softhsm  # noqa: F401 - fixture

pytestmark = pytest.mark.softhsm


def verify(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    db = f"sqlite:///{tmp_path / 'inventory.sqlite'}"
    r = CliRunner().invoke(main.cli, ["--db", db, "verify", *args])
    return r.exit_code, r.stdout, r.stderr


def test_verify_certificate_on_a_token(softhsm: SoftHSM, sample_ca, tmp_path: Path) -> None:  # noqa: F811
    tok = softhsm.init_token("verify-card")
    softhsm.import_certificate(tok, sample_ca.user_cert("alice"), key_id=b"\x01", label="a")
    softhsm.import_certificate(tok, sample_ca.user_cert("bob"), key_id=b"\x02", label="b")
    softhsm.import_certificate(tok, sample_ca.intermediate, key_id=b"\x09", label="ca")
    base = ["--ca", str(sample_ca.ca_bundle), "--revocation", "off", "--json"]

    # the intermediate stored on the token completes the path (no --untrusted given)
    code, out, err = verify(tmp_path, *base, f"{tok.uri};object=a;type=cert")
    assert code == 0, err
    result = json.loads(out)
    assert result["valid"] and result["subject"] == "CN=alice,O=idm demo,C=XX"
    assert len(result["chain"]) == 3

    code, out, err = verify(tmp_path, *base, f"{tok.uri};type=cert")
    assert code == 2 and "matches 3 certificates" in err
    code, out, err = verify(tmp_path, *base, f"{tok.uri};object=nothing;type=cert")
    assert code == 2 and "no certificate on the token matches" in err
    code, out, err = verify(tmp_path, *base, "pkcs11:token=absent-card;type=cert")
    assert code == 2 and "absent-card" in err
