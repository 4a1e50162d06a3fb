"""Bad input, and how a validation error reads in one line."""

from __future__ import annotations

from pydantic import ValidationError

__all__ = ["InputError", "explain"]


class InputError(ValueError):
    """Bad user input (config, names, data sources, budgets); the CLI prints it and exits with 2."""


def explain(exc: BaseException) -> str:
    """A one-line-per-problem message for ``exc``; pydantic errors as ``field.path: message``."""
    if isinstance(exc, ValidationError):
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"])
            message = error["msg"].replace("Value error, ", "")
            problems.append(f"{where}: {message}" if where else message)
        return f"invalid {exc.title} settings: " + "; ".join(problems)
    return str(exc)
