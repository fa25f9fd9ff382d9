"""The `idm` command as a user meets it: installed entry point, errors, JSON, config."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from idm.identity.inventory.store import SCHEMA_REVISION

IDM = str(Path(sys.executable).with_name("idm"))


def idm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [IDM, *args], capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
    )


def test_version_and_help() -> None:
    r = idm("--version")
    assert r.returncode == 0 and r.stdout.startswith("idm, version ")
    r = idm("--help")
    assert r.returncode == 0
    for name in ("list", "show", "events", "db"):
        assert name in r.stdout


@pytest.mark.parametrize("command", ["list", "show", "events", "db", "db upgrade"])
def test_help_on_every_command(command: str) -> None:
    r = idm(*command.split(), "--help")
    assert r.returncode == 0 and "Usage:" in r.stdout


def test_list_json_on_empty_inventory_is_valid_json(isolated_home: Path) -> None:
    r = idm("list", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"tokens": [], "certificates": []}
    # created on first use, in the XDG data folder
    assert (isolated_home / "data" / "idm" / "inventory.sqlite").exists()


def test_list_json_on_postgresql(postgres_url: str) -> None:
    # A named database without an inventory is refused (a typo must not start an empty one)
    r = idm("--db", postgres_url, "list", "--json")
    assert r.returncode == 2 and "no inventory at postgresql+psycopg://" in r.stderr
    assert idm("--db", postgres_url, "db", "upgrade").returncode == 0
    r = idm("--db", postgres_url, "list", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"tokens": [], "certificates": []}


def test_a_mistyped_db_is_refused_and_not_created(tmp_path: Path) -> None:
    real = tmp_path / "inventory.sqlite"
    assert idm("--db", f"sqlite:///{real}", "db", "upgrade").returncode == 0
    typo = tmp_path / "inventroy.sqlite"
    for command in (["list"], ["events"], ["show", "0123456789abcdef"], ["forget", "01234567"],
                    ["krl", "--output", str(tmp_path / "krl")]):
        r = idm("--db", f"sqlite:///{typo}", *command)
        assert r.returncode == 2, command
        [line] = r.stderr.strip().splitlines()
        assert line.startswith(f"idm: error: no inventory at {typo}: check --db"), line
        assert "`idm db upgrade`" in line
    r = idm("list", env={"IDM_DB": f"sqlite:///{typo}"})
    assert r.returncode == 2 and "no inventory at" in r.stderr
    assert not typo.exists()  # nothing was created
    assert idm("--db", f"sqlite:///{real}", "list").returncode == 0


@pytest.mark.parametrize(
    "url, message",
    [
        ("not a url", "invalid database URL"),
        ("mysql://x/y", "unsupported database 'mysql'"),
        ("postgresql+nosuchdriver://u@127.0.0.1/x", "cannot use database URL"),
        ("postgresql+psycopg://u:secret@127.0.0.1:1/x", "cannot open the inventory"),
        ("sqlite:////proc/no-such/inv.sqlite", "no inventory at /proc/no-such/inv.sqlite"),
        ("sqlite:////etc/hostname", "file is not a database"),
    ],
)
def test_malformed_db_url_is_one_clear_line_and_exit_2(url: str, message: str) -> None:
    r = idm("--db", url, "list")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("idm: error: ") and message in lines[0]
    assert "Traceback" not in r.stderr and "secret" not in r.stderr


def test_db_upgrade_in_an_uncreatable_folder_is_one_line() -> None:
    r = idm("--db", "sqlite:////proc/no-such/inv.sqlite", "db", "upgrade")
    assert r.returncode == 2
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("idm: error: cannot create the inventory's folder /proc/no-such")


def test_idm_db_environment_variable(tmp_path: Path) -> None:
    db = tmp_path / "env.sqlite"
    r = idm("db", "upgrade", "--json", env={"IDM_DB": f"sqlite:///{db}"})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["to"] == SCHEMA_REVISION and db.exists()


def test_traceback_only_with_verbose(tmp_path: Path) -> None:
    bad = tmp_path / "config.toml"
    bad.write_text("[revocation]\npolicy = 'sometimes'\n")
    r = idm("--config", str(bad), "list")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "policy: 'sometimes' is not one of" in r.stderr
    r = idm("-v", "--config", str(bad), "list")
    assert r.returncode == 2 and "Traceback" in r.stderr


def test_config_file_and_idm_config(tmp_path: Path) -> None:
    cfg = tmp_path / "idm.toml"
    cfg.write_text(f'db = "sqlite:///{tmp_path / "from-config.sqlite"}"\n')
    r = idm("db", "upgrade", env={"IDM_CONFIG": str(cfg)})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "from-config.sqlite").exists()
    r = idm("--config", str(tmp_path / "missing.toml"), "list")
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_show_unknown_and_events_json(isolated_home: Path) -> None:
    r = idm("show", "0123456789abcdef")
    assert r.returncode == 2 and "no certificate 0123456789abcdef" in r.stderr
    r = idm("events", "--json")
    assert r.returncode == 0 and r.stdout == ""


@pytest.mark.parametrize("command", ["show", "events --certificate"])
@pytest.mark.parametrize("value", ["garbage", "0123456789abcdef"])
def test_a_bad_fingerprint_is_a_user_error_everywhere(isolated_home: Path, command: str,
                                                      value: str) -> None:
    idm("db", "upgrade")
    r = idm(*command.split(), value)
    assert r.returncode == 2, r.stderr
    [line] = r.stderr.splitlines()
    assert line.startswith("idm: error: ") and "run with -v" not in line


@click.command("exit-three")
@click.pass_context
def exit_three(ctx: click.Context) -> None:
    """A command that ends with ctx.exit(3)."""
    ctx.exit(3)


def test_exit_code_of_ctx_exit_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    from idm.cli import main

    monkeypatch.setitem(main.COMMANDS, "exit-three", f"{__name__}:exit_three")
    with pytest.raises(SystemExit) as exc:
        main.run(["exit-three"])
    assert exc.value.code == 3


def test_explicit_config_is_checked_even_when_db_is_given(tmp_path: Path) -> None:
    r = idm("--config", str(tmp_path / "nope.toml"), "--db", f"sqlite:///{tmp_path}/i.sqlite",
            "list")
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_unknown_status_is_refused() -> None:
    r = idm("list", "--status", "lost")
    assert r.returncode == 2 and "'lost' is not one of" in r.stderr


def test_authorized_keys_after_global_options() -> None:
    from tests.server.helpers import safe_folder

    folder = safe_folder()  # the helper refuses a configuration below /tmp (StrictModes)
    cfg = folder / "c.toml"
    cfg.write_text(f'[server]\nsnapshot = "{folder / "missing.sqlite"}"\n')
    r = idm("--config", str(cfg), "authorized-keys", "alice")
    shutil.rmtree(folder)
    assert r.returncode == 1 and r.stdout == ""
    assert "missing.sqlite is missing" in r.stderr
