"""``ray``: every job a Ray task, on an existing cluster (``address``) or on a Ray instance started for the comparison.

Each task asks for ``num_cpus`` and ``num_gpus``; Ray runs as many at once as the cluster's resources
allow. A Ray connection that is already open in the process (``ray.init`` called by the caller) is used
as it is and left open; otherwise the executor opens one (starting a local instance when no ``address``
is given) and shuts it down at the end. Ray's tasks end with the driver that submitted them, so the
driver always waits for them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pruneframe.harness.executors.base import JobCall, import_extra
from pruneframe.harness.executors.job import run_job
from pruneframe.harness.executors.options import RayOptions

__all__ = ["RayJob", "RayExecutor"]


class RayJob:
    """A Ray task as the driver follows it (see :class:`~pruneframe.harness.executors.base.Job`)."""

    def __init__(self, run_id: str, ref: Any) -> None:
        self.run_id = run_id
        self.ref = ref
        self.job_id = ref.task_id().hex()[:12]
        self._done = False

    def done(self) -> bool:
        """Whether the task has ended (its result or its error is ready)."""
        if not self._done:
            import ray

            ready, _ = ray.wait([self.ref], timeout=0)
            self._done = bool(ready)
        return self._done

    def state(self) -> str:
        """``SUBMITTED`` until the task ends, then ``FINISHED``."""
        return "FINISHED" if self.done() else "SUBMITTED"

    def failure(self) -> str | None:
        """``None`` when the task returned, else the last line of its error."""
        import ray

        try:
            ray.get(self.ref)
        except Exception as exc:  # the task raised, or its worker died
            lines = [line for line in str(exc).splitlines() if line.strip()]
            return lines[-1].strip() if lines else type(exc).__name__
        return None

    def cancel(self) -> None:
        """Cancel the task (its worker is stopped when it runs)."""
        import ray

        ray.cancel(self.ref, force=True)


class RayExecutor:
    """Ray tasks (see the module's docstring)."""

    name = "ray"
    max_running = None
    detached = False

    def __init__(self, options: RayOptions, out: Path, job: Any = run_job) -> None:
        ray = import_extra("ray")
        self.owns_instance = not ray.is_initialized()
        if self.owns_instance:
            ray.init(address=options.address, log_to_driver=False, include_dashboard=False, logging_level=logging.WARNING)
        self.remote = ray.remote(num_cpus=options.num_cpus, num_gpus=options.num_gpus, max_retries=options.max_retries)(job)

    def submit(self, calls: list[JobCall]) -> list[RayJob]:
        """One task per call."""
        return [RayJob(call.run_id, self.remote.remote(call)) for call in calls]

    def active(self, run_ids: list[str]) -> list[RayJob]:
        """None: an earlier driver's tasks ended with it."""
        return []

    def close(self, interrupted: bool) -> None:
        """Shut down the Ray connection (and the local instance) the executor opened."""
        if self.owns_instance:
            import ray

            ray.shutdown()
