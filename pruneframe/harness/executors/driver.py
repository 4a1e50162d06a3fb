"""The driver of a comparison whose runs are jobs: plan, submit, follow, collect, report.

The driver prepares the comparison where it is started (:func:`~pruneframe.harness.prepare.prepare`:
budgets, run ids and every record's cache key), then releases the dense model. The records already in
``<out>/runs`` under their keys are kept (the run cache); of the rest, the dense evaluation is one job,
waited for, and every cell with a missing record one job (:func:`plan`). One progress bar follows the
jobs, each one's id and state in its postfix. When every record is there the report is written by
:func:`~pruneframe.harness.runner.finish`, as a local comparison writes it; a job that ended without its
records leaves them marked failed (never cached), so a rerun submits exactly what is missing.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from pruneframe.harness.cache import load_cached
from pruneframe.harness.config import CompareConfig
from pruneframe.harness.executors.base import Executor, Job, JobCall, JobFailed
from pruneframe.harness.executors.job import run_job
from pruneframe.harness.executors.options import RayOptions, SubmititOptions
from pruneframe.harness.prepare import Prepared, RunSpec
from pruneframe.harness.records import RecordFile, cell_files, dense_file
from pruneframe.harness.runner import CompareOutcome, finish
from pruneframe.settings.errors import InputError
from pruneframe.toolkit.memory import release_unused_memory
from pruneframe.util.io import write_json_atomic
from pruneframe.util.log import Log, silent

__all__ = ["POLL_S", "Plan", "Dispatched", "plan", "open_executor", "job_call", "read_record", "dispatch"]

#: Seconds between two looks at the jobs' states.
POLL_S = 1.0
#: Jobs named in the progress bar's postfix (the others are counted).
SHOWN = 6


@dataclass
class Plan:
    """A comparison's records, by job: the dense one, then each cell's (in :attr:`Prepared.runs` order)."""

    dense: RecordFile
    cells: list[tuple[RunSpec, list[RecordFile]]]

    def jobs(self) -> dict[str, list[RecordFile]]:
        """Job run id -> its records, for every job: ``dense`` first."""
        return {"dense": [self.dense], **{spec.run_id: files for spec, files in self.cells}}

    def pending(self) -> dict[str, list[RecordFile]]:
        """The jobs with a record that is not finished under its key (what a run submits), ``dense`` first."""
        return {run_id: files for run_id, files in self.jobs().items() if any(load_cached(f.path, f.key) is None for f in files)}


@dataclass
class Dispatched:
    """What :func:`dispatch` did: the comparison's outcome when every record is there, else the jobs not finished.

    ``pending`` maps each unfinished job's run id to its state (``not submitted``, or the engine's
    state and job id); ``submitted`` lists the jobs this driver submitted as ``(run id, job id)``.
    """

    out: Path
    outcome: CompareOutcome | None
    pending: dict[str, str] = field(default_factory=dict)
    submitted: list[tuple[str, str]] = field(default_factory=list)


def plan(prep: Prepared, runs_dir: Path) -> Plan:
    """Every record of the comparison with its file and cache key, grouped by the job that writes it."""
    return Plan(dense_file(prep, runs_dir), [(spec, cell_files(prep, spec, runs_dir)) for spec in prep.runs])


def open_executor(config: CompareConfig, out: Path, job: Callable[[JobCall], Any] = run_job) -> Executor:
    """The engine of ``config.executor`` with its options; :class:`InputError` for ``local`` or a missing extra."""
    settings = config.executor_settings()
    if isinstance(settings, SubmititOptions):
        from pruneframe.harness.executors.submitit_executor import SubmititExecutor

        return SubmititExecutor(settings, out, job)
    if isinstance(settings, RayOptions):
        from pruneframe.harness.executors.ray_executor import RayExecutor

        return RayExecutor(settings, out, job)
    raise InputError(f"executor {config.executor!r} runs in this process; it submits no jobs")


def job_call(prep: Prepared, run_id: str, files: list[RecordFile], out: Path) -> JobCall:
    """The call of the job ``run_id`` that writes ``files``."""
    return JobCall(
        run_id=run_id,
        config=prep.config.model_dump(mode="json"),
        out=str(out.absolute()),
        expected={f.run_id: f.key for f in files},
        protocol=files[0].fields,
        cwd=os.getcwd(),
        env={k: v for k, v in os.environ.items() if k.startswith("PRUNEFRAME_")},
    )


def read_record(file: RecordFile) -> dict[str, Any] | None:
    """The record of ``file`` under its key: finished (the run cache's), or failed; ``None`` when there is none."""
    cached = load_cached(file.path, file.key)
    if cached is not None:
        return cached
    try:
        record = json.loads(file.path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    failed = isinstance(record, dict) and record.get("cache_key") == file.key and record.get("status") == "failed"
    return record if failed else None


def _mark_failed(file: RecordFile, error: str) -> None:
    """Write ``file``'s record as failed (never reused: the next run submits it again)."""
    kind = "dense" if file.run_id == "dense" else "recovered" if file.recovery is not None else "pruned"
    write_json_atomic(file.path, {"run_id": file.run_id, "kind": kind, "cache_key": file.key, "protocol": file.fields, "status": "failed", "error": error})


def _postfix(running: list[Job], waiting: int) -> str:
    shown = [f"{job.run_id} {job.job_id} {job.state()}" for job in running[:SHOWN]]
    if len(running) > SHOWN:
        shown.append(f"+{len(running) - SHOWN} more")
    if waiting:
        shown.append(f"{waiting} waiting")
    return ", ".join(shown)


def _follow(executor: Executor, calls: list[JobCall], running: list[Job], bar: tqdm, poll_s: float) -> list[Job]:
    """Submit ``calls`` (at most ``executor.max_running`` at once) and follow them with ``running`` until all end; returns them."""
    queue, running, ended = list(calls), list(running), []
    try:
        while queue or running:
            room = len(queue) if executor.max_running is None else max(0, executor.max_running - len(running))
            if room:
                running += executor.submit(queue[:room])
                queue = queue[room:]
            for job in [job for job in running if job.done()]:
                running.remove(job)
                ended.append(job)
                bar.update()
            bar.set_postfix_str(_postfix(running, len(queue)), refresh=True)
            if queue or running:
                time.sleep(poll_s)
    except BaseException:  # Ctrl-C: jobs that would not outlive the driver stop with it
        if not executor.detached:
            for job in running:
                job.cancel()
        raise
    return ended


def dispatch(
    config: CompareConfig,
    prep: Prepared,
    out: Path,
    *,
    wait: bool = True,
    submit: bool = True,
    progress: bool = True,
    log: Log = silent,
    job: Callable[[JobCall], Any] = run_job,
    poll_s: float = POLL_S,
) -> Dispatched:
    """Run the pending jobs of the comparison ``prep`` with ``config.executor`` into ``out`` and write the report.

    With ``wait`` false the driver returns once the dense job has finished and the cells are submitted
    (an executor whose jobs end with the driver refuses it: :class:`InputError`). With ``submit`` false
    nothing is submitted (``--collect``): the report is written when every record is there, else the
    unfinished jobs are returned. A failed dense job raises :class:`JobFailed`. ``job`` is the job
    function (:func:`run_job`).
    """
    runs_dir = out / "runs"
    prep.model = None  # the jobs load their own copies
    release_unused_memory()
    layout = plan(prep, runs_dir)
    pending = layout.pending()
    if not submit and config.executor != "submitit":  # no job outlives its driver: what is there is all there is
        executor = None
    else:
        executor = open_executor(config, out, job)
        if not wait and not executor.detached:
            executor.close(False)
            raise InputError(f"--no-wait: the jobs of executor {executor.name!r} end with the driver, which must wait for them")
    interrupted = True
    try:
        calls = {run_id: job_call(prep, run_id, files, out) for run_id, files in pending.items()}
        following = {j.run_id: j for j in executor.active(list(calls))} if executor is not None else {}
        if not submit:
            interrupted = False
            return _collected(prep, layout, pending, following, out, log)
        assert executor is not None
        with tqdm(total=len(calls), desc=f"compare ({executor.name})", unit="job", disable=not progress) as bar:
            ended = _dense_first(executor, calls, following, layout, bar, poll_s)
            submitted = [(j.run_id, j.job_id) for j in ended if j.run_id not in following]
            cell_calls = [call for run_id, call in calls.items() if run_id != "dense" and run_id not in following]
            if not wait and (cell_calls or len(following) > ("dense" in following)):
                jobs = executor.submit(cell_calls)
                interrupted = False
                states = {j.run_id: f"{j.state()} {j.job_id}" for j in [*jobs, *following.values()] if j.run_id != "dense"}
                return Dispatched(out, None, states, submitted + [(j.run_id, j.job_id) for j in jobs])
            cells = _follow(executor, cell_calls, [j for j in following.values() if j.run_id != "dense"], bar, poll_s)
        submitted += [(j.run_id, j.job_id) for j in cells if j.run_id not in following]
        ended += cells
        _mark_unfinished(executor.name, ended, pending)
        interrupted = False
        computed = [f.run_id for j in ended for f in pending[j.run_id]]
        return Dispatched(out, _report(prep, layout, out, computed, log), submitted=submitted)
    finally:
        if executor is not None:
            executor.close(interrupted)


def _collected(prep: Prepared, layout: Plan, pending: dict[str, list[RecordFile]], following: dict[str, Job], out: Path, log: Log) -> Dispatched:
    """``--collect``: the report when every record is there (a failed one is: the report marks it), else the jobs not finished.

    A job that an engine still holds (queued or running) is not finished, whatever its file says.
    """
    unfinished = [r for r, files in pending.items() if r in following or any(read_record(f) is None for f in files)]
    if unfinished:
        return Dispatched(out, None, {r: f"{following[r].state()} {following[r].job_id}" if r in following else "not submitted" for r in unfinished})
    return Dispatched(out, _report(prep, layout, out, [], log))


def _dense_first(executor: Executor, calls: dict[str, JobCall], following: dict[str, Job], layout: Plan, bar: tqdm, poll_s: float) -> list[Job]:
    """The dense job, submitted (or followed) and waited for when its record is missing; :class:`JobFailed` when it ends without it."""
    if "dense" not in calls:
        return []
    running = [following["dense"]] if "dense" in following else []
    ended = _follow(executor, [] if running else [calls["dense"]], running, bar, poll_s)
    failure = ended[0].failure()
    if failure is not None or load_cached(layout.dense.path, layout.dense.key) is None:
        raise JobFailed(f"the dense job {ended[0].job_id} failed: {failure or 'it wrote no finished runs/dense.json'}")
    return ended


def _mark_unfinished(engine: str, ended: list[Job], pending: dict[str, list[RecordFile]]) -> None:
    """Mark failed every record an ended job did not finish (a job that died, or returned without writing it)."""
    for job in ended:
        failure = job.failure()
        for file in pending[job.run_id]:
            if load_cached(file.path, file.key) is None and (failure is not None or read_record(file) is None):
                _mark_failed(file, f"job {job.job_id} ({engine}) ended without this record: {failure or 'no record written'}")


def _report(prep: Prepared, layout: Plan, out: Path, computed: list[str], log: Log) -> CompareOutcome:
    """The report of every record (each finished or failed under its key), written as a local comparison writes it."""
    dense = read_record(layout.dense)
    records = [read_record(f) for _, files in layout.cells for f in files]
    if dense is None or any(r is None for r in records):
        raise RuntimeError("a record went missing while the report was written")  # only another process deleting runs/ gets here
    files = finish(prep, out, dense, records, log)
    return CompareOutcome(out=out, dense=dense, runs=records, files=files, computed=computed)
