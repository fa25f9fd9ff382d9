"""Fixtures for the server tests: SoftHSM2 tokens (the cards of card-replacement tests), and
a folder whose files the sshd helper's StrictModes check accepts."""

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.helpers import safe_folder
from tests.softhsm import softhsm  # noqa: F401  (fixture re-export)


@pytest.fixture
def safe_tmp() -> Iterator[Path]:
    """Like tmp_path, but root-owned 0755 up to / (see helpers.safe_folder); removed after."""
    folder = safe_folder()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
