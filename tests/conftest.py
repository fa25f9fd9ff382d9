"""Shared fixtures: an isolated environment per test, the inventory on both backends, and
PKIX-SSH built from source."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pkixssh import PkixsshBuild, PkixsshUnavailable, pkixssh_build, unavailable
from tests.postgres import PostgresServer, PostgresUnavailable
from tests.server.helpers import safe_folder

REQUIRE_POSTGRES = os.environ.get("IDM_REQUIRE_POSTGRES") == "1"

# Registered here, before any test module imports it by name: pytest rewrites a plugin's
# asserts only when it loads the module first (else PytestAssertRewriteWarning).
pytest_plugins = ["sample_ca_fixture"]


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test reads or writes the user's real configuration, inventory or agent."""
    home = tmp_path / "home"
    home.mkdir()
    for var, sub in (
        ("XDG_CONFIG_HOME", "config"),
        ("XDG_DATA_HOME", "data"),
        ("XDG_STATE_HOME", "state"),
        ("XDG_CACHE_HOME", "cache"),
    ):
        monkeypatch.setenv(var, str(home / sub))
    for var in ("IDM_DB", "IDM_CONFIG", "SSH_AUTH_SOCK", "SSH_AGENT_PID"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    base = Path(tempfile.mkdtemp(prefix="idm-pg-"))
    try:
        server = PostgresServer.start(base)
    except PostgresUnavailable as exc:
        shutil.rmtree(base, ignore_errors=True)
        if REQUIRE_POSTGRES:
            pytest.fail(f"PostgreSQL is required (IDM_REQUIRE_POSTGRES=1) but: {exc}")
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty PostgreSQL database for one test."""
    return postgres_server.create_database()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def inventory_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same inventory test on SQLite and on a real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'inventory.sqlite'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture(scope="session")
def pkixssh() -> PkixsshBuild:
    """PKIX-SSH built from tests/vendor into the test cache (tests/pkixssh.py)."""
    try:
        return pkixssh_build()
    except PkixsshUnavailable as exc:
        unavailable(f"PKIX-SSH unavailable: {exc}")


@pytest.fixture
def safe_tmp() -> Iterator[Path]:
    """Like tmp_path, but root-owned 0755 up to / (see helpers.safe_folder); removed after."""
    folder = safe_folder()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
