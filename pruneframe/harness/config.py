"""What a comparison runs, as validated settings: model, methods, budgets, seeds, data and evaluators.

Everything here is identical across the runs of one comparison (that is what makes it fair); the
runner turns it into runtime state. Defaults follow the shared data folder, looked at when a run starts
(``resolved()``), never while settings are validated: calibration on WikiText-2
validation when ``$PRUNEFRAME_DATA_DIR`` (or ``../shared/data``) holds it, else on the offline
``embedded`` corpus; perplexity on every source available (WikiText-2 test, Moby-Dick's test half and the
embedded test half offline, plus C4 and PTB when the hub answers); zero-shot on the local JSONL tasks
found under ``<data dir>/zeroshot``.

The fields and text settings every command shares (dtype, device, budget numbers, seeds, calibration
and recovery text, :class:`InputError`) are :mod:`pruneframe.settings`', re-exported here.

Example (YAML or JSON)::

    model: smollm2-135m
    methods: [magnitude, random]            # omitted: every installed method
    method_configs: {magnitude: {norm: l1}}
    budgets: [0.8, 0.5]
    budget_kind: prunable
    seeds: [0]
    method_seeds: {random: [0, 1]}          # per-method seeds replace `seeds`
    calibration: {data: wikitext-2}
    recovery: [none, {name: distill, tokens: 65536}]   # every run is also evaluated after each recovery
    recovery_data: {data: wikitext-2}       # development text, checked disjoint from the evaluation text
    evaluation:
      perplexity: {sources: [wikitext-2, moby-dick, embedded], num_windows: 16, seq_len: 512}
      zeroshot: {limit: 100}
      speed: null                           # null switches an evaluator off
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pruneframe.pipeline.budget import BudgetKind, make_budget
from pruneframe.data.sources import data_dir
from pruneframe.harness.executors.options import ExecutorName, options_model
from pruneframe.settings.errors import InputError, explain
from pruneframe.settings.fields import BudgetNumber, Device, Dtype, Seed, budget_slug, checked_budget, normalise_methods
from pruneframe.settings.text import CalibrationSettings, RecoveryDataSettings, TextSettings, default_text_source
from pruneframe.util.paths import user_path

__all__ = [
    "InputError",
    "explain",
    "BudgetNumber",
    "Seed",
    "normalise_methods",
    "Dtype",
    "Device",
    "TextSettings",
    "CalibrationSettings",
    "RecoveryDataSettings",
    "EvalConfig",
    "CompareConfig",
    "default_text_source",
    "default_zeroshot_tasks",
    "default_evaluation",
    "checked_budget",
    "budget_slug",
]


def default_zeroshot_tasks() -> list[str]:
    """The names of the local JSONL tasks under ``<data dir>/zeroshot`` (empty when there are none)."""
    root = data_dir()
    folder = root / "zeroshot" if root is not None else None
    if folder is None or not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.jsonl"))


def default_evaluation() -> dict[str, dict[str, Any] | None]:
    """The evaluators a comparison runs when nothing else is said, with their default settings."""
    tasks = default_zeroshot_tasks()
    return {
        "perplexity": {},  # the evaluator's defaults: every available source, 64 windows of 512 tokens each
        "zeroshot": {"tasks": tasks, "limit": 200} if tasks else None,
        "size": {},
        "speed": {},
    }


def _merge_evaluation(value: dict[str, dict[str, Any] | None]) -> dict[str, dict[str, Any] | None]:
    """Overlay the user's per-evaluator settings on the defaults (``null`` switches one off)."""
    merged = default_evaluation()
    for name, settings in value.items():
        base = merged.get(name)
        if name == "zeroshot" and base is None and isinstance(settings, dict) and "tasks" not in settings:
            continue  # no local tasks on this machine and none named: zero-shot stays off
        merged[name] = {**base, **settings} if isinstance(base, dict) and isinstance(settings, dict) else settings
    return merged


class EvalConfig(BaseModel):
    """The model and evaluation protocol (what ``pruneframe eval`` reads from a config file).

    Attributes:
        model: ``smollm2-135m``, a local folder, a pruned checkpoint or a hub id.
        dtype: the dtype every model is loaded and evaluated in (``auto``: bfloat16 where the device runs it natively,
            else float32: :func:`pruneframe.util.devices.choose_dtype`).
        device: where every model is loaded, pruned and evaluated (``auto``: CUDA when present).
        evaluation: evaluator name -> its settings (validated by that evaluator's ``Config``), or
            ``null`` to switch it off; merged over :func:`default_evaluation` when the run starts
            (:meth:`resolved`), since the defaults depend on the data folder.
    """

    model_config = ConfigDict(extra="forbid")

    model: Annotated[str, Field(min_length=1)] = "smollm2-135m"
    dtype: Dtype = "auto"
    device: Device = "auto"
    evaluation: dict[str, dict[str, Any] | None] = Field(default_factory=dict)

    @field_validator("evaluation", mode="before")
    @classmethod
    def _none_is_the_defaults(cls, value: Any) -> Any:
        return {} if value is None else value

    def resolved(self) -> Self:
        """This config with the evaluation defaults of this machine's data folder merged in: what a run records."""
        return self.model_copy(update={"evaluation": _merge_evaluation(self.evaluation)})

    def enabled_evaluators(self) -> dict[str, dict[str, Any]]:
        """The evaluators that run, in order, with their settings (defaults merged in)."""
        return {name: dict(cfg) for name, cfg in _merge_evaluation(self.evaluation).items() if cfg is not None}


