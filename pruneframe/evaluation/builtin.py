"""The built-in evaluators as a plugin: every concrete :class:`Evaluator` defined in ``pruneframe.evaluation``.

Registered like any third-party evaluator (through ``pruneframe_register_evaluators``), so the harness
finds perplexity, zero-shot, size and speed the same way it finds a plugin's own evaluator. The
package's modules are scanned rather than listed, so an evaluator added there is registered too.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable

import pruneframe.evaluation as _package
from pruneframe.evaluation.base import Evaluator
from pruneframe.pipeline.hookspecs import hookimpl

__all__ = ["builtin_evaluators", "pruneframe_register_evaluators"]


def builtin_evaluators() -> list[type[Evaluator]]:
    """The concrete, named Evaluator subclasses defined in the modules of ``pruneframe.evaluation``."""
    found: dict[str, type[Evaluator]] = {}
    for info in pkgutil.iter_modules(_package.__path__, prefix=f"{_package.__name__}."):
        if info.name == __name__:
            continue
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, Evaluator) and obj.__module__ == module.__name__ and not inspect.isabstract(obj) and isinstance(getattr(obj, "name", None), str):
                found.setdefault(obj.name, obj)
    return list(found.values())


@hookimpl
def pruneframe_register_evaluators(register: Callable[[type[Evaluator]], None]) -> None:
    """Register perplexity, zeroshot, size, speed (and any other evaluator defined in the package)."""
    for cls in builtin_evaluators():
        register(cls)
