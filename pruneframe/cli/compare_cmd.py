"""``pruneframe compare``: every method x budget x seed on one model, under one protocol.

pruneframe compare --config examples/compare_smollm2.yaml
pruneframe compare --methods magnitude,random --budgets 0.8,0.5 --eval-windows 8 --no-speed
pruneframe compare --config examples/compare_smollm2.yaml --protocol wikitext2-2048   # a paper's protocol
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
    make_log,
    silenced,
    validated_settings,
)
from pruneframe.cli.output_paths import folder_lock, writing
from pruneframe.harness import CompareConfig, CompareOutcome, compare
from pruneframe.harness.runner import Prepared, prepare
from pruneframe.pipeline.host import PluginHost
from pruneframe.settings.errors import InputError

__all__ = ["COMMAND", "compare_config"]


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


def compare_config(args: argparse.Namespace) -> CompareConfig:
    """The validated comparison settings: the ``--config`` file with the given flags on top."""
    flags = flag_settings(args)
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


def run(args: argparse.Namespace) -> int:
    """Validate, check every input (nothing is created before), run (resuming from cached runs) and print where the results are.

    One comparison at a time writes into a results folder; a second one is refused by name.
    """
    with silenced(args.quiet):
        config = compare_config(args)
        target = guard_output(config.out_dir(), "results", args.overwrite)
        prep = prepare(config, PluginHost.create(), make_log(args.quiet))
        with writing(target), folder_lock(target):
            outcome = _compare(config, prep, target, args)
    if not args.quiet:
        print(outcome.files["md"].read_text(encoding="utf-8"))
    failed = len(outcome.failed)
    computed = len([run_id for run_id in outcome.computed if run_id != "dense"]) - failed
    dense = "computed" if "dense" in outcome.computed else "cached"
    print(f"results: {outcome.out} (runs: {computed} computed, {len(outcome.runs) - computed - failed} cached, {failed} failed; dense {dense})")
    for run_id, error in outcome.failed.items():
        print(f"pruneframe compare: run {run_id} failed: {error} (traceback in {outcome.out}/runs/{run_id}.json)", file=sys.stderr)
    return 1 if outcome.failed else 0


COMMAND = Command("compare", "compare pruning methods head to head (N methods x M budgets x seeds)", add_arguments, run)
