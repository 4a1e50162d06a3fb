"""``pruneframe report``: rewrite a comparison's report and figures from its stored ``results.json``.

    pruneframe report results/compare-smollm2-135m
    pruneframe report results/compare-gemma3-270m --figures-only --out docs --suffix _gemma3

Nothing is pruned or evaluated again: the records in ``results.json`` (per-window NLLs, per-item
correctness, speeds) hold every number, and the summary, table and figures are recomputed from them by
the code that wrote them. ``--figures-only`` writes the PNG figures alone (e.g. into a documentation
folder), ``--suffix`` tells apart the figures of several comparisons written into one folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pruneframe.cli.common import Command, is_results_folder
from pruneframe.harness.config import InputError
from pruneframe.harness.figures import render
from pruneframe.harness.report import read_results, write_bytes_atomic, write_results
from pruneframe.harness.summary import nested_get, summarise

__all__ = ["COMMAND"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The results folder, where to write, and whether to write the figures only."""
    parser.add_argument("results", metavar="RESULTS_DIR", help="a comparison's output folder (holding results.json)")
    parser.add_argument("--out", metavar="DIR", help="where to write (default: RESULTS_DIR itself)")
    parser.add_argument("--figures-only", action="store_true", help="write the PNG figures only, not results.json/csv/md")
    parser.add_argument("--suffix", default="", metavar="TEXT", help="appended to every figure's file name (with --figures-only), e.g. _gemma3")


def run(args: argparse.Namespace) -> int:
    """Read ``results.json``, then write the report (or the figures) and list the files written."""
    folder = Path(args.results).expanduser()
    source = folder / "results.json"
    if not source.is_file():
        raise InputError(f"RESULTS_DIR {str(folder)!r} holds no results.json; run pruneframe compare first")
    if args.suffix and not args.figures_only:
        raise InputError(f"--suffix {args.suffix!r} renames figures only; add --figures-only")
    try:
        meta, dense, runs = read_results(source)
    except ValueError as exc:  # also json.JSONDecodeError
        raise InputError(str(exc) if str(source) in str(exc) else f"{source}: {exc}") from exc
    out = Path(args.out).expanduser() if args.out else folder
    if not args.figures_only and out.resolve() != folder.resolve() and out.exists() and any(out.iterdir()) and not is_results_folder(out):
        raise InputError(
            f"--out {str(out)!r} is a non-empty folder that holds no comparison; the full report would "
            "overwrite its results.md/csv/json (use --figures-only to write figures there)"
        )
    if args.figures_only:
        summary = summarise(dense, runs, nested_get(meta, "calibration", "domain") or None)
        images = render(summary, dense, nested_get(meta, "units", "total_params"))
        files = {name: write_bytes_atomic(out / f"{name}{args.suffix}.png", image) for name, image in images.items()}
    else:
        files = write_results(out, meta, dense, runs)
    for path in files.values():
        print(path)
    return 0


COMMAND = Command("report", "rewrite a comparison's report and figures from its results.json (nothing is rerun)", add_arguments, run)
