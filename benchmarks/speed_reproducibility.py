"""Do two runs of the same comparison reproduce each other's speedups? (two ``results.json``, one JSON out)

Usage: ``python benchmarks/speed_reproducibility.py FIRST/results.json SECOND/results.json
[--tolerance 0.10] [--out benchmarks/results/speed_reproducibility.json]``

For every run present in both files (same run id), the prefill and decode speedups that the report
shows (median of alternating dense/pruned repeats) are paired, and the relative difference
``|second - first| / first`` is recorded with whether it is within ``--tolerance``. The two comparisons
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

from pruneframe._io import write_json_atomic

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
            rows.append({"run": run_id, "phase": phase, "first": x, "second": y, "rel_diff": rel,
                         "within": rel <= tolerance})
    return rows


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
        print(f"{row['run']:24s} {row['phase']:8s} {row['first']:.3f}x  {row['second']:.3f}x  "
              f"{100 * row['rel_diff']:5.1f}%{'' if row['within'] else '  OUTSIDE'}")
    within = sum(r["within"] for r in rows)
    worst = max(rows, key=lambda r: r["rel_diff"]) if rows else None
    print(f"{within} of {len(rows)} speedups within {100 * args.tolerance:.0f}%"
          + (f"; largest difference {100 * worst['rel_diff']:.1f}% ({worst['run']} {worst['phase']})" if worst else ""))
    protocol = first.get("config", {}).get("evaluation", {}).get("speed")
    write_json_atomic(args.out, {
        "benchmark": "speed_reproducibility", "files": [str(args.first), str(args.second)], "tolerance": args.tolerance,
        "speed_protocol": protocol, "dtype": first.get("dtype"), "device": first.get("device"),
        "within": within, "total": len(rows), "rows": rows,
    })
    sys.exit(0 if within == len(rows) else 1)


if __name__ == "__main__":
    main()
