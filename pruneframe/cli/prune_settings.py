"""What ``pruneframe prune`` runs, as validated settings: one model, method, budget and seed, and an optional recovery.

Validating reads nothing from disk: the default calibration and recovery texts are named when the run
starts (:meth:`~pruneframe.settings.text.TextSettings.resolved`), and the recorded calibration stamp
carries the resolved name.
"""

from __future__ import annotations

import argparse
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pruneframe.pipeline.budget import BudgetKind
from pruneframe.cli.common import flag_settings, recovery_flag_settings, validated_settings
from pruneframe.settings.errors import InputError
from pruneframe.settings.fields import BudgetNumber, Device, Dtype, Seed, checked_budget
from pruneframe.settings.text import CalibrationSettings, RecoveryDataSettings

__all__ = ["PruneConfig", "prune_config"]


class PruneConfig(BaseModel):
    """One prune, and optionally one recovery after it.

    Attributes:
        model: ``smollm2-135m``, a local folder, a pruned checkpoint or a hub id.
        dtype: the dtype the model is loaded and pruned in (``auto``, a name or an alias such as ``bf16``).
        device: where the model is loaded and pruned (``auto``: CUDA when present).
        method: the method's registered name.
        method_settings: the method's settings (validated by its config model); the seed is ``seed``.
        budget: a keep-ratio in (0, 1], or a parameter count with ``budget_kind: params``.
        budget_kind: ``prunable`` (default), ``total`` or ``params``.
        seed: passed to the method as its config's ``seed``.
        calibration: the calibration text (``data`` unset: the default source, named when the run starts).
        recovery: a recovery's registered name (``distill``, ``lora``, ``none``), or ``None`` for no recovery.
        recovery_settings: the recovery's settings (validated by its config model).
        recovery_data: the recovery text (``data`` unset: the default development text).
        out: the checkpoint folder to write.
    """

    model_config = ConfigDict(extra="forbid")

    model: Annotated[str, Field(min_length=1)] = "smollm2-135m"
    dtype: Dtype = "auto"
    device: Device = "auto"
    method: Annotated[str, Field(min_length=1)]
    method_settings: dict[str, Any] = Field(default_factory=dict)
    budget: BudgetNumber
    budget_kind: BudgetKind = "prunable"
    seed: Seed = 0
    calibration: CalibrationSettings = Field(default_factory=CalibrationSettings)
    recovery: Annotated[str, Field(min_length=1)] | None = None
    recovery_settings: dict[str, Any] = Field(default_factory=dict)
    recovery_data: RecoveryDataSettings = Field(default_factory=RecoveryDataSettings)
    out: Annotated[str, Field(min_length=1)]

    @model_validator(mode="after")
    def _check(self) -> PruneConfig:
        checked_budget(self.budget, self.budget_kind, "budget")
        if "seed" in self.method_settings:
            raise ValueError("method_settings.seed: set the seed with 'seed' (--seed)")
        if self.recovery is None and (self.recovery_settings or self.recovery_data.model_fields_set):
            raise ValueError("recovery_settings and recovery_data need a recovery (--recover NAME)")
        return self

    def budget_object(self) -> Any:
        """The budget as a typed budget object (see :func:`pruneframe.pipeline.budget.make_budget`)."""
        return checked_budget(self.budget, self.budget_kind, "budget")

    def method_config(self) -> dict[str, Any]:
        """The method's settings with the run's seed."""
        return {**self.method_settings, "seed": self.seed}


def prune_config(args: argparse.Namespace) -> PruneConfig:
    """The validated prune settings from the command's flags (one value each for method, budget and seed)."""
    for flag, values in (("--method", args.methods), ("--budget", args.budgets), ("--seed", args.seeds or [0])):
        if len(values) != 1:
            raise InputError(f"{flag}: prune takes exactly one value, got {values} (pruneframe compare runs several)")
    name = args.methods[0]
    settings: dict[str, Any] = {}
    for config_name, values in args.method_configs or []:
        if config_name not in (None, name):
            raise InputError(f"--method-config is for {config_name!r} but the method is {name!r}")
        settings.update(values)
    recovery, recovery_settings, recovery_data = recovery_flag_settings(args)
    flags = {k: v for k, v in flag_settings(args).items() if k in ("model", "dtype", "device", "budget_kind", "calibration", "out")}
    flags.update(
        method=name,
        method_settings=settings,
        budget=args.budgets[0],
        seed=(args.seeds or [0])[0],
        recovery=recovery,
        recovery_settings=recovery_settings,
        recovery_data=recovery_data,
    )
    return validated_settings(args, PruneConfig, flags)
