"""Run a comparison: prepare once (model, data, one calibration stream, budgets), then dense + every run.

:func:`compare` is the whole flow; :func:`prepare` raises
:class:`~pruneframe.harness.config.InputError` for any bad input before the first run starts. A run
that fails later is recorded as failed (never cached) and the others go on.

One copy of the weights: the dense model is evaluated once and released; every run loads the dense
weights afresh from their (memory-mapped) files, prunes that copy in place through a
:class:`~pruneframe.pipeline.session.PruneSession`, and evaluates it. Only evaluators that measure the dense
model next to each pruned one (``pairs_with_dense``, e.g. the paired speed timings) get a second
copy, loaded from the files after the prune.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from pruneframe.util.io import write_json_atomic
from pruneframe.toolkit.memory import release_unused_memory
from pruneframe.pipeline.budget import group_round_to, resolve
from pruneframe.pipeline.calibration import CalibrationData
from pruneframe.checkpoint import software_versions
from pruneframe.data import check_disjoint
from pruneframe.util.devices import choose_dtype, dtype_name, model_device, resolve_device
from pruneframe.evaluation.base import EvalContext, Evaluator
from pruneframe.harness.cache import cache_key, code_identity, load_cached, package_digest
from pruneframe.harness.config import CompareConfig, InputError, budget_slug
from pruneframe.harness.inputs import build_evaluators, calibration_stream, check_compute_device, check_evaluators, input_phase, load_dense
from pruneframe.harness.recovery_inputs import recovery_object, recovery_stream, recovery_text
from pruneframe.harness.report import write_results
from pruneframe.pipeline.hidden_plan import hidden_plan
from pruneframe.pipeline.host import PluginHost
from pruneframe.pipeline.recalibration import method_code_digest
from pruneframe.models import load_model
from pruneframe.recovery import Recovery, RecoveryStream, TeacherTargets, recover
from pruneframe.recovery.teacher import load_or_compute_teacher
from pruneframe.pipeline.prune_report import StageRecord
from pruneframe.pipeline.session import PruneSession

__all__ = [
    "Log",
    "EVAL_SEED",
    "RunSpec",
    "Prepared",
    "CompareOutcome",
    "evaluate_model",
    "prepare",
    "run_dense",
    "run_pruned",
    "run_cell",
    "prepare_teachers",
    "compare",
]

Log = Callable[[str], None]

#: Seed of every evaluation (speed prompts, lm-eval sampling): fixed, so method seeds never change the protocol.
EVAL_SEED = 0


def _silent(message: str) -> None:
    """A log that says nothing."""


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
    (:func:`pruneframe.util.devices.choose_dtype`).
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


@dataclass
class CompareOutcome:
    """What :func:`compare` produced: the records and the files written."""

    out: Path
    dense: dict[str, Any]
    runs: list[dict[str, Any]]
    files: dict[str, Path]
    computed: list[str] = field(default_factory=list)

    @property
    def failed(self) -> dict[str, str]:
        """Run id -> error of every run that failed (they are recomputed on the next invocation)."""
        return {r["run_id"]: r["error"] for r in self.runs if r.get("status") == "failed"}


def evaluate_model(
    model: torch.nn.Module, tokenizer: Any, evaluators: dict[str, Evaluator], context: EvalContext, log: Log, label: str
) -> tuple[dict[str, Any], dict[str, float]]:
    """Run every evaluator on ``model``; return results by evaluator name and wall seconds by name."""
    results: dict[str, Any] = {}
    walls: dict[str, float] = {}
    for name, evaluator in evaluators.items():
        log(f"[{label}] evaluating {name}")
        start = time.perf_counter()
        results[name] = evaluator.evaluate(model, tokenizer, context)
        walls[name] = time.perf_counter() - start
    return results, walls


def prepare(config: CompareConfig, host: PluginHost, log: Log = _silent) -> Prepared:
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
                if hidden_plan(method, model, units, budget.resolve(units) + units.nonprunable_params) is None:
                    prep.budgets[budget_slug(budget)] = resolve(budget, units, method.minimum(units), group_round_to(units, method.config.round_to))
                else:  # the hidden width sets the units' costs; the run's session checks its floor
                    prep.budgets.setdefault(budget_slug(budget), budget.resolve(units))
            for seed in config.seeds_for(name):
                settings = method.Config.model_validate({**method.config.model_dump(), "seed": seed})
                prep.runs.append(RunSpec(name, settings.model_dump(mode="json"), budget, seed, method_code_digest(method), stages[name]))
    return prep


def _base_fields(prep: Prepared) -> dict[str, Any]:
    return {
        "model": prep.model_stamp,
        "dtype": prep.dtype,
        "dtype_reason": prep.dtype_reason,
        "device": torch.device(prep.device).type,
        "evaluation": prep.evaluation_stamp,
        "eval_seed": EVAL_SEED,
        "code": code_identity(),
    }


def _finish(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    record.update(status="ok", software=software_versions(), finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    write_json_atomic(path, record)
    return record


def run_dense(prep: Prepared, runs_dir: Path, progress: bool, log: Log) -> tuple[dict[str, Any], bool]:
    """The dense model's evaluation (cached like a run); returns ``(record, computed)``."""
    fields = {"kind": "dense", **_base_fields(prep)}
    key, path = cache_key(fields), runs_dir / "dense.json"
    cached = load_cached(path, key)
    if cached is not None:
        log("[dense] cached")
        return cached, False
    if prep.model is None:
        raise RuntimeError("the dense model was already released; run_dense comes before the runs")
    context = EvalContext(device=prep.device, dtype=prep.dtype, progress=progress, seed=EVAL_SEED)
    results, walls = evaluate_model(prep.model, prep.tokenizer, prep.evaluators, context, log, "dense")
    record = {"run_id": "dense", "kind": "dense", "cache_key": key, "protocol": fields, "eval": results, "eval_wall_s": walls}
    return _finish(path, record), True


