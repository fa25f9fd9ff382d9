"""idm's configuration: one TOML file, read into typed sections.

Where it is read from, first match wins: the ``--config`` option, the ``IDM_CONFIG``
environment variable, then ``$XDG_CONFIG_HOME/idm/config.toml``. A missing default file is
an empty configuration; a missing file that was named explicitly is an error.
docs/configuration.md documents every key.

Only the standard library (and idm's stdlib-only file reader) is imported here: the sshd
helper reads this file too. Every number has a range (`LIMITS`); every error names the
file and the key.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from idm.validator.inputfile import CONFIG_MAX_BYTES, InputFileError, read_input_file
from idm.validator.policy import DEFAULT_CURVES, Policy, PolicyError  # standard library only

SOFTHSM2_MODULE = "/usr/lib/softhsm/libsofthsm2.so"

OID_CLIENT_AUTH = "1.3.6.1.5.5.7.3.2"
OID_SECURE_SHELL_CLIENT = "1.3.6.1.5.5.7.3.21"
OID_ANY_EXTENDED_KEY_USAGE = "2.5.29.37.0"

REVOCATION_POLICIES = ("require", "hard-fail", "soft-fail", "off")
PURPOSES = ("ssh-client", "any")
MAPPING_RULES = ("email", "upn", "cn", "principals")


class ConfigError(ValueError):
    """The configuration file is unreadable or holds a value idm cannot use."""


def xdg_dir(variable: str, fallback: str) -> Path:
    """An XDG base directory ($XDG_CONFIG_HOME and friends), without importing platformdirs."""
    value = os.environ.get(variable)
    if value and os.path.isabs(value):
        return Path(value)
    return Path.home() / fallback


def default_config_path() -> Path:
    return xdg_dir("XDG_CONFIG_HOME", ".config") / "idm" / "config.toml"


def default_data_dir() -> Path:
    return xdg_dir("XDG_DATA_HOME", ".local/share") / "idm"


def default_state_dir() -> Path:
    return xdg_dir("XDG_STATE_HOME", ".local/state") / "idm"


def _default_providers() -> list[str]:
    return [SOFTHSM2_MODULE] if os.path.exists(SOFTHSM2_MODULE) else []


@dataclass
class ValidationSettings:
    """[validation]: trust anchors and what a certificate must be good for."""

    ca: list[Path] = field(default_factory=list)
    untrusted: list[Path] = field(default_factory=list)
    purpose: str = "ssh-client"
    client_ekus: list[str] = field(
        default_factory=lambda: [
            OID_CLIENT_AUTH,
            OID_SECURE_SHELL_CLIENT,
            OID_ANY_EXTENDED_KEY_USAGE,
        ]
    )
    budget_seconds: float = 5.0
    time_limit: float = 30.0
    max_intermediates: int = 8
    max_pool: int = 64
    min_rsa_bits: int = 2048
    curves: list[str] = field(default_factory=lambda: list(DEFAULT_CURVES))
    allow_dsa: bool = False
    allow_sha1: bool = False
    expiry_warning_days: int = 30


@dataclass
class RevocationSettings:
    """[revocation]: where status comes from and what happens when it cannot be had."""

    policy: str = "hard-fail"
    crl: list[Path] = field(default_factory=list)
    ocsp_url: str | None = None
    connect_timeout: float = 3.0
    read_timeout: float = 10.0
    fetch_timeout: float = 30.0
    crl_max_bytes: int = 100 * 1024 * 1024
    ocsp_max_bytes: int = 64 * 1024
    ocsp_max_age: int = 86400
    offline: bool = False


@dataclass
class TokenSettings:
    """[tokens]: which PKCS#11 modules to load."""

    providers: list[str] = field(default_factory=_default_providers)
    pin_cache: int = 300


@dataclass
class AgentSettings:
    """[agent]: sockets and what to offer."""

    socket: Path | None = None
    pkix_socket: Path | None = None
    only: list[str] = field(default_factory=list)
    allow_remote_pkcs11: bool = False


@dataclass
class ServerSettings:
    """[server]: the sshd helper's snapshot and certificate-to-user mapping."""

    snapshot: Path = field(default_factory=lambda: default_state_dir() / "snapshot.sqlite")
    snapshot_lifetime: int = 3600
    mapping: list[str] = field(default_factory=lambda: ["principals", "email", "upn", "cn"])
    principals_dir: Path | None = None


@dataclass
class Config:
    """The whole configuration; every section has working defaults."""

    path: Path | None = None
    db: str | None = None
    validation: ValidationSettings = field(default_factory=ValidationSettings)
    revocation: RevocationSettings = field(default_factory=RevocationSettings)
    tokens: TokenSettings = field(default_factory=TokenSettings)
    agent: AgentSettings = field(default_factory=AgentSettings)
    server: ServerSettings = field(default_factory=ServerSettings)


_SECTIONS: dict[str, type] = {
    "validation": ValidationSettings,
    "revocation": RevocationSettings,
    "tokens": TokenSettings,
    "agent": AgentSettings,
    "server": ServerSettings,
}

