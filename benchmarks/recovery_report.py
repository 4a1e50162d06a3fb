"""Recovery held fixed across methods: rows, a figure and a docs section from a comparison's ``results.json``.

Usage::

    pruneframe compare --config examples/compare_recovery.yaml
    python benchmarks/recovery_report.py results/compare-recovery-smollm2-135m \
        --json benchmarks/results/recovery_smollm2.json --figure docs/recovery_smollm2.png --docs docs/results.md

Reads only the stored results (no pruning, no training). Writes one JSON row per (method, budget,
recovery) with the ratio to dense per source and the out-of-domain geomean (intervals from the
report's own paired bootstrap), a figure of the ratio against recovery tokens (one curve per method
and recovery, one panel per budget and domain), and replaces the section between the markers
``<!-- recovery:<name>:begin -->`` and ``<!-- recovery:<name>:end -->`` of the docs file.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from pruneframe.util.io import replace_marked_section, write_json_atomic

#: The goals of the recovery issue: the best recovered model's OOD geomean, per keep-ratio.
GOALS = {0.5: 3.0, 0.8: 1.35}


def _keep(budget_label: str) -> float:
    return float(budget_label.split()[1])


def rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per summary group: method, budget, recovery, tokens, ratios and OOD geomean with intervals."""
    summary = results["summary"]
    sources = summary["sources"]
    tokens: dict[tuple[str, str, str], dict[str, Any]] = {}
    for run in results["runs"]:
        if run.get("status") != "ok":
            continue
        protocol = run["protocol"]
        recovery = protocol.get("recovery") or {}
        key = (protocol["method"]["name"], protocol["budget"]["label"], recovery.get("label", "none"))
        tokens[key] = run.get("recovery") or {}
    out = []
    for group in summary["groups"]:
        record = tokens.get((group["method"], group["budget"], group["recovery"]), {})
        measures = group["measures"]
        row: dict[str, Any] = {
            "model": results["meta"]["model"]["spec"],
            "method": group["method"],
            "budget": _keep(group["budget"]),
            "recovery": group["recovery"].split()[0],
            "recovery_label": group["recovery"],
            "tokens": int(record.get("tokens", 0)),
            "recovery_wall_s": record.get("wall_s"),
            "recovery_tokens_per_s": record.get("tokens_per_s"),
        }
        for source in sources:
            measure = measures.get(f"ratio:{source['label']}")
            if measure:
                row[f"ratio_{source['label']}"] = measure["value"]
                row[f"ratio_{source['label']}_interval"] = [measure["low"], measure["high"]]
        ood = measures.get("ood")
        row["ood_geomean"] = ood["value"] if ood else None
        row["ood_geomean_interval"] = [ood["low"], ood["high"]] if ood else None
        row["rank"] = group["ranks"].get("ood")
        out.append(row)
    return sorted(out, key=lambda r: (-r["budget"], r["method"], r["recovery"] != "none", r["recovery"], r["tokens"]))


def _in_domain(results: dict[str, Any]) -> str | None:
    return next((s["label"] for s in results["summary"]["sources"] if s["in_domain"]), None)


