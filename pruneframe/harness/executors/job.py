"""The job function: one job of a comparison, run where the engine puts it.

:func:`run_job` loads what the comparison shares itself (:func:`~pruneframe.harness.prepare.prepare`: the
dense model, the calibration stream, the budgets), checks that its records' cache keys are the ones the
driver expects, and then runs exactly what a local comparison runs: :func:`~pruneframe.harness.runner.start`
for the dense job (the dense evaluation and the teachers' outputs), :func:`~pruneframe.harness.runner.run_cell`
for a cell. Every record is written atomically into ``<out>/runs`` when it is finished, so a job that is
killed leaves no record of its unfinished runs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch

from pruneframe.harness.config import CompareConfig
from pruneframe.harness.executors.base import JobCall
from pruneframe.harness.prepare import Prepared, prepare
from pruneframe.harness.records import RecordFile, cell_files, dense_file
from pruneframe.harness.runner import prepare_teachers, run_cell, start
from pruneframe.pipeline.host import PluginHost
from pruneframe.toolkit.memory import release_unused_memory

__all__ = ["run_job", "job_files", "differences"]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def job_files(prep: Prepared, run_id: str, runs_dir: Path) -> list[RecordFile]:
    """The records the job ``run_id`` writes: ``dense``'s, or the cell's (its run, then its recovered runs)."""
    if run_id == "dense":
        return [dense_file(prep, runs_dir)]
    specs = {spec.run_id: spec for spec in prep.runs}
    if run_id not in specs:
        raise ValueError(f"the comparison has no run {run_id!r} (its runs: {', '.join(specs)})")
    return cell_files(prep, specs[run_id], runs_dir)


def differences(expected: Any, found: Any, where: str = "", limit: int = 4) -> list[str]:
    """The dotted paths at which ``found`` differs from ``expected``, with both values (at most ``limit``)."""
    if isinstance(expected, dict) and isinstance(found, dict):
        out: list[str] = []
        for key in sorted(set(expected) | set(found), key=str):
            out += differences(expected.get(key), found.get(key), f"{where}.{key}" if where else str(key), limit - len(out))
            if len(out) >= limit:
                break
        return out[:limit]
    return [] if expected == found else [f"{where or 'value'}: {found!r} here, {expected!r} where the comparison was prepared"]


def run_job(call: JobCall) -> dict[str, str]:
    """Run the job ``call``; returns record run id -> status (``ok`` or ``failed``) of the records it wrote.

    Raises ``RuntimeError`` before any work when a record's cache key differs from the driver's (another
    device, dtype, library version or data where the job runs): the driver would not find the record.
    """
    if os.path.isdir(call.cwd):  # absent on a node that does not share it: then only absolute paths work
        os.chdir(call.cwd)
    os.environ.update(call.env)
    if call.threads is not None:
        torch.set_num_threads(call.threads)
    out = Path(call.out)
    runs_dir = out / "runs"
    prep = prepare(CompareConfig.model_validate(call.config), PluginHost.create(), _log)
    files = job_files(prep, call.run_id, runs_dir)
    if {f.run_id: f.key for f in files} != call.expected:
        found = differences(call.protocol, files[0].fields)
        raise RuntimeError(f"job {call.run_id}: its runs' cache keys differ from the driver's ({'; '.join(found) or 'other runs'})")
    if call.run_id == "dense":
        record, _ = start(prep, out, False, _log)
        return {"dense": record["status"]}
    prepare_teachers(prep, out / "teacher", False, _log)
    prep.model = None  # run_cell loads the weights afresh from their files: one copy at a time
    release_unused_memory()
    spec = next(spec for spec in prep.runs if spec.run_id == call.run_id)
    return {record["run_id"]: record["status"] for record, _ in run_cell(prep, spec, runs_dir, False, _log)}