def _pruned_fields(prep: Prepared, spec: RunSpec) -> dict[str, Any]:
    return {
        "kind": "pruned",
        **_base_fields(prep),
        "method": {"name": spec.method, "config": spec.config, "code": spec.code},
        "stages": spec.stages,
        "budget": {**spec.budget.model_dump(mode="json"), "label": spec.budget.label()},
        "seed": spec.seed,
        "calibration": prep.calibration_stamp,
    }


def _recovered_fields(prep: Prepared, spec: RunSpec, recovery: Recovery) -> dict[str, Any]:
    """The pruned run's fields plus the recovery: its settings, code and the exact token stream.

    The teacher's outputs are a function of the dense model and the stream, both already in the key.
    """
    stream = prep.streams[recovery.label()]
    return {
        **_pruned_fields(prep, spec),
        "kind": "recovered",
        "recovery": {
            "name": recovery.name,
            "label": recovery.label(),
            "config": recovery.config.model_dump(mode="json"),
            "code": package_digest(type(recovery)),
            "data": stream.describe(),
        },
    }


def _recovered_path(runs_dir: Path, spec: RunSpec, recovery: Recovery) -> Path:
    return runs_dir / f"{spec.run_id}+{recovery.label().replace(' ', '-')}.json"


def run_pruned(prep: Prepared, spec: RunSpec, runs_dir: Path, progress: bool, log: Log) -> tuple[dict[str, Any], bool]:
    """Prune a fresh copy of the dense model for ``spec``, evaluate it, store it; returns ``(record, computed)``."""
    return run_cell(prep, spec, runs_dir, progress, log)[0]


def run_cell(prep: Prepared, spec: RunSpec, runs_dir: Path, progress: bool, log: Log) -> list[tuple[dict[str, Any], bool]]:
    """The run of ``spec`` and one recovered run per recovery of the comparison; returns ``(record, computed)`` each.

    Cached records are loaded; the prune runs (once) when any of them is missing, and each missing
    recovery starts from the same pruned weights.
    """
    fields = _pruned_fields(prep, spec)
    key, path = cache_key(fields), runs_dir / f"{spec.run_id}.json"
    cached = load_cached(path, key)
    pending = []
    done: dict[str, tuple[dict[str, Any], bool]] = {}
    chosen = prep.config.recovery_methods
    recoveries = prep.recoveries if chosen is None or spec.method in chosen else []
    for recovery in recoveries:
        r_fields = _recovered_fields(prep, spec, recovery)
        r_key, r_path = cache_key(r_fields), _recovered_path(runs_dir, spec, recovery)
        r_cached = load_cached(r_path, r_key)
        if r_cached is not None:
            log(f"[{r_path.stem}] cached")
            done[recovery.label()] = (r_cached, False)
        else:
            pending.append((recovery, r_fields, r_key, r_path))
    if cached is not None:
        log(f"[{spec.run_id}] cached")
    if cached is not None and not pending:
        return [(cached, False), *(done[r.label()] for r in recoveries)]
    record: dict[str, Any] = {"run_id": spec.run_id, "kind": "pruned", "cache_key": key, "protocol": fields}
    model = None
    try:
        model, outcome = _prune_and_evaluate(prep, spec, progress, log, evaluate=cached is None)
        record.update(outcome)
    except Exception as exc:  # one failing method must not lose the other runs; failures are never cached
        log(f"[{spec.run_id}] FAILED: {type(exc).__name__}: {exc}")
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        write_json_atomic(path, record)
    if cached is not None:
        base = (cached, False)
    else:
        base = (record if record.get("status") == "failed" else _finish(path, record), True)
    if model is not None:
        _recover_all(prep, spec, model, record.get("prune") or cached.get("prune"), pending, done, progress, log)
    else:
        for recovery, r_fields, r_key, r_path in pending:
            failed = {
                "run_id": r_path.stem,
                "kind": "recovered",
                "cache_key": r_key,
                "protocol": r_fields,
                "status": "failed",
                "error": f"the prune of {spec.run_id} failed",
            }
            write_json_atomic(r_path, failed)
            done[recovery.label()] = (failed, True)
    del model
    release_unused_memory()  # the run's model is gone: hand its pages back before the next load
    return [base, *(done[r.label()] for r in recoveries)]


