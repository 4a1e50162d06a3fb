"""``pruneframe compare``: every method x budget x seed on one model, under one protocol.

pruneframe compare --config examples/compare_smollm2.yaml
pruneframe compare --methods magnitude,random --budgets 0.8,0.5 --eval-windows 8 --no-speed
pruneframe compare --config examples/compare_smollm2.yaml --protocol wikitext2-2048   # a paper's protocol
pruneframe compare --config examples/compare_smollm2.yaml --executor submitit --executor-option partition=gpu --executor-option gpus=1

With ``--executor submitit`` or ``ray`` every run is a job (:mod:`pruneframe.harness.executors.driver`);
``--no-wait`` returns once they are submitted (exit 0), ``--collect`` writes the report when every run
has finished and otherwise lists the pending ones (exit 3), ``--dry-run`` lists what would be computed.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from pruneframe.util.io import atomic_dir
from pruneframe.cli.common import (
    Command,
    add_budget_flags,
    add_data_flags,
    add_device_flags,
    add_eval_flags,
    add_method_flags,
    add_model_flags,
    add_output_flags,
    add_seed_flags,
    flag_settings,
    guard_output,
    is_results_folder,
    one_line,
    make_log,
    silenced,
    validated_settings,
)
from pruneframe.cli.executor_flags import add_executor_flags, executor_flag_settings
from pruneframe.cli.output_paths import folder_lock, writing
from pruneframe.harness import CompareConfig, CompareOutcome, compare
from pruneframe.harness.executors.base import JobFailed, import_extra
from pruneframe.harness.executors.driver import Dispatched, dispatch, plan
from pruneframe.harness.runner import Prepared, prepare
from pruneframe.pipeline.host import PluginHost
from pruneframe.settings.errors import InputError

__all__ = ["COMMAND", "PENDING", "compare_config"]

#: Exit code of ``--collect`` while runs are still pending (no report written yet).
PENDING = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The compare flags (all optional; a ``--config`` file can hold them instead)."""
    add_model_flags(parser)
    add_device_flags(parser)
    add_method_flags(parser, many=True)
    add_budget_flags(parser, many=True)
    add_seed_flags(parser, many=True)
    add_data_flags(parser)
    add_eval_flags(parser)
    add_output_flags(
        parser,
        "results folder (default results/compare-<model>); an existing results folder is "
        "reused (its finished runs are cached), any other existing folder is refused",
        overwrite_help="recompute every run instead of reusing the results folder's cached runs; the "
        "new results replace the old folder only when the comparison finishes",
    )
    add_executor_flags(parser)


def compare_config(args: argparse.Namespace) -> CompareConfig:
    """The validated comparison settings: the ``--config`` file with the given flags on top."""
    flags = {**flag_settings(args), **executor_flag_settings(args)}
    for name, settings in args.method_configs or []:
        if name is None:
            raise InputError("--method-config: give the method's name, NAME=JSON")
        flags.setdefault("method_configs", {}).setdefault(name, {}).update(settings)
    return validated_settings(args, CompareConfig, flags)


def _compare(config: CompareConfig, prep: Prepared, target: Path, args: argparse.Namespace) -> CompareOutcome:
    """The comparison written to ``target``; with ``--overwrite`` built in a sibling folder that replaces it at the end."""
    host, progress, log = prep.host, not args.quiet, make_log(args.quiet)
    if not args.overwrite:
        return compare(config, host=host, progress=progress, log=log, out=target, prepared=prep)
    with atomic_dir(target, overwrite=True) as tmp:
        outcome = compare(config, host=host, progress=progress, log=log, out=tmp, prepared=prep)
    files = {name: target / path.relative_to(tmp) for name, path in outcome.files.items()}
    return dataclasses.replace(outcome, out=target, files=files)


def _check_modes(args: argparse.Namespace, config: CompareConfig) -> None:
    """Refuse flags that contradict each other or the executor, before anything slow starts."""
    if args.collect and (args.no_wait or args.dry_run or args.overwrite):
        raise InputError("--collect writes the report of the runs already there; it goes with neither --no-wait, --dry-run nor --overwrite")
    if args.no_wait and (args.overwrite or args.dry_run):
        raise InputError("--no-wait returns before the report is written; it goes with neither --overwrite nor --dry-run")
    if args.no_wait and config.executor != "submitit":
        raise InputError(f"--no-wait needs jobs that outlive the command (executor submitit on Slurm); executor {config.executor!r} runs them while it waits")
    if config.executor != "local":
        import_extra(config.executor)
    if args.no_wait and getattr(config.executor_settings(), "cluster", None) == "local":
        raise InputError("--no-wait needs jobs that outlive the command; with cluster=local they are its own processes")


