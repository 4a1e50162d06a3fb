"""A comparison prepared: what every run shares, validated and loaded once before the first run starts.

:func:`prepare` resolves the config's defaults, instantiates the methods, evaluators and recoveries,
loads the dense model and the calibration stream, checks the calibration and recovery text disjoint
from the evaluation text, resolves every budget and lists the runs. Any bad input raises
:class:`~pruneframe.settings.errors.InputError` before anything slow starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from pruneframe.data import check_disjoint
from pruneframe.evaluation.base import Evaluator
from pruneframe.harness.config import CompareConfig
from pruneframe.harness.inputs import build_evaluators, check_evaluators
from pruneframe.pipeline.budget import group_round_to, resolve
from pruneframe.pipeline.hidden_plan import hidden_plan
from pruneframe.pipeline.host import PluginHost
from pruneframe.pipeline.prune_report import StageRecord
from pruneframe.pipeline.recalibration import method_code_digest
from pruneframe.pipeline.vocab_method import trims_vocabulary
from pruneframe.pipeline.vocab_plan import vocabulary_plan
from pruneframe.recovery import Recovery, RecoveryStream, TeacherTargets
from pruneframe.settings.errors import InputError
from pruneframe.settings.fields import budget_slug
from pruneframe.settings.loading import calibration_stream, check_compute_device, load_dense
from pruneframe.settings.phases import input_phase
from pruneframe.settings.recovery import recovery_object, recovery_stream, recovery_text
from pruneframe.util.devices import choose_dtype, dtype_name, model_device, resolve_device
from pruneframe.util.log import Log, silent

__all__ = ["RunSpec", "Prepared", "prepare"]


@dataclass(frozen=True)
class RunSpec:
    """One cell of the comparison: a method with its validated config, a budget and a seed.

    ``code`` is the digest of the method's package; ``stages`` the stage implementations that may carry
    out its prune (the architecture's adapter and :meth:`~pruneframe.pipeline.host.PluginHost.stage_candidates`),
    as JSON, which the run's cache key covers.
    """

    method: str
    config: dict[str, Any]
    budget: Any
    seed: int
    code: str
    stages: dict[str, Any] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        """``<method>-<budget>-s<seed>``, the run's file name under ``runs/``."""
        return f"{self.method}-{budget_slug(self.budget)}-s{self.seed}"


@dataclass
class Prepared:
    """Runtime state shared by every run of a comparison (never part of a config).

    ``model`` is the dense model until it has been evaluated, then ``None`` (runs reload it from its
    files); ``device`` and ``dtype`` are what ``auto`` resolved to, ``dtype_reason`` why that dtype
    (:func:`pruneframe.util.devices.choose_dtype`). ``vocabulary_methods`` names the methods whose prune
    trims the vocabulary: their runs are evaluated with the rebuilt tokenizer and go through no recovery.
    """

    config: CompareConfig
    host: PluginHost
    model: torch.nn.Module | None
    tokenizer: Any
    device: str
    dtype: str
    dtype_reason: str
    model_stamp: dict[str, Any]
    evaluators: dict[str, Evaluator]
    evaluation_stamp: dict[str, Any]
    calibration: torch.Tensor
    calibration_stamp: dict[str, Any]
    budgets: dict[str, int] = field(default_factory=dict)
    units: dict[str, Any] = field(default_factory=dict)
    runs: list[RunSpec] = field(default_factory=list)
    recoveries: list[Recovery] = field(default_factory=list)
    streams: dict[str, RecoveryStream] = field(default_factory=dict)
    teachers: dict[str, TeacherTargets] = field(default_factory=dict)
    vocabulary_methods: frozenset[str] = frozenset()


def prepare(config: CompareConfig, host: PluginHost, log: Log = silent) -> Prepared:
    """Validate everything and load what every run shares; raises ``InputError`` on bad input.

    The prepared config names its default text sources (:meth:`CompareConfig.resolved`).
    """
    config = config.resolved()
    names = config.methods if config.methods is not None else sorted(host.methods())
    if not names:
        raise InputError("no pruning methods are installed (pruneframe plugins lists what loaded and what failed)")
    methods = {}
    for name in names:
        with input_phase(f"method {name!r}"):
            methods[name] = host.method(name, config.method_configs.get(name))
            check_compute_device(methods[name].config)
    vocabulary_methods = frozenset(name for name, method in methods.items() if trims_vocabulary(method))
    _check_vocabulary_recovery(config, vocabulary_methods, log)
    evaluators, evaluation_stamp, eval_sources = build_evaluators(host, config)
    with input_phase(f"device {config.device!r}"):
        choice = choose_dtype(config.dtype, resolve_device(config.device))
    log(f"dtype: {choice}")
    if choice.warning:
        log(f"warning: {choice.warning}")
    log(f"loading model {config.model} ({choice.name}, device {config.device})")
    model, tokenizer, model_stamp = load_dense(config.model, choice.name, config.device)
    check_evaluators(evaluators, tokenizer)
    tokens, calibration_stamp, calib_source = calibration_stream(config.calibration, tokenizer)
    for source in eval_sources:
        with input_phase("calibration and evaluation data must not overlap"):
            check_disjoint(calib_source, source)
    log(f"calibration: {calibration_stamp['tokens']:,} tokens of {calibration_stamp['origin']}")
    recoveries = [r for r in (recovery_object(spec, host) for spec in config.recovery) if r.trains]
    labels = [r.label() for r in recoveries]
    if len(set(labels)) != len(labels):
        raise InputError(f"recovery: two entries have the same name and token budget: {labels}")
    streams: dict[str, RecoveryStream] = {}
    if recoveries:
        recovery_source = recovery_text(config.recovery_data, eval_sources)
        for recovery in recoveries:
            with input_phase(f"recovery {recovery.name!r}"):
                recovery.check(model)
            streams[recovery.label()] = recovery_stream(recovery, recovery_source, tokenizer)
    prep = Prepared(
        config=config,
        host=host,
        model=model,
        tokenizer=tokenizer,
        device=str(model_device(model)),
        dtype=dtype_name(model),
        dtype_reason=choice.reason,
        model_stamp=model_stamp,
        evaluators=evaluators,
        evaluation_stamp=evaluation_stamp,
        calibration=tokens,
        calibration_stamp=calibration_stamp,
        recoveries=recoveries,
        streams=streams,
        vocabulary_methods=vocabulary_methods,
    )
    found: dict[str, StageRecord] = {}
    with input_phase(f"model {config.model!r}"):
        units = host.discover_units(model, found)
    architecture = found["architecture"].model_dump(mode="json")
    prep.units = {"architecture": units.architecture, "units": len(units), "prunable_params": units.prunable_params, "total_params": units.total_params}
    stages = {
        name: {
            "architecture": architecture,
            **{stage: [r.model_dump(mode="json") for r in records] for stage, records in host.stage_candidates(method).items()},
        }
        for name, method in methods.items()
    }
    for budget in config.budget_objects():
        for name, method in methods.items():
            with input_phase(f"budget {budget.label()!r} for method {name!r}"):
                total = budget.resolve(units) + units.nonprunable_params
                if name in vocabulary_methods:  # the tokens share the budget: the plan checks that it can be met
                    vocabulary_plan(method, model, units, tokenizer, total)
                    prep.budgets.setdefault(budget_slug(budget), budget.resolve(units))
                elif hidden_plan(method, model, units, total) is None:
                    prep.budgets[budget_slug(budget)] = resolve(budget, units, method.minimum(units), group_round_to(units, method.config.round_to))
                else:  # the hidden width sets the units' costs; the run's session checks its floor
                    prep.budgets.setdefault(budget_slug(budget), budget.resolve(units))
            for seed in config.seeds_for(name):
                settings = method.Config.model_validate({**method.config.model_dump(), "seed": seed})
                prep.runs.append(RunSpec(name, settings.model_dump(mode="json"), budget, seed, method_code_digest(method), stages[name]))
    return prep


def _check_vocabulary_recovery(config: CompareConfig, vocabulary_methods: frozenset[str], log: Log) -> None:
    """Refuse recovery named for a method that trims the vocabulary; note that the default (every method) skips them.

    Recovery streams and a distilling teacher's outputs are in the dense tokenizer's ids, which a trimmed
    vocabulary renumbers; recovering a trimmed model is ``pruneframe recover`` on its saved checkpoint.
    """
    if not vocabulary_methods or all((spec if isinstance(spec, str) else spec.get("name")) == "none" for spec in config.recovery):
        return
    named = sorted(vocabulary_methods & set(config.recovery_methods or []))
    if named:
        raise InputError(
            f"recovery_methods: {', '.join(map(repr, named))} {'trims' if len(named) == 1 else 'trim'} the vocabulary, and recovery in a "
            "comparison reads the dense tokenizer's ids; leave it out of recovery_methods (pruneframe recover heals a saved trimmed checkpoint)"
        )
    if config.recovery_methods is None:
        verb = "trims" if len(vocabulary_methods) == 1 else "trim"
        log(f"note: {', '.join(sorted(vocabulary_methods))} {verb} the vocabulary: no recovery for {'its' if verb == 'trims' else 'their'} runs")
