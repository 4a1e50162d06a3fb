"""A run's record: the fields its cache key covers, its evaluation, and the file it is finished into."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from pruneframe.architectures.gguf import ExportRefused
from pruneframe.checkpoint import software_versions
from pruneframe.evaluation.base import EvalContext, Evaluator
from pruneframe.harness.cache import cache_key, code_identity, package_digest
from pruneframe.harness.prepare import Prepared, RunSpec
from pruneframe.recovery import Recovery
from pruneframe.util.io import write_json_atomic
from pruneframe.util.log import Log

__all__ = [
    "EVAL_SEED",
    "evaluate_model",
    "base_fields",
    "pruned_fields",
    "recovered_fields",
    "recovered_path",
    "finish_record",
    "RecordFile",
    "dense_file",
    "cell_files",
]


#: Seed of every evaluation (speed prompts, lm-eval sampling): fixed, so method seeds never change the protocol.
EVAL_SEED = 0


def evaluate_model(
    model: torch.nn.Module, tokenizer: Any, evaluators: dict[str, Evaluator], context: EvalContext, log: Log, label: str
) -> tuple[dict[str, Any], dict[str, float]]:
    """Run every evaluator on ``model``; return results by evaluator name and wall seconds by name.

    An evaluator that cannot measure this model (a GGUF export refused: uneven widths llama.cpp cannot hold,
    say) records ``{"refused": why}`` instead of failing the run: the other evaluations still count.
    """
    results: dict[str, Any] = {}
    walls: dict[str, float] = {}
    for name, evaluator in evaluators.items():
        log(f"[{label}] evaluating {name}")
        start = time.perf_counter()
        try:
            results[name] = evaluator.evaluate(model, tokenizer, context)
        except ExportRefused as exc:
            log(f"[{label}] {name} refused: {exc}")
            results[name] = {"refused": str(exc)}
        walls[name] = time.perf_counter() - start
    return results, walls


def base_fields(prep: Prepared) -> dict[str, Any]:
    """The fields every run of ``prep`` shares in its cache key: model, dtype, device, evaluation protocol and code."""
    return {
        "model": prep.model_stamp,
        "dtype": prep.dtype,
        "dtype_reason": prep.dtype_reason,
        "device": torch.device(prep.device).type,
        "evaluation": prep.evaluation_stamp,
        "eval_seed": EVAL_SEED,
        "code": code_identity(),
    }


def finish_record(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    """``record`` marked finished (status, software versions, time) and written atomically to ``path``; returns it."""
    record.update(status="ok", software=software_versions(), finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    write_json_atomic(path, record)
    return record


def pruned_fields(prep: Prepared, spec: RunSpec) -> dict[str, Any]:
    """The fields of the run of ``spec``: the shared ones plus the method, its stages, the budget, the seed and the calibration."""
    return {
        "kind": "pruned",
        **base_fields(prep),
        "method": {"name": spec.method, "config": spec.config, "code": spec.code},
        "stages": spec.stages,
        "budget": {**spec.budget.model_dump(mode="json"), "label": spec.budget.label()},
        "seed": spec.seed,
        "calibration": prep.calibration_stamp,
    }


def recovered_fields(prep: Prepared, spec: RunSpec, recovery: Recovery) -> dict[str, Any]:
    """The pruned run's fields plus the recovery: its settings, code and the exact token stream.

    The teacher's outputs are a function of the dense model and the stream, both already in the key.
    """
    stream = prep.streams[recovery.label()]
    return {
        **pruned_fields(prep, spec),
        "kind": "recovered",
        "recovery": {
            "name": recovery.name,
            "label": recovery.label(),
            "config": recovery.config.model_dump(mode="json"),
            "code": package_digest(type(recovery)),
            "data": stream.describe(),
        },
    }


def recovered_path(runs_dir: Path, spec: RunSpec, recovery: Recovery) -> Path:
    """The file of the run of ``spec`` recovered with ``recovery``: ``<run id>+<recovery label, spaces as dashes>.json``."""
    return runs_dir / f"{spec.run_id}+{recovery.label().replace(' ', '-')}.json"


@dataclass(frozen=True)
class RecordFile:
    """One record a comparison writes: its run id, its file under ``runs/``, its cache key and the fields the key covers.

    ``recovery`` is the recovery of a recovered run (``None`` for the dense and the unrecovered runs).
    """

    run_id: str
    path: Path
    key: str
    fields: dict[str, Any]
    recovery: Recovery | None = None


def dense_file(prep: Prepared, runs_dir: Path) -> RecordFile:
    """The dense model's record: ``runs/dense.json``."""
    fields = {"kind": "dense", **base_fields(prep)}
    return RecordFile("dense", runs_dir / "dense.json", cache_key(fields), fields)


def cell_files(prep: Prepared, spec: RunSpec, runs_dir: Path) -> list[RecordFile]:
    """The records of the cell ``spec``: its unrecovered run, then one per recovery its method goes through, in order (none for a trimmed vocabulary)."""
    fields = pruned_fields(prep, spec)
    files = [RecordFile(spec.run_id, runs_dir / f"{spec.run_id}.json", cache_key(fields), fields)]
    chosen = prep.config.recovery_methods
    recovered = spec.method not in prep.vocabulary_methods and (chosen is None or spec.method in chosen)
    for recovery in prep.recoveries if recovered else []:
        r_fields = recovered_fields(prep, spec, recovery)
        path = recovered_path(runs_dir, spec, recovery)
        files.append(RecordFile(path.stem, path, cache_key(r_fields), r_fields, recovery))
    return files