def _dry_run(config: CompareConfig, prep: Prepared, target: Path, overwrite: bool) -> None:
    """Print every record that would be computed, by job, with its cache key."""
    layout = plan(prep, target / "runs")
    jobs = layout.jobs() if overwrite else layout.pending()
    records = sum(len(files) for files in layout.jobs().values())
    print(f"dry run: executor {config.executor}, {len(jobs)} jobs to run ({sum(len(f) for f in jobs.values())} of {records} records; the rest are cached)")
    for run_id, files in jobs.items():
        for file in files:
            print(f"{run_id}\t{file.run_id}\t{file.key}")


def _print_outcome(outcome: CompareOutcome, quiet: bool) -> int:
    """The report (unless ``quiet``), the summary line and each failed run; returns the exit code."""
    if not quiet:
        print(outcome.files["md"].read_text(encoding="utf-8"))
    failed = len(outcome.failed)
    computed = len([run_id for run_id in outcome.computed if run_id != "dense"]) - failed
    dense = "computed" if "dense" in outcome.computed else "cached"
    print(f"results: {outcome.out} (runs: {computed} computed, {len(outcome.runs) - computed - failed} cached, {failed} failed; dense {dense})")
    for run_id, error in outcome.failed.items():
        print(f"pruneframe compare: run {run_id} failed: {error} (traceback in {outcome.out}/runs/{run_id}.json)", file=sys.stderr)
    return 1 if outcome.failed else 0


def _print_pending(dispatched: Dispatched, args: argparse.Namespace) -> int:
    """The jobs submitted and the runs not finished; returns the exit code (0 after --no-wait, else :data:`PENDING`)."""
    for run_id, job_id in dispatched.submitted:
        print(f"submitted {run_id}: job {job_id}")
    for run_id, state in dispatched.pending.items():
        print(f"pending {run_id}: {state}")
    pending = len(dispatched.pending)
    print(f"results: {dispatched.out}: {pending} jobs not finished; 'pruneframe compare ... --collect' writes the report once every run is there")
    return 0 if args.no_wait else PENDING


def _dispatch(config: CompareConfig, prep: Prepared, target: Path, args: argparse.Namespace) -> Dispatched:
    """The jobs run into ``target`` (with ``--overwrite`` into a sibling folder that replaces it when the report is written)."""
    options = dict(wait=not args.no_wait, submit=not args.collect, progress=not args.quiet, log=make_log(args.quiet))
    if not args.overwrite:
        return dispatch(config, prep, target, **options)
    with atomic_dir(target, overwrite=True) as tmp:
        dispatched = dispatch(config, prep, tmp, **options)
    outcome = dispatched.outcome
    files = {name: target / path.relative_to(tmp) for name, path in outcome.files.items()}
    return dataclasses.replace(dispatched, out=target, outcome=dataclasses.replace(outcome, out=target, files=files))


def run(args: argparse.Namespace) -> int:
    """Validate, check every input (nothing is created before), run (resuming from cached runs) and print where the results are.

    One comparison at a time writes into a results folder; a second one is refused by name. With an
    executor other than ``local`` the runs are jobs; a failed dense job is reported in one line (exit 1).
    """
    outcome, dispatched = None, None
    try:
        with silenced(args.quiet):
            config = compare_config(args)
            _check_modes(args, config)
            target = guard_output(config.out_dir(), "results", args.overwrite)
            if args.collect and not is_results_folder(target):
                raise InputError(f"--collect: --out {str(target)!r} holds no runs yet; run the comparison first")
            prep = prepare(config, PluginHost.create(), make_log(args.quiet))
            if not args.dry_run:
                with writing(target), folder_lock(target):
                    if config.executor == "local" and not args.collect:
                        outcome = _compare(config, prep, target, args)
                    else:
                        dispatched = _dispatch(config, prep, target, args)
                        outcome = dispatched.outcome
    except JobFailed as exc:
        print(f"pruneframe compare: error: {one_line(str(exc))}", file=sys.stderr)
        return 1
    if args.dry_run:
        _dry_run(config, prep, target, args.overwrite)
        return 0
    if outcome is None and dispatched is not None:
        return _print_pending(dispatched, args)
    return _print_outcome(outcome, args.quiet)


COMMAND = Command("compare", "compare pruning methods head to head (N methods x M budgets x seeds)", add_arguments, run)
