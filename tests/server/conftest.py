"""Fixtures for the server tests: SoftHSM2 tokens (the cards of card-replacement tests).
`safe_tmp` (a folder the sshd helper's StrictModes accept) is in tests/conftest.py."""

from tests.softhsm import softhsm  # noqa: F401  (fixture re-export)

