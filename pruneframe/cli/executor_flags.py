"""The ``compare`` flags that say where the runs are computed: ``--executor``, ``--executor-option`` and the waiting modes.

Like every flag, they have no argparse defaults: :class:`~pruneframe.harness.config.CompareConfig` owns the
defaults and checks the values (an executor's options are checked by its own settings model).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from pruneframe.harness.executors.options import EXECUTORS

__all__ = ["add_executor_flags", "executor_flag_settings"]


def _executor_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE``: the value read as JSON when it is JSON (``2``, ``true``, ``["a", "b"]``), else as text."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"--executor-option {text!r}: expected KEY=VALUE, e.g. partition=gpu")
    try:
        return key.strip(), json.loads(value)
    except (json.JSONDecodeError, RecursionError):
        return key.strip(), value


def add_executor_flags(parser: argparse.ArgumentParser) -> None:
    """``--executor``, ``--executor-option``, ``--no-wait``, ``--collect`` and ``--dry-run`` (``compare``)."""
    parser.add_argument(
        "--executor",
        choices=EXECUTORS,
        help="where the runs are computed: local (this process, the default), submitit (one Slurm job per run; "
        "cluster=local runs them as local processes) or ray (one Ray task per run)",
    )
    parser.add_argument(
        "--executor-option",
        dest="executor_options",
        action="append",
        type=_executor_option,
        metavar="KEY=VALUE",
        help="an executor setting, repeatable: submitit's partition, account, gpus, cpus, mem_gb, timeout_min, "
        "array_parallelism, cluster, setup, folder; ray's address, num_gpus, num_cpus, max_retries",
    )
    parser.add_argument("--no-wait", action="store_true", help="submit the jobs and return (Slurm); --collect (or a rerun) writes the report later")
    parser.add_argument("--collect", action="store_true", help="submit nothing: write the report when every run is finished, else list the pending ones")
    parser.add_argument("--dry-run", action="store_true", help="list the runs that would be computed, with their cache keys, and run nothing")


def executor_flag_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``executor`` and ``executor_options`` from the executor flags (absent flags are left out)."""
    out: dict[str, Any] = {}
    if getattr(args, "executor", None) is not None:
        out["executor"] = args.executor
    if getattr(args, "executor_options", None):
        out["executor_options"] = dict(args.executor_options)
    return out
