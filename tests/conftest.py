"""Shared test set-up. The libraries' deprecations are errors here (the rules: ftlearn.compat)."""

from ftlearn.compat import STRICT_WARNINGS


def pytest_configure(config) -> None:
    """Add ftlearn.compat's strict warning rules to pytest's `filterwarnings`, in their order."""
    for rule in STRICT_WARNINGS:  # after pyproject's lines: a later line wins
        config.addinivalue_line("filterwarnings", rule.ini())
