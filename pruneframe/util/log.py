"""How long steps report what they are doing: a log is a function that takes one stage message."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Log", "silent"]

#: A stage-message sink: called with one line (no newline) per stage.
Log = Callable[[str], None]


def silent(message: str) -> None:
    """A log that says nothing."""