def figure(table: list[dict[str, Any]], in_domain: str | None, path: Path) -> None:
    """Ratio to dense against recovery tokens: rows of panels per budget, columns in-domain / OOD geomean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    budgets = sorted({r["budget"] for r in table}, reverse=True)
    columns = [(f"ratio_{in_domain}", f"{in_domain} (in-domain)")] if in_domain else []
    columns.append(("ood_geomean", "out-of-domain geomean"))
    fig, axes = plt.subplots(len(budgets), len(columns), figsize=(6 * len(columns), 4 * len(budgets)), squeeze=False)
    methods = sorted({r["method"] for r in table})
    colours = {m: plt.get_cmap("tab10")(i) for i, m in enumerate(methods)}
    styles = {"distill": "-", "lora": "--"}
    budgets_tokens = sorted({r["tokens"] for r in table if r["recovery"] != "none" and r["tokens"]})
    origin = budgets_tokens[0] / 2 if budgets_tokens else 1  # where the unrecovered model is drawn
    for i, keep in enumerate(budgets):
        for j, (key, title) in enumerate(columns):
            ax = axes[i][j]
            for method in methods:
                base = next((r for r in table if r["budget"] == keep and r["method"] == method and r["recovery"] == "none"), None)
                for recovery, style in styles.items():
                    points = sorted(
                        (r["tokens"], r[key], r.get(f"{key}_interval") or r.get("ood_geomean_interval"))
                        for r in table
                        if r["budget"] == keep and r["method"] == method and r["recovery"] == recovery and r.get(key) is not None
                    )
                    if base is not None and base.get(key) is not None:
                        points = [(origin, base[key], None), *points]  # the unrecovered model, drawn at the axis' left end
                    if len(points) < 2:
                        continue
                    xs, ys = [p[0] for p in points], [p[1] for p in points]
                    ax.plot(xs, ys, style, marker="o", color=colours[method], label=f"{method} {recovery}")
            ax.axhline(1.0, color="grey", lw=0.8)
            if keep in GOALS and key == "ood_geomean":
                ax.axhline(GOALS[keep], color="red", lw=0.8, ls=":", label=f"goal {GOALS[keep]}x")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.xaxis.set_major_locator(FixedLocator([origin, *budgets_tokens]))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: "none" if x == origin else f"{x / 1024:g}k"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
            low, high = ax.get_ylim()
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda y, _: f"{y:g}") if high / low < 10 else NullFormatter())
            ax.set_xlabel("recovery tokens (log scale)")
            ax.set_ylabel("perplexity / dense (log scale)")
            ax.set_title(f"keep {keep}: {title}")
            ax.grid(True, which="both", alpha=0.3)
    seen: dict[str, Any] = {}
    for row in axes:
        for handle, label in zip(*row[-1].get_legend_handles_labels()):
            seen.setdefault(label, handle)
    handles, labels = list(seen.values()), list(seen)
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=8, bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, 0.07 + 0.02 * math.ceil(len(labels) / 5), 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cell(row: dict[str, Any], key: str) -> str:
    value, interval = row.get(key), row.get(f"{key}_interval")
    if value is None:
        return "-"
    return f"{value:.2f} [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else f"{value:.2f}"


def markdown(table: list[dict[str, Any]], results: dict[str, Any], figure_path: str | None) -> list[str]:
    """The section: protocol, one table per budget, goals met or missed, the before/after tau."""
    meta = results["meta"]
    sources = results["summary"]["sources"]
    recovery = meta.get("recovery") or {}
    stream = next(iter(recovery.values()), {})
    lines = [
        f"Model `{meta['model']['spec']}` ({meta['config']['dtype']}); every method pruned once per budget, then each "
        f"recovery applied to that pruned model. Recovery text: `{stream.get('name')}` ({stream.get('origin')}, split "
        f"{stream.get('split')}, {stream.get('tokens_available', 0):,} tokens; development text, checked disjoint from "
        "every evaluation source). Every method got the same sequences in the same order (one `stream_sha256` per "
        "recovery: " + ", ".join(f"{label} `{s['stream_sha256']}`" for label, s in recovery.items()) + ").",
        "",
        "Cells: perplexity / dense on the same windows, 95% paired-bootstrap interval; "
        + ", ".join(
            f"`{s['label']}` {s['windows']} windows of {s['tokens'] + 1} tokens (dense ppl {s['dense_ppl']:.2f}{', in-domain' if s['in_domain'] else ''})"
            for s in sources
        )
        + ".",
        "",
    ]
    keys = [f"ratio_{s['label']}" for s in sources]
    head = [
        "method",
        "recovery",
        "tokens",
        *(s["label"] + (" (in-domain)" if s["in_domain"] else "") for s in sources),
        "OOD geomean",
        "rank",
        "recovery s",
        "tokens/s",
    ]
    for keep in sorted({r["budget"] for r in table}, reverse=True):
        members = [r for r in table if r["budget"] == keep]
        lines += [f"**keep {keep}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in members:
            rate = f"{r['recovery_tokens_per_s']:,.0f}" if r.get("recovery_tokens_per_s") else "-"
            wall = f"{r['recovery_wall_s']:.1f}" if r.get("recovery_wall_s") else "-"
            lines.append(
                "| "
                + " | ".join(
                    [
                        r["method"],
                        r["recovery"],
                        f"{r['tokens']:,}",
                        *(_cell(r, k) for k in keys),
                        _cell(r, "ood_geomean"),
                        str(r.get("rank") or "-"),
                        wall,
                        rate,
                    ]
                )
                + " |"
            )
        recovered = [r for r in members if r["recovery"] != "none" and r.get("ood_geomean") is not None]
        before = [r for r in members if r["recovery"] == "none" and r.get("ood_geomean") is not None]
        if recovered and before:
            best = min(recovered, key=lambda r: r["ood_geomean"])
            unrec = min(before, key=lambda r: r["ood_geomean"])
            goal = GOALS.get(keep)
            verdict = "" if goal is None else f" Goal <= {goal}x: **{'met' if best['ood_geomean'] <= goal else 'missed'}**."
            lines += [
                "",
                f"Best unrecovered OOD geomean: {unrec['method']} {unrec['ood_geomean']:.2f}x; best recovered: "
                f"{best['method']} with {best['recovery_label']} {best['ood_geomean']:.2f}x.{verdict}",
            ]
        taus = results["summary"].get("kendall_tau_recovery", {}).get(f"keep {keep} of prunable params", {})
        if taus:
            lines += [
                "",
                "Kendall tau between the methods' OOD order before and after recovery: "
                + "; ".join(f"{label} {'-' if t is None else f'{t:+.2f}'}" for label, t in taus.items())
                + ".",
            ]
        lines.append("")
    if figure_path:
        lines += [f"![ratio to dense against recovery tokens]({figure_path})", ""]
    return lines


def main() -> None:
    """Parse the arguments, write the rows, the figure and the docs section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a comparison's results folder (holds results.json)")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/recovery_smollm2.json"))
    parser.add_argument("--figure", type=Path, default=Path("docs/recovery_smollm2.png"))
    parser.add_argument("--docs", type=Path, default=None, help="a Markdown file whose recovery section is replaced")
    parser.add_argument("--name", default="smollm2", help="the section's name in the docs file")
    args = parser.parse_args()
    results = json.loads((args.results / "results.json").read_text())
    results["meta"] = results.get("meta") or {k: results[k] for k in ("model", "config", "recovery") if k in results}
    table = rows(results)
    write_json_atomic(args.json, {"source": str(args.results), "goals": GOALS, "rows": table})
    figure(table, _in_domain(results), args.figure)
    if args.docs is not None:
        relative = (
            Path(*([".."] * (len(args.docs.parent.parts) - len(Path("docs").parts)))) / args.figure.relative_to("docs")
            if args.figure.parts[0] == "docs"
            else args.figure
        )
        replace_marked_section(args.docs, f"recovery:{args.name}", "\n".join(markdown(table, results, str(relative))))
    best = {
        keep: min((r["ood_geomean"] for r in table if r["budget"] == keep and r["recovery"] != "none" and r["ood_geomean"] is not None), default=math.nan)
        for keep in sorted({r["budget"] for r in table})
    }
    print(json.dumps({"rows": len(table), "best_recovered_ood_geomean": best}))


if __name__ == "__main__":
    main()
