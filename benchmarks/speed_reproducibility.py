"""Do two runs of the same comparison reproduce each other's speedups? (two ``results.json``, one JSON out)

Usage: ``python benchmarks/speed_reproducibility.py FIRST/results.json SECOND/results.json
[--tolerance 0.10] [--out benchmarks/results/speed_reproducibility.json]``

For every run present in both files (same run id), the prefill and decode speedups are paired, and
the relative difference ``|second - first| / first`` is recorded with whether it is within
``--tolerance``; the same for every row of the report (a method at a budget: its seeds' mean speedup,
which is what the report's speed columns show). The two comparisons
must have been computed, not read from one cache: the script refuses files whose runs share cache keys
and finish times. Prints one line per run and a summary; exits 1 when any speedup differs by more
than the tolerance.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pruneframe.util.io import write_json_atomic

RESULT = Path(__file__).resolve().parent / "results" / "speed_reproducibility.json"
PHASES = ("prefill", "decode")


def speedups(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Run id -> the speed evaluator's measured speedups and when the run finished."""
    out = {}
    for run in results["runs"]:
        speed = (run.get("eval") or {}).get("speed")
        if run.get("status") == "ok" and speed:
            out[run["run_id"]] = {"measured": speed["measured_speedup"], "finished_at": run.get("finished_at")}
    return out


def pair(first: dict[str, Any], second: dict[str, Any], tolerance: float) -> list[dict[str, Any]]:
    """One row per run id and phase present in both comparisons."""
    a, b = speedups(first), speedups(second)
    shared = sorted(set(a) & set(b))
    if any(a[r]["finished_at"] == b[r]["finished_at"] for r in shared):
        raise SystemExit("the two files share finished runs (one cache?): rerun the second into a fresh --out")
    rows = []
    for run_id in shared:
        for phase in PHASES:
            x, y = a[run_id]["measured"][phase], b[run_id]["measured"][phase]
            rel = abs(y - x) / x
            rows.append({"run": run_id, "phase": phase, "first": x, "second": y, "rel_diff": rel, "within": rel <= tolerance})
    return rows


def rows_of(pairs: list[dict[str, Any]], first: dict[str, Any], tolerance: float) -> list[dict[str, Any]]:
    """The report's rows: per (method, budget) and phase, the seeds' mean speedup in each comparison."""
    group = {run["run_id"]: (run["prune"]["method"], run["prune"]["budget_label"]) for run in first["runs"] if run.get("prune")}
    merged: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in pairs:
        merged.setdefault((*group[row["run"]], row["phase"]), []).append(row)
    out = []
    for (method, budget, phase), members in sorted(merged.items()):
        x = sum(m["first"] for m in members) / len(members)
        y = sum(m["second"] for m in members) / len(members)
        rel = abs(y - x) / x
        out.append(
            {
                "method": method,
                "budget": budget,
                "phase": phase,
                "runs": [m["run"] for m in members],
                "first": x,
                "second": y,
                "rel_diff": rel,
                "within": rel <= tolerance,
            }
        )
    return out


def main() -> None:
    """Pair the speedups of two comparisons, print them, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--tolerance", type=float, default=0.10, help="largest relative difference accepted")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    first, second = (json.loads(p.read_text()) for p in (args.first, args.second))
    rows = pair(first, second, args.tolerance)
    for row in rows:
        print(
            f"{row['run']:24s} {row['phase']:8s} {row['first']:.3f}x  {row['second']:.3f}x  {100 * row['rel_diff']:5.1f}%{'' if row['within'] else '  OUTSIDE'}"
        )
    within = sum(r["within"] for r in rows)
    worst = max(rows, key=lambda r: r["rel_diff"]) if rows else None
    print(
        f"runs: {within} of {len(rows)} speedups within {100 * args.tolerance:.0f}%"
        + (f"; largest difference {100 * worst['rel_diff']:.1f}% ({worst['run']} {worst['phase']})" if worst else "")
    )
    table = rows_of(rows, first, args.tolerance)
    table_within = sum(r["within"] for r in table)
    top = max(table, key=lambda r: r["rel_diff"]) if table else None
    print(
        f"report rows (seeds averaged): {table_within} of {len(table)} speedups within {100 * args.tolerance:.0f}%"
        + (f"; largest difference {100 * top['rel_diff']:.1f}% ({top['method']} {top['budget']} {top['phase']})" if top else "")
    )
    protocol = first.get("config", {}).get("evaluation", {}).get("speed")
    write_json_atomic(
        args.out,
        {
            "benchmark": "speed_reproducibility",
            "files": [str(args.first), str(args.second)],
            "tolerance": args.tolerance,
            "speed_protocol": protocol,
            "dtype": first.get("dtype"),
            "device": first.get("device"),
            "within": within,
            "total": len(rows),
            "runs": rows,
            "report_rows_within": table_within,
            "report_rows_total": len(table),
            "report_rows": table,
        },
    )
    sys.exit(0 if within == len(rows) and table_within == len(table) else 1)


if __name__ == "__main__":
    main()
