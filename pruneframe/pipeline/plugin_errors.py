"""The errors of the plugin machinery: a plugin at fault, a name nobody registered, a model no adapter handles.

They import nothing of pruneframe, so the code that reports them (the input checks, the checkpoint
loader) needs neither the plugin host nor pluggy.
"""

from __future__ import annotations

import difflib

__all__ = ["PluginError", "UnknownNameError", "UnsupportedModelError", "did_you_mean"]


class PluginError(RuntimeError):
    """A plugin raised, or returned what the hook contract forbids; ``plugins`` names the plugin(s) at fault."""

    def __init__(self, message: str, plugins: tuple[str, ...]) -> None:
        super().__init__(message)
        self.plugins = plugins


class UnknownNameError(KeyError):
    """A method or evaluator name that no plugin registered; the message suggests close names."""

    def __str__(self) -> str:
        return str(self.args[0])


class UnsupportedModelError(NotImplementedError):
    """No installed plugin's architecture adapter handles the model; the message lists the supported classes."""


def did_you_mean(kind: str, name: str, known: list[str]) -> UnknownNameError:
    """The error for an unknown ``kind`` named ``name``: up to three close names from ``known``, and all of them."""
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    return UnknownNameError(f"unknown {kind} {name!r}{hint} (installed: {', '.join(sorted(known)) or 'none'})")
