"""Configuration parsing: defaults, types, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from idm.identity.config import Config, ConfigError, load_config, parse_config


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


@pytest.mark.parametrize(
    "data, message",
    [
        ({"nope": {}}, "unknown section"),
        ({"revocation": {"policy": "maybe"}}, "is not one of"),
        ({"revocation": {"connect_timeout": "3"}}, "expected a number"),
        ({"revocation": {"read_timeout": -1}}, "must not be negative"),
        ({"validation": {"colour": "red"}}, "unknown key"),
        ({"server": {"mapping": ["email", "shoe-size"]}}, "unknown rule"),
        ({"revocation": {"offline": "yes"}}, "expected true or false"),
    ],
)
def test_bad_values_are_config_errors(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(data)


def test_invalid_toml(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[revocation\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(f)