_DAY = 86400
# The accepted range of every number, (section, key) -> (lowest, highest); inclusive.
# Documented in docs/configuration.md; a test checks that every number has one.
LIMITS: dict[tuple[str, str], tuple[float, float]] = {
    ("validation", "budget_seconds"): (0.1, 600),
    ("validation", "time_limit"): (0.1, 3600),
    ("validation", "max_intermediates"): (0, 32),
    ("validation", "max_pool"): (1, 4096),
    ("validation", "min_rsa_bits"): (1024, 16384),
    ("validation", "expiry_warning_days"): (0, 3650),
    ("revocation", "connect_timeout"): (0.1, 300),
    ("revocation", "read_timeout"): (0.1, 300),
    ("revocation", "fetch_timeout"): (0.1, 3600),
    ("revocation", "crl_max_bytes"): (1024, 2 << 30),
    ("revocation", "ocsp_max_bytes"): (1024, 16 << 20),
    ("revocation", "ocsp_max_age"): (60, 366 * _DAY),
    ("tokens", "pin_cache"): (0, 7 * _DAY),
    ("server", "snapshot_lifetime"): (60, 7 * _DAY),
}


def _number_text(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _coerce(section: str, key: str, annotation: str, value: Any, base: Path) -> Any:
    where = f"[{section}] {key}"

    def path(v: Any) -> Path:
        if not isinstance(v, str) or not v:
            raise ConfigError(f"{where}: expected a path string, got {v!r}")
        p = Path(v).expanduser()
        return p if p.is_absolute() else base / p

    if annotation == "list[Path]":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list of paths")
        return [path(v) for v in value]
    if annotation in ("Path", "Path | None"):
        return path(value)
    if annotation == "list[str]":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings")
        return list(value)
    if annotation in ("str", "str | None"):
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if annotation == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        if annotation == "int" and not float(value).is_integer():
            raise ConfigError(f"{where}: expected a whole number, got {value!r}")
        low, high = LIMITS[(section, key)]
        if not low <= value <= high:
            raise ConfigError(
                f"{where}: {value!r} is out of range (from {_number_text(low)} "
                f"to {_number_text(high)})"
            )
        return int(value) if annotation == "int" else float(value)
    raise ConfigError(f"{where}: unsupported setting")  # pragma: no cover - schema bug


def _check(config: Config) -> None:
    if config.revocation.policy not in REVOCATION_POLICIES:
        raise ConfigError(
            f"[revocation] policy: {config.revocation.policy!r} is not one of "
            + ", ".join(REVOCATION_POLICIES)
        )
    if config.validation.purpose not in PURPOSES:
        raise ConfigError(
            f"[validation] purpose: {config.validation.purpose!r} is not one of "
            + ", ".join(PURPOSES)
        )
    try:  # the policy's own check of its curve names
        Policy(curves=tuple(config.validation.curves))
    except PolicyError as exc:
        raise ConfigError(f"[validation] curves: {exc}") from None
    unknown = [r for r in config.server.mapping if r not in MAPPING_RULES]
    if unknown:
        raise ConfigError(
            f"[server] mapping: unknown rule {unknown[0]!r} (rules: {', '.join(MAPPING_RULES)})"
        )


def parse_config(data: dict[str, Any], path: Path | None = None) -> Config:
    """Build a Config from parsed TOML; relative paths are relative to the file's folder.

    Every error names the key, and the file when ``path`` is given."""
    try:
        return _parse(data, path)
    except ConfigError as exc:
        if path is None:
            raise
        raise ConfigError(f"{path}: {exc}") from None


def _parse(data: dict[str, Any], path: Path | None) -> Config:
    base = path.parent if path else Path.cwd()
    config = Config(path=path)
    for name, value in data.items():
        if name == "db":
            if not isinstance(value, str):
                raise ConfigError("db: expected a database URL string")
            config.db = value
            continue
        cls = _SECTIONS.get(name)
        if cls is None:
            raise ConfigError(f"unknown section or key {name!r}")
        if not isinstance(value, dict):
            raise ConfigError(f"[{name}] must be a table")
        section = getattr(config, name)
        known = {f.name: f for f in fields(cls)}
        for key, raw in value.items():
            f = known.get(key)
            if f is None:
                raise ConfigError(f"[{name}] unknown key {key!r}")
            setattr(section, key, _coerce(name, key, str(f.type), raw, base))
    _check(config)
    return config


def load_config(
    explicit: str | os.PathLike[str] | None = None,
    check: Callable[[str, os.stat_result], None] | None = None,
) -> Config:
    """Read the configuration (see the module docstring for where from).

    The file must be a regular file of at most 1 MiB; ``check`` (the sshd helper's
    ownership and mode rules) is called with the opened file's stat before it is read."""
    named = explicit or os.environ.get("IDM_CONFIG")
    path = Path(named).expanduser() if named else default_config_path()
    try:
        raw = read_input_file(path, "configuration file", CONFIG_MAX_BYTES, check)
    except InputFileError as exc:
        if not exc.missing:
            raise ConfigError(str(exc)) from None
        if named:
            raise ConfigError(f"configuration file {path} does not exist") from None
        return Config()
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(data, path)