class CompareConfig(EvalConfig):
    """A head-to-head comparison: every method x budget x seed on one model, one protocol.

    Attributes:
        methods: method names (``None``: every installed method); a mapping name -> config is accepted
            and split into ``methods`` and ``method_configs``.
        method_configs: per-method settings, validated by each method's config model. ``seed`` is
            not allowed here: runs take it from ``seeds``.
        budgets: numbers read with ``budget_kind`` (keep-ratios in (0, 1], or parameter counts).
        budget_kind: ``prunable`` (default), ``total`` or ``params``.
        seeds: one run per seed (passed as the method config's ``seed``).
        method_seeds: per-method seeds replacing ``seeds`` for the methods listed (e.g. one seed for a
            deterministic method, several for one that depends on the calibration order).
        calibration: the calibration source (see :class:`CalibrationSettings`).
        recovery: recoveries every pruned model also goes through, each evaluated as its own row:
            ``none`` or a name (``distill``, ``lora``) or ``{name: distill, tokens: 65536, ...}`` with that
            recovery's settings. The unrecovered model is always evaluated.
        recovery_data: the recovery text (see :class:`RecoveryDataSettings`).
        recovery_methods: the methods whose runs go through ``recovery`` (``None``: every method).
        out: output folder (default ``results/compare-<model>``).
        executor: where the runs are computed: ``local`` (this process, the default), ``submitit`` (Slurm
            jobs) or ``ray`` (Ray tasks); see :mod:`pruneframe.harness.executors`.
        executor_options: the executor's settings (:mod:`pruneframe.harness.executors.options`).

    ``executor`` and ``executor_options`` say where the runs are computed, not what they compute: they are
    left out of the config's dump (:meth:`model_dump`), so neither a run's cache key nor the report
    depends on them.
    """

    methods: list[Annotated[str, Field(min_length=1)]] | None = None
    method_configs: dict[str, dict[str, Any]] = Field(default_factory=dict)
    budgets: Annotated[list[BudgetNumber], Field(min_length=1)] = Field(default_factory=lambda: [0.5])
    budget_kind: BudgetKind = "prunable"
    seeds: Annotated[list[Seed], Field(min_length=1)] = Field(default_factory=lambda: [0])
    method_seeds: dict[str, Annotated[list[Seed], Field(min_length=1)]] = Field(default_factory=dict)
    calibration: CalibrationSettings = Field(default_factory=CalibrationSettings)
    recovery: list[Annotated[str, Field(min_length=1)] | dict[str, Any]] = Field(default_factory=lambda: ["none"])
    recovery_data: RecoveryDataSettings = Field(default_factory=RecoveryDataSettings)
    recovery_methods: list[Annotated[str, Field(min_length=1)]] | None = None
    out: str | None = None
    executor: ExecutorName = Field("local", exclude=True)
    executor_options: dict[str, Any] = Field(default_factory=dict, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _methods_mapping(cls, data: Any) -> Any:
        return normalise_methods(data)

    @model_validator(mode="after")
    def _check(self) -> CompareConfig:
        for index, value in enumerate(self.budgets):
            checked_budget(value, self.budget_kind, f"budgets[{index}]")
        slugs = [budget_slug(b) for b in self.budget_objects()]
        if len(set(slugs)) != len(slugs):
            raise ValueError(f"budgets contain duplicates: {self.budgets}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds contain duplicates: {self.seeds}")
        for name, seeds in self.method_seeds.items():
            if self.methods is not None and name not in self.methods:
                raise ValueError(f"method_seeds has seeds for {name!r}, which is not among methods {self.methods}")
            if len(set(seeds)) != len(seeds):
                raise ValueError(f"method_seeds.{name} contains duplicates: {seeds}")
        for name in self.recovery_methods or []:
            if self.methods is not None and name not in self.methods:
                raise ValueError(f"recovery_methods names {name!r}, which is not among methods {self.methods}")
        for index, entry in enumerate(self.recovery):
            if isinstance(entry, dict) and not isinstance(entry.get("name"), str):
                raise ValueError(f"recovery[{index}] = {entry!r}: a mapping needs a 'name' (none, lora, distill, ...)")
        if self.methods is not None and len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods contain duplicates: {self.methods}")
        for name, cfg in self.method_configs.items():
            if self.methods is not None and name not in self.methods:
                raise ValueError(f"method_configs has settings for {name!r}, which is not among methods {self.methods}")
            if "seed" in cfg:
                raise ValueError(f"method_configs.{name}.seed: set seeds with 'seeds' (one run per seed)")
        options_model(self.executor, self.executor_options)
        return self

    def executor_settings(self) -> BaseModel:
        """``executor_options`` validated by the executor's own model (e.g. :class:`~pruneframe.harness.executors.options.SubmititOptions`)."""
        return options_model(self.executor, self.executor_options)

    def resolved(self) -> Self:
        """This config with its defaults found (evaluators, and text sources: :meth:`TextSettings.resolved`): what a run records."""
        return super().resolved().model_copy(update={"calibration": self.calibration.resolved(), "recovery_data": self.recovery_data.resolved()})

    def seeds_for(self, method: str) -> list[int]:
        """The seeds ``method`` runs with: ``method_seeds[method]`` when given, else ``seeds``."""
        return self.method_seeds.get(method, self.seeds)

    def budget_objects(self) -> list[Any]:
        """The budgets as typed budget objects (see :func:`pruneframe.pipeline.budget.make_budget`)."""
        return [make_budget(value, self.budget_kind) for value in self.budgets]

    def out_dir(self) -> Path:
        """``out``, or ``results/compare-<model name>``."""
        if self.out:
            return user_path(self.out)
        name = Path(self.model.rstrip("/")).name or "model"
        return Path("results") / f"compare-{re.sub(r'[^0-9A-Za-z_.-]+', '-', name)}"
