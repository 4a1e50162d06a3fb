"""The executors' names and settings: one pydantic model per executor, each refusing options it does not know."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["ExecutorName", "EXECUTORS", "EXTRAS", "LocalOptions", "SubmititOptions", "RayOptions", "OPTIONS", "options_model"]

#: Where the runs are computed (see :mod:`pruneframe.harness.executors`).
ExecutorName = Literal["local", "submitit", "ray"]
#: Every executor, the default first.
EXECUTORS: tuple[str, ...] = ("local", "submitit", "ray")
#: Executor -> (the module it imports, the extra of pruneframe that installs it).
EXTRAS: dict[str, tuple[str, str]] = {"submitit": ("submitit", "slurm"), "ray": ("ray", "ray")}

PositiveInt = Annotated[int, Field(ge=1)]


class LocalOptions(BaseModel):
    """``local`` runs every job in this process, one after the other; it takes no options."""

    model_config = ConfigDict(extra="forbid")


class SubmititOptions(BaseModel):
    """Slurm through submitit: each run one element of a job array.

    Attributes:
        cluster: ``slurm``, or ``local`` to run the jobs as processes of this machine (submitit's
            ``LocalExecutor``); default: Slurm when ``sbatch`` is found, else local.
        partition: the Slurm partition (default: the cluster's).
        account: the Slurm account to charge (default: the user's).
        gpus: GPUs per job.
        cpus: CPUs per job (Slurm confines the job to them; local processes set torch to as many threads).
        mem_gb: memory per job in GB (default: the partition's).
        timeout_min: each job's time limit in minutes.
        array_parallelism: at most this many jobs run at once (Slurm's ``%N`` of the array; with
            ``cluster: local`` the driver starts the next job when one ends).
        setup: shell lines run before each job (``module load ...``, ``source .venv/bin/activate``).
        folder: where submitit keeps the jobs' pickles and logs (default ``<out>/jobs``); on the shared
            file system, like the output folder.
    """

    model_config = ConfigDict(extra="forbid")

    cluster: Literal["slurm", "local"] | None = None
    partition: str | None = None
    account: str | None = None
    gpus: Annotated[int, Field(ge=0)] = 0
    cpus: PositiveInt = 1
    mem_gb: Annotated[float, Field(gt=0)] | None = None
    timeout_min: PositiveInt = 240
    array_parallelism: PositiveInt = 16
    setup: list[str] = Field(default_factory=list)
    folder: str | None = None


class RayOptions(BaseModel):
    """Ray tasks on an existing cluster (or a Ray instance started on this machine).

    Attributes:
        address: the cluster to join (``auto``, ``ray://host:10001``, ``host:6379``); default: start a
            Ray instance on this machine for the comparison and stop it at the end.
        num_gpus: GPUs each task requests.
        num_cpus: CPUs each task requests (tasks run at once as far as the cluster's CPUs and GPUs allow).
        max_retries: how often Ray reruns a task whose worker died (a node lost); a rerun of the command
            also redoes every missing run.
    """

    model_config = ConfigDict(extra="forbid")

    address: str | None = None
    num_gpus: Annotated[float, Field(ge=0)] = 0
    num_cpus: Annotated[float, Field(gt=0)] = 1
    max_retries: Annotated[int, Field(ge=0)] = 0


#: Executor -> its settings model.
OPTIONS: dict[str, type[BaseModel]] = {"local": LocalOptions, "submitit": SubmititOptions, "ray": RayOptions}


def options_model(executor: str, options: dict[str, Any]) -> BaseModel:
    """``options`` validated by ``executor``'s model; raises ``ValueError`` naming an unknown or invalid option."""
    model = OPTIONS[executor]
    unknown = sorted(set(options) - set(model.model_fields))
    if unknown:
        known = ", ".join(model.model_fields) or "none"
        raise ValueError(f"executor {executor!r} has no option {', '.join(map(repr, unknown))} (its options: {known})")
    try:
        return model.model_validate(options)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"executor {executor!r}: {problems}") from None
