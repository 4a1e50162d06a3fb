"""Shared pytest configuration."""

from __future__ import annotations

import os

# --- hypothesis profiles ---------------------------------------------------------------------------
# Select with HYPOTHESIS_PROFILE=ci|dev (default dev). "ci" runs 300 examples per property.
from hypothesis import settings

settings.register_profile("ci", max_examples=300, deadline=None, derandomize=True, print_blob=True)
settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile("stress", max_examples=2000, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def pytest_report_header(config) -> str:
    """Show the active hypothesis profile in the pytest header."""
    return f"hypothesis profile: {settings.get_current_profile_name()} (set HYPOTHESIS_PROFILE=ci|dev)"


# --- end of hypothesis profiles --------------------------------------------------------------------