def _recover_all(
    prep: Prepared,
    spec: RunSpec,
    model: torch.nn.Module,
    prune_report: dict[str, Any],
    pending: list[tuple[Recovery, dict[str, Any], str, Path]],
    done: dict[str, tuple[dict[str, Any], bool]],
    progress: bool,
    log: Log,
) -> None:
    """Each pending recovery from the same pruned weights: recover, evaluate, store (a failure is recorded, never cached).

    Evaluators whose results depend only on the shapes (``shape_only``: speed) are not run again: a
    recovered model has the pruned model's shapes, and its unrecovered run holds those results.
    """
    snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()} if len(pending) > 1 else None
    for index, (recovery, r_fields, r_key, r_path) in enumerate(pending):
        run_id = r_path.stem
        record: dict[str, Any] = {"run_id": run_id, "kind": "recovered", "cache_key": r_key, "protocol": r_fields}
        try:
            if index and snapshot is not None:
                model.load_state_dict(snapshot)
            torch.manual_seed(recovery.config.seed)
            log(f"[{run_id}] recovering with {recovery.label()}")
            healed = recover(
                model,
                recovery,
                prep.streams[recovery.label()],
                teacher=prep.teachers.get(recovery.label()),
                host=prep.host,
                progress=progress,
                model_identity=prep.model_stamp,
            )
            model = healed.model
            evaluators = {n: e for n, e in prep.evaluators.items() if not getattr(e, "shape_only", False)}
            dense = _load_weights(prep) if any(getattr(e, "pairs_with_dense", False) for e in evaluators.values()) else None
            context = EvalContext(dense_model=dense, device=prep.device, dtype=prep.dtype, progress=progress, seed=EVAL_SEED)
            results, walls = evaluate_model(model, prep.tokenizer, evaluators, context, log, run_id)
            del dense
            record.update(
                prune={**prune_report, "recovery": healed.record.model_dump(mode="json")},
                recovery=healed.record.model_dump(mode="json"),
                eval=results,
                eval_wall_s=walls,
            )
            done[recovery.label()] = (_finish(r_path, record), True)
        except Exception as exc:
            log(f"[{run_id}] FAILED: {type(exc).__name__}: {exc}")
            record.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
            write_json_atomic(r_path, record)
            done[recovery.label()] = (record, True)


def prepare_teachers(prep: Prepared, folder: Path | None, progress: bool, log: Log) -> None:
    """The dense model's outputs for every recovery that distils, from ``prep.model`` (before it is released).

    Recoveries that cut their streams with the same sequence length and seed share one teacher pass
    over the longest stream (shorter streams are its prefixes); outputs are kept in ``folder``.
    """
    needing = [r for r in prep.recoveries if r.needs_teacher]
    if not needing or prep.model is None:
        return
    families: dict[tuple[int, int, bool], list[Recovery]] = {}
    for recovery in needing:
        families.setdefault((recovery.config.seq_len, recovery.config.seed, recovery.teacher_hidden()), []).append(recovery)
    for members in families.values():
        longest = max(members, key=lambda r: len(prep.streams[r.label()].sequences))
        stream = prep.streams[longest.label()]
        top_k = max(r.teacher_top_k() for r in members)
        log(f"teacher outputs: {stream.tokens:,} tokens, top-{top_k}")
        targets = load_or_compute_teacher(folder, prep.model, stream, top_k, longest.teacher_hidden(), longest.config.batch_size, progress, prep.model_stamp)
        for recovery in members:
            own = prep.streams[recovery.label()]
            if not torch.equal(stream.sequences[: len(own.sequences)], own.sequences):
                raise RuntimeError(f"recovery stream of {recovery.label()!r} is not a prefix of {longest.label()!r}'s")
            prep.teachers[recovery.label()] = targets.subset(own, recovery.teacher_top_k())


