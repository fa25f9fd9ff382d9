"""Fixtures for the server tests: SoftHSM2 tokens (the cards of card-replacement tests)."""

from tests.softhsm import softhsm  # noqa: F401  (fixture re-export)
