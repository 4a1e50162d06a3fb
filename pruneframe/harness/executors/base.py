"""What the driver needs of an engine: submit job calls, then ask each job its state until it is done.

A :class:`JobCall` is everything one job needs, as plain data (it travels through the engine's own
serialisation); :func:`~pruneframe.harness.executors.job.run_job` carries it out. An :class:`Executor`
submits calls and returns a :class:`Job` handle per call; it never computes anything itself.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

from pruneframe.harness.executors.options import EXTRAS
from pruneframe.settings.errors import InputError

__all__ = ["JobCall", "Job", "Executor", "JobFailed", "import_extra"]


@dataclass(frozen=True)
class JobCall:
    """One job of a comparison: the dense evaluation (``run_id`` ``dense``) or one (method, budget, seed) cell.

    Attributes:
        run_id: ``dense`` or the cell's run id (:attr:`~pruneframe.harness.prepare.RunSpec.run_id`).
        config: the comparison's validated settings as the driver resolved them (``model_dump(mode="json")``).
        out: the output folder, absolute (on a file system every job sees).
        expected: record run id -> cache key, for every record the job writes: the job refuses to run
            when its own keys differ (another device, dtype, code or data where it runs).
        protocol: the fields behind the first expected key, to name what differs.
        cwd: the driver's working folder (relative paths in ``config`` are read from it).
        env: the driver's ``PRUNEFRAME_*`` environment variables, set in the job.
        threads: the CPU threads the job's torch uses, set where the engine runs jobs side by side without
            confining each to its CPUs (submitit's local processes: its ``cpus`` option), so that jobs
            running at once do not oversubscribe the cores; ``None``: torch's default (Slurm and Ray
            confine a job to the CPUs it asked for).
    """

    run_id: str
    config: dict[str, Any]
    out: str
    expected: dict[str, str]
    protocol: dict[str, Any]
    cwd: str
    env: dict[str, str] = field(default_factory=dict)
    threads: int | None = None


class Job(Protocol):
    """A submitted job as the driver follows it."""

    #: ``dense`` or the cell's run id.
    run_id: str
    #: The engine's id of the job (a Slurm job id, a Ray task id).
    job_id: str

    def state(self) -> str:
        """The engine's word for the job's state (``PENDING``, ``RUNNING``, ``COMPLETED``, ...)."""
        ...

    def done(self) -> bool:
        """Whether the job has ended, one way or another."""
        ...

    def failure(self) -> str | None:
        """Once done: ``None`` when the job function returned, else why it did not (one line)."""
        ...

    def cancel(self) -> None:
        """Stop the job (queued or running)."""
        ...


class Executor(Protocol):
    """An engine that runs :class:`JobCall` s as jobs."""

    #: The executor's name (``submitit``, ``ray``).
    name: str
    #: At most this many of the driver's jobs run at once (the driver submits more as they end);
    #: ``None``: every job is submitted at once and the engine queues them.
    max_running: int | None
    #: Whether its jobs outlive the driver (then ``--no-wait`` may return after submitting).
    detached: bool

    def submit(self, calls: list[JobCall]) -> list[Job]:
        """Submit ``calls`` (one job each, an array where the engine has them); returns their handles in order."""
        ...

    def active(self, run_ids: list[str]) -> list[Job]:
        """The jobs of ``run_ids`` that an earlier driver submitted and that are still queued or running."""
        ...

    def close(self, interrupted: bool) -> None:
        """Release the engine (after an interruption, stop the jobs that would not outlive the driver)."""
        ...


class JobFailed(Exception):
    """A job the others depend on (the dense evaluation) failed; the command line prints it and exits with 1."""


def import_extra(executor: str) -> ModuleType:
    """The engine's module for ``executor``; :class:`InputError` naming the pip extra when it is not installed."""
    module, extra = EXTRAS[executor]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise InputError(f"executor {executor!r} needs {module}, which is not installed: pip install 'pruneframe[{extra}]'") from None
