"""NIST PKITS (2011 edition), case by case, through `idm verify --json`.

The table (tests/validator/data/pkits.json, from the pyHanko repository, MIT licence) gives
for each test its end-entity certificate, untrusted certificates, CRLs and whether the
path must be refused; the certificates and CRLs come from PyPI's `cryptography-vectors`.
Every test of sections 4.1-4.16 that uses the default RFC 5280 §6.1.1 inputs runs under
`--revocation require` (what PKITS assumes: revocation checking everywhere) and under
idm's default `hard-fail`, each with a fresh inventory. A case either gives NIST's answer
or is listed in DIFFERENCES with the reason idm deliberately differs (docs/validation.md
says the same); a listed case must really differ, so the list cannot go stale.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cryptography_vectors  # a test extra: the suite must run, never skip
import pytest
from click.testing import CliRunner

DATA = Path(cryptography_vectors.__file__).parent / "x509" / "PKITS_data"
TABLE = json.loads((Path(__file__).parent / "data" / "pkits.json").read_text())
CASES = [c for c in TABLE if not c.get("params")]
MODES = ("require", "hard-fail")
AT = "2022-05-01T00:00:00Z"

_DSA = "DSA keys are refused by idm's key policy ([validation] allow_dsa)"
_HARD_FAIL = (
    "under hard-fail a certificate that names no CRL or OCSP source, and whose issuer has no "
    "CRL at hand, is accepted without status; under require it is refused"
)
# (test id, mode or None for both) -> why idm's answer differs from NIST's.
DIFFERENCES: dict[tuple[str, str | None], str] = {
    ("40104", None): _DSA,
    ("40105", None): _DSA + " (and the CA certificate inheriting DSA parameters does not parse)",
    ("40401", "hard-fail"): _HARD_FAIL,
    ("40405", "hard-fail"): _HARD_FAIL + " (the only CRL names another issuer)",
    ("40406", "hard-fail"): _HARD_FAIL + " (the only CRL is another CA's)",
}


def _difference(case_id: str, mode: str) -> str | None:
    return DIFFERENCES.get((case_id, mode)) or DIFFERENCES.get((case_id, None))


@pytest.fixture(scope="module")
def empty_inventory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An inventory created once; each case gets a fresh copy of it (creating the schema
    with Alembic for each of 400 runs would cost minutes)."""
    from idm.identity.inventory.store import open_inventory

    path = tmp_path_factory.mktemp("pkits") / "empty.sqlite"
    open_inventory(f"sqlite:///{path}").close()
    return path


def _verify(case: dict, mode: str, db: Path) -> tuple[bool, str]:
    from idm.cli.main import cli

    args = ["--db", f"sqlite:///{db}", "verify", "--json", "--at", AT, "--purpose", "any",
            "--revocation", mode, "--ca", str(DATA / "certs" / "TrustAnchorRootCertificate.crt")]
    for name in case.get("other_certs", []):
        args += ["--untrusted", str(DATA / "certs" / name)]
    for name in ["TrustAnchorRootCRL.crl", *case.get("crls", [])]:
        args += ["--crl", str(DATA / "crls" / name)]
    args.append(str(DATA / "certs" / case["cert"]))
    result = CliRunner().invoke(cli, args)
    if result.exit_code == 2:  # an input idm cannot read: refused, with a one-line error
        return False, result.output.strip()
    assert result.exit_code in (0, 1), result.output
    (line,) = result.stdout.splitlines()
    verdict = json.loads(line)
    assert (result.exit_code == 0) == verdict["valid"]
    return verdict["valid"], f"{verdict['status']}: {verdict['reason']}"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=[f"{c['id']}-{c['name']}" for c in CASES])
def test_pkits(case: dict, mode: str, empty_inventory: Path, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # no user configuration
    monkeypatch.delenv("IDM_CONFIG", raising=False)
    db = tmp_path / "inventory.sqlite"
    shutil.copy(empty_inventory, db)
    valid, why = _verify(case, mode, db)
    nist_valid = "error" not in case
    if _difference(case["id"], mode):
        assert valid != nist_valid, f"listed as a difference but idm agrees with NIST: {why}"
    else:
        assert valid == nist_valid, why


def test_every_listed_difference_is_a_case() -> None:
    ids = {c["id"] for c in CASES}
    assert {case_id for case_id, _ in DIFFERENCES} <= ids
    assert len(CASES) >= 211
