"""Configuration parsing: defaults, types, clear errors."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from idm.identity.config import _SECTIONS, LIMITS, Config, ConfigError, load_config, parse_config

IDM = str(Path(sys.executable).with_name("idm"))


def test_defaults() -> None:
    c = Config()
    assert c.revocation.policy == "hard-fail"
    assert c.revocation.connect_timeout == 3.0 and c.revocation.read_timeout == 10.0
    assert c.revocation.crl_max_bytes == 100 * 1024 * 1024
    assert c.validation.purpose == "ssh-client"
    assert "1.3.6.1.5.5.7.3.21" in c.validation.client_ekus


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[validation]\nca = ["ca.pem", "/etc/ssl/x.pem"]\n[revocation]\ncrl = "crls"\n')
    c = load_config(f)
    assert c.validation.ca == [tmp_path / "ca.pem", Path("/etc/ssl/x.pem")]
    assert c.revocation.crl == [tmp_path / "crls"]


# Every kind of error parse_config raises: (TOML text, the key it must name, message).
BAD_FILES = [
    ("nope = 1\n", "'nope'", "unknown section or key"),
    ("db = 3\n", "db", "expected a database URL string"),
    ("validation = 3\n", "[validation]", "must be a table"),
    ("[validation]\ncolour = 'red'\n", "'colour'", "unknown key"),
    ("[validation]\nca = 3\n", "[validation] ca", "expected a list of paths"),
    ("[validation]\nca = ['']\n", "[validation] ca", "expected a path string"),
    ("[server]\nsnapshot = 3\n", "[server] snapshot", "expected a path string"),
    ("[validation]\nclient_ekus = [1]\n", "[validation] client_ekus",
     "expected a list of strings"),
    ("[revocation]\nocsp_url = 1\n", "[revocation] ocsp_url", "expected a string"),
    ("[revocation]\noffline = 'yes'\n", "[revocation] offline", "expected true or false"),
    ("[revocation]\nconnect_timeout = '3'\n", "[revocation] connect_timeout",
     "expected a number"),
    ("[revocation]\nread_timeout = -1\n", "[revocation] read_timeout", "out of range"),
    ("[server]\nsnapshot_lifetime = inf\n", "[server] snapshot_lifetime",
     "expected a finite number, got inf"),
    ("[validation]\nbudget_seconds = nan\n", "[validation] budget_seconds",
     "expected a finite number, got nan"),
    ("[validation]\nmax_pool = 1e30\n", "[validation] max_pool", "out of range (from 1 to 4096)"),
    ("[tokens]\npin_cache = -inf\n", "[tokens] pin_cache", "expected a finite number"),
    ("[server]\nsnapshot_lifetime = 3600.5\n", "[server] snapshot_lifetime",
     "expected a whole number"),
    ("[revocation]\ncrl_max_bytes = 9223372036854775807\n", "[revocation] crl_max_bytes",
     "out of range"),
    ("[revocation]\npolicy = 'maybe'\n", "[revocation] policy", "is not one of"),
    ("[validation]\npurpose = 'fun'\n", "[validation] purpose", "is not one of"),
    ("[server]\nmapping = ['email', 'shoe-size']\n", "[server] mapping", "unknown rule"),
    ("[validation]\ncurves = ['secp256r1', 'nope']\n", "[validation] curves",
     "unknown curve 'nope': use some of secp256r1"),
]


@pytest.mark.parametrize(("text", "key", "message"), BAD_FILES)
def test_every_config_error_names_the_file_and_the_key(
    tmp_path: Path, text: str, key: str, message: str
) -> None:
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(f)
    line = str(err.value)
    assert line.startswith(f"{f}: ") and key in line and message in line, line
    assert "\n" not in line


def test_every_number_has_a_range() -> None:
    numbers = {
        (section, f.name)
        for section, cls in _SECTIONS.items()
        for f in fields(cls)
        if str(f.type) in ("int", "float")
    }
    assert numbers == set(LIMITS)
    for (section, key), (low, high) in LIMITS.items():
        default = getattr(getattr(Config(), section), key)
        assert low <= default <= high, (section, key)
        assert parse_config({section: {key: low}}) and parse_config({section: {key: high}})
        for outside in (low - 1, high + 1, float("inf"), float("nan")):
            with pytest.raises(ConfigError, match=f"\\[{section}\\] {key}"):
                parse_config({section: {key: outside}})


@pytest.mark.parametrize(("text", "key", "message"), [
    ("[server]\nsnapshot_lifetime = inf\n", "[server] snapshot_lifetime", "finite"),
    ("[validation]\nbudget_seconds = nan\n", "[validation] budget_seconds", "finite"),
    ("[validation]\nmax_pool = 1e30\n", "[validation] max_pool", "out of range"),
])
def test_commands_refuse_bad_numbers_with_exit_2(
    tmp_path: Path, text: str, key: str, message: str
) -> None:
    f = tmp_path / "c.toml"
    f.write_text(text)
    for args in (["list"], ["refresh"], ["verify", "x.pem"]):
        r = subprocess.run([IDM, "--config", str(f), *args], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 2, (args, r.stderr)
        [line] = r.stderr.splitlines()
        assert line.startswith(f"idm: error: {f}: {key}: ") and message in line, line


def test_invalid_toml(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[revocation\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(f)