def _load_weights(prep: Prepared) -> torch.nn.Module:
    """A fresh copy of the dense model, read from its files onto the comparison's device and dtype."""
    model, _ = load_model(prep.config.model, prep.dtype, prep.device)
    return model


def _pairs_with_dense(prep: Prepared) -> bool:
    """Whether an evaluator measures the dense model next to each pruned one (it then needs a second copy)."""
    return any(getattr(evaluator, "pairs_with_dense", False) for evaluator in prep.evaluators.values())


def _prune_and_evaluate(prep: Prepared, spec: RunSpec, progress: bool, log: Log, evaluate: bool = True) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Prune a fresh copy of the dense weights in place, then (with ``evaluate``) evaluate the folded model."""
    calibration = CalibrationData(prep.calibration, name=str(prep.calibration_stamp["name"]))
    session = PruneSession(
        _load_weights(prep), spec.method, spec.budget, spec.config, budget_kind=prep.config.budget_kind, host=prep.host, model_identity=prep.model_stamp
    )
    torch.manual_seed(spec.seed)
    log(f"[{spec.run_id}] pruning")
    result = session.run(calibration, progress=progress, inplace=True, calibration_source=prep.calibration_stamp)
    del session
    outcome: dict[str, Any] = {"prune": result.report.model_dump(mode="json")}
    if evaluate:
        dense = _load_weights(prep) if _pairs_with_dense(prep) else None
        context = EvalContext(dense_model=dense, device=prep.device, dtype=prep.dtype, progress=progress, seed=EVAL_SEED)
        results, walls = evaluate_model(result.model, prep.tokenizer, prep.evaluators, context, log, spec.run_id)
        outcome.update(eval=results, eval_wall_s=walls)
    return result.model, outcome


def _stages_used(records: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Per stage, the plugins that carried it out in the finished runs (more than one projector or fold is warned of)."""
    used: dict[str, set[str]] = {}
    for record in records:
        for stage, entry in (record.get("prune") or {}).get("stages", {}).items():
            used.setdefault(stage, set()).add(entry["plugin"])
    return {stage: sorted(plugins) for stage, plugins in used.items()}


def compare(
    config: CompareConfig,
    *,
    host: PluginHost | None = None,
    progress: bool = True,
    log: Log = _silent,
    out: Path | None = None,
    prepared: Prepared | None = None,
) -> CompareOutcome:
    """Run every (method, budget, seed) of ``config`` on one model and write the results folder.

    Finished runs found in ``<out>/runs`` with the same cache key are loaded, not recomputed. ``out``
    (default ``config.out_dir()``) is where the files go, e.g. a temporary folder renamed into place later.
    ``prepared`` is :func:`prepare`'s result for ``config`` when the caller checked the inputs first.
    """
    host = host or PluginHost.create()
    prep = prepared if prepared is not None else prepare(config, host, log)
    out = Path(out) if out is not None else config.out_dir()
    runs_dir = out / "runs"
    dense, computed = run_dense(prep, runs_dir, progress, log)
    prepare_teachers(prep, out / "teacher", progress, log)
    prep.model = None  # every run reloads the weights from their files: one copy at a time
    release_unused_memory()
    done = ["dense"] if computed else []
    records = []
    with tqdm(total=len(prep.runs), desc="compare", unit="run", disable=not progress) as bar:
        for spec in prep.runs:
            bar.set_postfix_str(spec.run_id)
            for record, computed in run_cell(prep, spec, runs_dir, progress, log):
                records.append(record)
                done += [record["run_id"]] if computed else []
            bar.update()
    meta = {
        "config": prep.config.model_dump(mode="json"),
        "model": prep.model_stamp,
        "units": prep.units,
        "calibration": prep.calibration_stamp,
        "evaluation": prep.evaluation_stamp,
        "budgets": prep.budgets,
        "device": prep.device,
        "dtype": prep.dtype,
        "dtype_reason": prep.dtype_reason,
        "code": code_identity(),
        "recovery": {label: stream.describe() for label, stream in prep.streams.items()},
        "stages": _stages_used(records),
    }
    for stage in ("project", "fold"):
        if len(meta["stages"].get(stage, [])) > 1:
            log(f"warning: the runs' {stage} stage was carried out by different plugins: {', '.join(meta['stages'][stage])}")
    files = write_results(out, meta, dense, records)
    log(f"results in {out}")
    return CompareOutcome(out=out, dense=dense, runs=records, files=files, computed=done)
