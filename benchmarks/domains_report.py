"""Render the across-domains study (``grasprune_domains.json``) as markdown tables, choice included.

Usage: ``python benchmarks/domains_report.py [--results benchmarks/results/grasprune_domains.json]``
prints, per budget, every run's ratio to dense on each source with a 95% paired-bootstrap interval
over windows, the geometric means over the out-of-domain development and test sources, and which
configuration the study's fixed rule selects (lowest development out-of-domain geomean among the
GRASPrune configurations; the test columns play no part in it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pruneframe.evaluation.stats import ratio_interval

DEV = ("wiki-valid-heldout", "moby-dick-dev", "python-docs-dev")
TEST = ("wikitext-2-test", "moby-dick-test", "python-docs-test")


def cell(run: dict[str, Any], dense: dict[str, Any], source: str, seq_len: int) -> str:
    """``ratio [low, high]`` of one run on one source."""
    dense_nll = dense[source]["window_nll"]
    interval = ratio_interval(run["eval"][source]["window_nll"], dense_nll, [seq_len - 1] * len(dense_nll))
    return f"{interval.value:.2f} [{interval.low:.2f}, {interval.high:.2f}]"


def tables(data: dict[str, Any]) -> list[str]:
    """One markdown table per budget, and the selection under each."""
    dense, protocol = data["dense"], data["protocol"]
    seq_len = next(iter(protocol["evaluation"].values()))["seq_len"]
    windows = next(iter(protocol["evaluation"].values()))["windows"]
    head = ["run", *DEV, "dev OOD geomean", *TEST, "test OOD geomean"]
    out = [
        f"Dense perplexity ({windows} windows of {seq_len} tokens per source): "
        + ", ".join(f"{name} {dense[name]['ppl']:.2f}" for name in (*DEV, *TEST))
        + ".",
        "",
    ]
    for keep in sorted({run["keep"] for run in data["runs"]}, reverse=True):
        runs = sorted((run for run in data["runs"] if run["keep"] == keep), key=lambda r: r["method"] != "grasprune")
        out += [
            f"**keep {keep}** (ratio of perplexity to dense, 95% paired-bootstrap interval over windows)",
            "",
            "| " + " | ".join(head) + " |",
            "|" + " --- |" * len(head),
        ]
        for run in runs:
            label = run["run"] if run["method"] == "grasprune" else f"{run['run']} (baseline)"
            cells = [cell(run, dense, s, seq_len) for s in DEV] + [f"{run['dev_ood_geomean']:.2f}"]
            cells += [cell(run, dense, s, seq_len) for s in TEST] + [f"{run['test_ood_geomean']:.2f}"]
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        grasp = [run for run in runs if run["method"] == "grasprune"]
        if grasp:
            best = min(grasp, key=lambda r: (r["dev_ood_geomean"], r["ratio_to_dense"]["wiki-valid-heldout"]))
            others = sorted(grasp, key=lambda r: r["dev_ood_geomean"])
            out += [
                "",
                f"Selected at keep {keep} by the development rule: **{best['run']}** (dev OOD geomean "
                f"{best['dev_ood_geomean']:.2f}; order: " + ", ".join(f"{r['run']} {r['dev_ood_geomean']:.2f}" for r in others) + ").",
            ]
        out.append("")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", default=str(Path(__file__).parent / "results" / "grasprune_domains.json"))
    args = parser.parse_args()
    data = json.loads(Path(args.results).read_text())
    if not data.get("runs"):
        raise SystemExit(f"{args.results} has no finished runs yet")
    print("\n".join(tables(data)))


if __name__ == "__main__":
    main()
