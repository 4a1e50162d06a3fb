"""``submitit``: every job a Slurm job (the cells one job array), or with ``cluster: local`` a process of this machine.

submitit pickles the job function and its :class:`~pruneframe.harness.executors.base.JobCall` into the
jobs' folder (``<out>/jobs`` by default), which every node must see. The job ids a driver submitted are
kept in ``submitted.json`` there, so that a later driver (``--collect``, a rerun) follows the Slurm jobs
still queued or running instead of submitting them again.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from pruneframe.harness.executors.base import Job, JobCall, import_extra
from pruneframe.harness.executors.job import run_job
from pruneframe.harness.executors.options import SubmititOptions
from pruneframe.settings.errors import InputError
from pruneframe.util.io import write_json_atomic

__all__ = ["SubmititJob", "SubmititExecutor", "ACTIVE_STATES"]

#: Slurm states of a job that has not ended.
ACTIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"})


def _last_line(message: str) -> str:
    """The last line of a job's error: of the traceback submitit frames with dashes when there is one."""
    parts = message.split("-" * 22)
    lines = [line.strip() for line in (parts[1] if len(parts) > 2 else message).splitlines() if line.strip()]
    return lines[-1] if lines else ""


class SubmititJob:
    """A submitit job as the driver follows it (see :class:`~pruneframe.harness.executors.base.Job`)."""

    def __init__(self, run_id: str, job: Any) -> None:
        self.run_id = run_id
        self.job = job
        self.job_id = str(job.job_id)

    def state(self) -> str:
        """submitit's state of the job (Slurm's, or ``RUNNING``/``FINISHED`` for a local process)."""
        return str(self.job.state)

    def done(self) -> bool:
        """Whether the job has ended."""
        return bool(self.job.done())

    def failure(self) -> str | None:
        """``None`` when the job function returned, else the first line of why not (the log's path follows)."""
        try:
            error = self.job.exception()
        except Exception as exc:  # the job never completed (cancelled, pre-empted, its node lost)
            error = exc
        if error is None:
            return None
        return f"{_last_line(str(error)) or type(error).__name__} (log: {self.job.paths.stderr})"

    def cancel(self) -> None:
        """Cancel the job."""
        self.job.cancel(check=False)


class SubmititExecutor:
    """Slurm (or local processes) through ``submitit.AutoExecutor``."""

    name = "submitit"

    def __init__(self, options: SubmititOptions, out: Path, job: Any = run_job) -> None:
        submitit = import_extra("submitit")
        self.options = options
        self.folder = Path(options.folder).absolute() if options.folder else out.absolute() / "jobs"
        try:
            self.executor = submitit.AutoExecutor(folder=self.folder, cluster=options.cluster)
        except RuntimeError as exc:  # no Slurm here ("Could not detect srun")
            raise InputError(f"executor 'submitit': {exc} (cluster=local runs the jobs as processes of this machine)") from None
        self.cluster = self.executor.cluster
        parameters: dict[str, Any] = {
            "name": "pruneframe",
            "timeout_min": options.timeout_min,
            "cpus_per_task": options.cpus,
            "gpus_per_node": options.gpus,
            "mem_gb": options.mem_gb,
            "slurm_partition": options.partition,
            "slurm_account": options.account,
            "slurm_array_parallelism": options.array_parallelism,
        }
        if options.setup:
            parameters[f"{self.cluster}_setup"] = list(options.setup)
        self.executor.update_parameters(**{k: v for k, v in parameters.items() if v is not None})
        self.job = job
        self.local = self.cluster != "slurm"
        self.max_running = options.array_parallelism if self.local else None
        self.detached = not self.local

    def submit(self, calls: list[JobCall]) -> list[SubmititJob]:
        """One job per call: a job array on Slurm (``map_array``), one process each locally."""
        if not calls:
            return []
        if self.local:  # local processes share the machine's cores: each uses the CPUs it was given
            calls = [dataclasses.replace(call, threads=self.options.cpus) for call in calls]
        jobs = self.executor.map_array(self.job, calls)
        handles = [SubmititJob(call.run_id, job) for call, job in zip(calls, jobs)]
        if not self.local:
            self._remember(handles)
        return handles

    def active(self, run_ids: list[str]) -> list[Job]:
        """The Slurm jobs of ``run_ids`` that ``submitted.json`` names and Slurm still holds (none locally)."""
        if self.local:
            return []
        import submitit

        known = self._submitted()
        jobs = [SubmititJob(run_id, submitit.SlurmJob(folder=self.folder, job_id=known[run_id])) for run_id in run_ids if run_id in known]
        return [job for job in jobs if job.state().split()[0] in ACTIVE_STATES]

    def close(self, interrupted: bool) -> None:
        """Nothing to release: Slurm jobs outlive the driver; local ones are cancelled by the driver when it is interrupted."""

    def _submitted(self) -> dict[str, str]:
        path = self.folder / "submitted.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _remember(self, handles: list[SubmititJob]) -> None:
        write_json_atomic(self.folder / "submitted.json", {**self._submitted(), **{h.run_id: h.job_id for h in handles}})
