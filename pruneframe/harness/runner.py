"""Run a comparison: prepare once (model, data, one calibration stream, budgets), then dense + every run.

:func:`compare` is the whole flow; :func:`~pruneframe.harness.prepare.prepare` raises
:class:`~pruneframe.settings.errors.InputError` for any bad input before the first run starts. A run
that fails later is recorded as failed (never cached) and the others go on.

One copy of the weights: the dense model is evaluated once and released; every run loads the dense
weights afresh from their (memory-mapped) files, prunes that copy in place through a
:class:`~pruneframe.pipeline.session.PruneSession`, and evaluates it. Only evaluators that measure the dense
model next to each pruned one (``pairs_with_dense``, e.g. the paired speed timings) get a second
copy, loaded from the files after the prune.

Preparing is :mod:`~pruneframe.harness.prepare`'s and a run's record :mod:`~pruneframe.harness.records`';
their public names are re-exported here. :func:`start` (dense and teachers), :func:`run_cell` (one cell) and
:func:`finish` (the report) are the pieces :func:`compare` runs in order; the jobs of the other executors
(:mod:`pruneframe.harness.executors`) run the same pieces, each where its engine puts it.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from pruneframe.util.io import write_json_atomic
from pruneframe.toolkit.memory import release_unused_memory
from pruneframe.pipeline.calibration import CalibrationData
from pruneframe.evaluation.base import EvalContext
from pruneframe.harness.cache import code_identity, load_cached
from pruneframe.harness.config import CompareConfig
from pruneframe.harness.prepare import Prepared, RunSpec, prepare
from pruneframe.harness.records import (
    EVAL_SEED,
    cell_files,
    dense_file,
    evaluate_model,
    finish_record,
)
from pruneframe.harness.report import write_results
from pruneframe.pipeline.host import PluginHost
from pruneframe.models import load_model
from pruneframe.recovery import Recovery, recover
from pruneframe.recovery.teacher import load_or_compute_teacher
from pruneframe.pipeline.session import PruneSession
from pruneframe.util.log import Log, silent

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
    "start",
    "finish",
    "compare",
]


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


def run_dense(prep: Prepared, runs_dir: Path, progress: bool, log: Log) -> tuple[dict[str, Any], bool]:
    """The dense model's evaluation (cached like a run); returns ``(record, computed)``."""
    file = dense_file(prep, runs_dir)
    cached = load_cached(file.path, file.key)
    if cached is not None:
        log("[dense] cached")
        return cached, False
    if prep.model is None:
        raise RuntimeError("the dense model was already released; run_dense comes before the runs")
    context = EvalContext(device=prep.device, dtype=prep.dtype, progress=progress, seed=EVAL_SEED)
    results, walls = evaluate_model(prep.model, prep.tokenizer, prep.evaluators, context, log, "dense")
    record = {"run_id": "dense", "kind": "dense", "cache_key": file.key, "protocol": file.fields, "eval": results, "eval_wall_s": walls}
    return finish_record(file.path, record), True


def run_pruned(prep: Prepared, spec: RunSpec, runs_dir: Path, progress: bool, log: Log) -> tuple[dict[str, Any], bool]:
    """Prune a fresh copy of the dense model for ``spec``, evaluate it, store it; returns ``(record, computed)``."""
    return run_cell(prep, spec, runs_dir, progress, log)[0]


def run_cell(prep: Prepared, spec: RunSpec, runs_dir: Path, progress: bool, log: Log) -> list[tuple[dict[str, Any], bool]]:
    """The run of ``spec`` and one recovered run per recovery of the comparison; returns ``(record, computed)`` each.

    Cached records are loaded; the prune runs (once) when any of them is missing, and each missing
    recovery starts from the same pruned weights.
    """
    base_file, *recovered = cell_files(prep, spec, runs_dir)
    fields, key, path = base_file.fields, base_file.key, base_file.path
    cached = load_cached(path, key)
    pending = []
    done: dict[str, tuple[dict[str, Any], bool]] = {}
    recoveries = [file.recovery for file in recovered]
    for file in recovered:
        r_cached = load_cached(file.path, file.key)
        if r_cached is not None:
            log(f"[{file.run_id}] cached")
            done[file.recovery.label()] = (r_cached, False)
        else:
            pending.append((file.recovery, file.fields, file.key, file.path))
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
        base = (record if record.get("status") == "failed" else finish_record(path, record), True)
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
            done[recovery.label()] = (finish_record(r_path, record), True)
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
        _load_weights(prep),
        spec.method,
        spec.budget,
        spec.config,
        budget_kind=prep.config.budget_kind,
        host=prep.host,
        model_identity=prep.model_stamp,
        tokenizer=prep.tokenizer,
    )
    torch.manual_seed(spec.seed)
    log(f"[{spec.run_id}] pruning")
    result = session.run(calibration, progress=progress, inplace=True, calibration_source=prep.calibration_stamp)
    del session
    outcome: dict[str, Any] = {"prune": result.report.model_dump(mode="json")}
    if evaluate:
        dense = _load_weights(prep) if _pairs_with_dense(prep) else None
        trimmed = result.tokenizer  # a trimmed vocabulary reads text its own way; the dense model keeps its tokenizer
        context = EvalContext(
            dense_model=dense,
            dense_tokenizer=None if trimmed is None else prep.tokenizer,
            device=prep.device,
            dtype=prep.dtype,
            progress=progress,
            seed=EVAL_SEED,
        )
        tokenizer = trimmed if trimmed is not None else prep.tokenizer
        results, walls = evaluate_model(result.model, tokenizer, prep.evaluators, context, log, spec.run_id)
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
    log: Log = silent,
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
    dense, computed = start(prep, out, progress, log)
    done = ["dense"] if computed else []
    records = []
    with tqdm(total=len(prep.runs), desc="compare", unit="run", disable=not progress) as bar:
        for spec in prep.runs:
            bar.set_postfix_str(spec.run_id)
            for record, computed in run_cell(prep, spec, runs_dir, progress, log):
                records.append(record)
                done += [record["run_id"]] if computed else []
            bar.update()
    files = finish(prep, out, dense, records, log)
    return CompareOutcome(out=out, dense=dense, runs=records, files=files, computed=done)


def start(prep: Prepared, out: Path, progress: bool, log: Log) -> tuple[dict[str, Any], bool]:
    """What comes before the runs: the dense evaluation and the teachers' outputs; then the dense model is released.

    Returns :func:`run_dense`'s ``(record, computed)``. Every run reloads the weights from their files:
    one copy at a time.
    """
    dense, computed = run_dense(prep, out / "runs", progress, log)
    prepare_teachers(prep, out / "teacher", progress, log)
    prep.model = None
    release_unused_memory()
    return dense, computed


def finish(prep: Prepared, out: Path, dense: dict[str, Any], records: list[dict[str, Any]], log: Log) -> dict[str, Path]:
    """Write the report of ``records`` (in :attr:`Prepared.runs` order, each cell's recoveries after it) into ``out``; returns the files."""
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
    return files
