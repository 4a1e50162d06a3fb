"""The typed fields the commands' settings share: dtype, device, budget numbers and seeds, and the budget checks."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field, ValidationError

from pruneframe.pipeline.budget import BudgetKind, make_budget
from pruneframe.pipeline.methods import Seed, not_a_boolean
from pruneframe.util.devices import LoadDtype

__all__ = ["Dtype", "Device", "BudgetNumber", "Seed", "normalise_methods", "checked_budget", "budget_slug"]

#: ``auto`` or a dtype name or alias (``bf16``), stored under its canonical name (see :data:`pruneframe.util.devices.DTYPES`).
Dtype = LoadDtype
#: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (whether the machine has it is checked when the model loads).
Device = Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")]


#: A budget number: a keep-ratio or a parameter count (a boolean is not one).
BudgetNumber = Annotated[float | int, BeforeValidator(not_a_boolean)]


def normalise_methods(data: Any) -> Any:
    """Split a ``methods`` mapping (name -> settings) into ``methods`` (names) and ``method_configs``.

    Values of the wrong type are passed on as they are, for the settings model to name.
    """
    if not (isinstance(data, dict) and isinstance(data.get("methods"), dict)):
        return data
    mapping = data["methods"]
    configs = {name: {} if cfg is None else cfg for name, cfg in mapping.items()}
    given = data.get("method_configs")
    if given is not None and not isinstance(given, dict):
        return {**data, "methods": list(mapping)}
    return {**data, "methods": list(mapping), "method_configs": {**configs, **(given or {})}}


def checked_budget(value: float | int, kind: BudgetKind, where: str) -> Any:
    """The budget object for ``value`` read as ``kind``; a ``ValueError`` naming ``where`` when it is not one."""
    try:
        return make_budget(value, kind)
    except (ValueError, ValidationError) as exc:
        msg = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
        raise ValueError(f"{where} = {value!r} (kind {kind!r}): {msg}") from None


def budget_slug(budget: Any) -> str:
    """The budget's part of a run id: ``0.5`` for keep-ratios, the parameter count for ``params``."""
    keep = getattr(budget, "keep", None)
    return f"{keep:g}" if keep is not None else str(budget.params)
