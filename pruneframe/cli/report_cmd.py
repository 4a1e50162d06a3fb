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
import re

from pruneframe.cli.common import Command, is_results_folder
from pruneframe.cli.output_paths import check_output_path, writing
from pruneframe.settings.errors import InputError
from pruneframe.harness.figures import render
from pruneframe.harness.report import read_results, write_bytes_atomic, write_results
from pruneframe.harness.summary import nested_get, summarise
from pruneframe.util.paths import name_problem, user_path

__all__ = ["COMMAND", "SUFFIX"]

#: What ``--suffix`` may hold: part of a file name (letters, digits, ``._+-``), never a path; short enough
#: that every figure's name stays within a file system's limit.
SUFFIX = re.compile(r"[A-Za-z0-9._+-]{0,64}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The results folder, where to write, and whether to write the figures only."""
    parser.add_argument("results", metavar="RESULTS_DIR", help="a comparison's output folder (holding results.json)")
    parser.add_argument("--out", metavar="DIR", help="where to write (default: RESULTS_DIR itself)")
    parser.add_argument("--figures-only", action="store_true", help="write the PNG figures only, not results.json/csv/md")
    parser.add_argument("--suffix", default="", metavar="TEXT", help="appended to every figure's file name (with --figures-only), e.g. _gemma3")


def run(args: argparse.Namespace) -> int:
    """Read ``results.json``, then write the report (or the figures) and list the files written."""
    problem = name_problem(args.results)
    if problem is not None:
        raise InputError(f"RESULTS_DIR {args.results!r}: {problem}")
    folder = user_path(args.results)
    source = folder / "results.json"
    if not source.is_file():
        raise InputError(f"RESULTS_DIR {str(folder)!r} holds no results.json; run pruneframe compare first")
    if args.suffix and not args.figures_only:
        raise InputError(f"--suffix {args.suffix!r} renames figures only; add --figures-only")
    if not SUFFIX.fullmatch(args.suffix):
        raise InputError(f"--suffix {args.suffix!r}: up to 64 letters, digits and '._+-' (a part of a file name, not a path)")
    try:
        meta, dense, runs = read_results(source)
    except OSError as exc:
        raise InputError(f"{str(source)!r}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    out = check_output_path(args.out, "--out", "folder") if args.out is not None else check_output_path(args.results, "RESULTS_DIR", "folder")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {str(out)!r} is a file; expected a folder")
    if not args.figures_only and out.resolve() != folder.resolve() and out.exists() and any(out.iterdir()) and not is_results_folder(out):
        raise InputError(
            f"--out {str(out)!r} is a non-empty folder that holds no comparison; the full report would "
            "overwrite its results.md/csv/json (use --figures-only to write figures there)"
        )
    if args.figures_only:
        summary = summarise(dense, runs, nested_get(meta, "calibration", "domain") or None)
        images = render(summary, dense, nested_get(meta, "units", "total_params"))
        with writing(out):
            files = {name: write_bytes_atomic(out / f"{name}{args.suffix}.png", image) for name, image in images.items()}
    else:
        with writing(out):
            files = write_results(out, meta, dense, runs)
    for path in files.values():
        print(path)
    return 0


COMMAND = Command("report", "rewrite a comparison's report and figures from its results.json (nothing is rerun)", add_arguments, run)
