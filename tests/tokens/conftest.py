"""Fixtures shared by the token tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from idm.cli import main


@pytest.fixture
def idm(tmp_path: Path) -> Callable[..., tuple[int, str, str]]:
    """Run `idm ARGS` in-process on a fresh SQLite inventory: (exit code, stdout, stderr).
    The inventory URL is `idm.db`."""
    db = f"sqlite:///{tmp_path / 'inventory.sqlite'}"

    def run(*args: str) -> tuple[int, str, str]:
        result = CliRunner().invoke(main.cli, ["--db", db, *args])
        return result.exit_code, result.stdout, result.stderr

    run.db = db  # type: ignore[attr-defined]
    return run
