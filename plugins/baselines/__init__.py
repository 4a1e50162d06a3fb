"""Baseline pruning methods, each a pruneframe plugin found through its own entry point.

* ``magnitude``: per-parameter L1/L2 norm of a unit's weights (the classic magnitude baseline).
* ``llm-pruner``: first/second-order Taylor importance from a backward pass (Ma et al., 2023).
* ``wanda-sp``: structured Wanda, |W| times input-feature norms (the FLAP paper's baseline).
* ``flap``: fluctuation metric with standardised global allocation and bias compensation (An et al., 2024).
* ``random``: seeded random scores, the floor every method must beat.

They use only the public contract (:mod:`pruneframe.pipeline.methods`), so the core never knows their names.
Importing this package does not import the methods; the entry points load each module on its own.
"""

from __future__ import annotations

from typing import Any

from pydantic import model_validator

from pruneframe.pipeline.methods import MethodConfig, Scope

__all__ = ["AllocationConfig"]


class AllocationConfig(MethodConfig):
    """A method config whose ``allocation`` is the core projector's ``scope`` under the papers' name.

    ``allocation="uniform"`` keeps the same fraction of every layer and kind (LLM-Pruner's and
    Wanda-sp's per-layer pruning); ``"global"`` ranks all units together (FLAP's adaptive structure).
    Give either ``allocation`` or ``scope``; both are accepted when they agree. Subclasses set the
    default by overriding the ``allocation`` field.
    """

    allocation: Scope = "global"

    @model_validator(mode="before")
    @classmethod
    def _scope_follows_allocation(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        allocation, scope = data.get("allocation"), data.get("scope")
        if allocation is not None and scope is not None and allocation != scope:
            raise ValueError(f"allocation={allocation!r} and scope={scope!r} disagree; they are the same setting, give one")
        value = allocation if allocation is not None else scope
        if value is None:
            value = cls.model_fields["allocation"].default
        return {**data, "allocation": value, "scope": value}
