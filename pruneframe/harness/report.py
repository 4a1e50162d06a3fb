"""Comparison outputs: ``results.json``, ``results.csv``, ``results.md`` and two PNG plots, all written atomically.

One row per run (plus the dense model): kept parameters, perplexity and its ratio to the dense model,
zero-shot accuracy per task, measured and ideal (FLOPs) speedups, prune time, tokens read, peak RSS.
In the Markdown table the best value of each column among the methods at the same budget is bold.
"""

from __future__ import annotations

import csv
import io
import json
import os
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pruneframe._io import write_json_atomic, write_text_atomic

__all__ = ["rows", "markdown", "csv_text", "protocol_key", "write_results", "write_bytes_atomic"]

_MB = 2**20


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary sibling and ``os.replace`` (as :mod:`pruneframe._io` does for text)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _row(record: dict[str, Any], dense_ppl: float | None, dense_params: int | None) -> dict[str, Any]:
    """The flat numbers of one record (dense or pruned)."""
    ev, report = record.get("eval", {}), _get(record, "prune", "report") or {}
    ppl = _get(ev, "perplexity", "ppl")
    tasks = _get(ev, "zeroshot", "tasks") or {}
    accs = {name: row.get("acc") for name, row in tasks.items()}
    known = [a for a in accs.values() if a is not None]
    dense = record.get("kind") == "dense"
    memory = _get(record, "prune", "memory") or {}
    return {
        "run_id": record.get("run_id"),
        "kind": record.get("kind"),
        "status": record.get("status"),
        "method": "dense" if dense else _get(record, "protocol", "method", "name"),
        "budget": "-" if dense else _get(record, "protocol", "budget", "label"),
        "seed": None if dense else _get(record, "protocol", "seed"),
        "budget_prunable_params": report.get("budget_prunable_params"),
        "kept_params": dense_params if dense else report.get("kept_params"),
        "kept_fraction": 1.0 if dense else report.get("kept_fraction_of_total"),
        "kept_prunable_fraction": 1.0 if dense else report.get("kept_fraction_of_prunable"),
        "ppl": ppl,
        "ppl_ratio": ppl / dense_ppl if ppl is not None and dense_ppl else None,
        **{f"acc_{name}": acc for name, acc in accs.items()},
        "acc_mean": statistics.fmean(known) if known else None,
        "prefill_speedup": _get(ev, "speed", "measured_speedup", "prefill"),
        "decode_speedup": _get(ev, "speed", "measured_speedup", "decode"),
        "ideal_speedup": _get(ev, "speed", "ideal_speedup"),
        "prune_s": _get(record, "prune", "wall_s"),
        "tokens_processed": _get(record, "prune", "tokens_processed"),
        "peak_rss_mb": memory["peak_rss_bytes"] / _MB if memory.get("peak_rss_bytes") else None,
        "delta_rss_mb": memory["delta_rss_bytes"] / _MB if memory.get("delta_rss_bytes") is not None else None,
        "error": record.get("error"),
    }


def rows(dense: dict[str, Any], runs: list[dict[str, Any]], dense_params: int | None) -> list[dict[str, Any]]:
    """Flat rows: the dense model first, then every run in order."""
    dense_ppl = _get(dense, "eval", "perplexity", "ppl")
    return [_row(record, dense_ppl, dense_params) for record in [dense, *runs]]


def csv_text(table: list[dict[str, Any]]) -> str:
    """The rows as CSV (columns: the union of every row's keys, in first-seen order)."""
    columns: list[str] = []
    for row in table:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    return buffer.getvalue()


@dataclass(frozen=True)
class _Column:
    """A Markdown column: header, cell text, and which value is best (None: not ranked)."""

    header: str
    cell: Callable[[dict[str, Any]], str]
    value: Callable[[dict[str, Any]], float | None] = lambda row: None
    better: Literal["min", "max"] | None = None


def _num(header: str, key: str, fmt: str, better: Literal["min", "max"] | None) -> _Column:
    def cell(row: dict[str, Any]) -> str:
        return "-" if row.get(key) is None else format(row[key], fmt)
    return _Column(header, cell, lambda row: row.get(key), better)


def _speed(header: str, key: str) -> _Column:
    def cell(row: dict[str, Any]) -> str:
        if row.get(key) is None:
            return "-"
        return f"{row[key]:.2f}x / {row['ideal_speedup']:.2f}x" if row.get("ideal_speedup") else f"{row[key]:.2f}x"
    return _Column(header, cell, lambda row: row.get(key), "max")


def _count(n: int) -> str:
    """``134.5M`` / ``4.20M`` for large counts, ``45,360`` for small ones."""
    return f"{n / 1e6:.1f}M" if n >= 1e7 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n:,}"


def _columns(table: list[dict[str, Any]]) -> list[_Column]:
    tasks = sorted({k for row in table for k in row if k.startswith("acc_") and k != "acc_mean"})
    kept = _Column("kept params", lambda r: "-" if r["kept_params"] is None else
                   f"{_count(r['kept_params'])} ({r['kept_fraction']:.1%})")
    columns = [_Column("method", lambda r: str(r["method"])), _Column("budget", lambda r: str(r["budget"]))]
    if len({r["seed"] for r in table if r["kind"] != "dense"}) > 1:
        columns.append(_Column("seed", lambda r: "-" if r["seed"] is None else str(r["seed"])))
    columns += [kept, _num("ppl", "ppl", ".3f", "min"), _num("ppl / dense", "ppl_ratio", ".3f", "min")]
    columns += [_num(f"acc {t.removeprefix('acc_')}", t, ".3f", "max") for t in tasks]
    if tasks:
        columns.append(_num("mean acc", "acc_mean", ".3f", "max"))
    return columns + [
        _speed("prefill speedup (meas / ideal)", "prefill_speedup"),
        _speed("decode speedup (meas / ideal)", "decode_speedup"),
        _num("prune time (s)", "prune_s", ".1f", "min"),
        _num("calib tokens", "tokens_processed", ",", None),
        _Column("peak RSS MB (+ while pruning)", _rss_cell, lambda row: row.get("delta_rss_mb"), "min"),
    ]


def _rss_cell(row: dict[str, Any]) -> str:
    """Process peak RSS while pruning, and how far it rose above the RSS at the start (what is ranked)."""
    if row.get("peak_rss_mb") is None:
        return "-"
    return f"{row['peak_rss_mb']:,.0f} (+{row['delta_rss_mb']:,.0f})"


def _best(table: list[dict[str, Any]], column: _Column) -> dict[str, str]:
    """Per budget, the cell text of the best pruned row (ties as displayed are all bold)."""
    best: dict[str, tuple[float, str]] = {}
    for row in table:
        value = column.value(row)
        if row["kind"] == "dense" or value is None or column.better is None:
            continue
        current = best.get(row["budget"])
        if current is None or (value < current[0] if column.better == "min" else value > current[0]):
            best[row["budget"]] = (value, column.cell(row))
    return {budget: text for budget, (_, text) in best.items()}


def markdown(table: list[dict[str, Any]], meta: dict[str, Any], dense: dict[str, Any]) -> str:
    """The results as a Markdown document: the protocol, then one table row per model."""
    columns = _columns(table)
    bests = [_best(table, c) for c in columns]
    lines = [f"# Comparison on {meta['model']['spec']}", "", *_protocol_lines(meta, dense), "",
             "Bold: the best value of each column among the methods at the same budget.", "",
             "| " + " | ".join(c.header for c in columns) + " |",
             "| " + " | ".join("---" for _ in columns) + " |"]
    for row in table:
        cells = []
        for column, best in zip(columns, bests):
            text = column.cell(row)
            bold = row["kind"] != "dense" and text != "-" and best.get(row["budget"]) == text
            cells.append(f"**{text}**" if bold else text)
        lines.append("| " + " | ".join(cells) + " |")
    failed = [row for row in table if row["status"] == "failed"]
    if failed:
        lines += ["", "Failed runs (not cached; rerun the comparison to retry them):", ""]
        lines += [f"- `{row['run_id']}`: {row['error']}" for row in failed]
    return "\n".join(lines) + "\n"


def _protocol_lines(meta: dict[str, Any], dense: dict[str, Any]) -> list[str]:
    cal, ev, cfg = meta["calibration"], meta["evaluation"], meta["config"]
    targets = ", ".join(f"{slug}: {n:,}" for slug, n in meta["budgets"].items())
    lines = [
        f"- model: `{meta['model']['spec']}` ({cfg['dtype']}), {meta['units']['total_params']:,} parameters, "
        f"{meta['units']['prunable_params']:,} prunable",
        f"- budgets ({cfg['budget_kind']}), as prunable parameters every method must meet: {targets}",
        f"- calibration: `{cal['name']}` ({cal['origin']}, split {cal['split']}), {cal['tokens']:,} tokens, "
        f"fingerprint {cal['fingerprint']}",
    ]
    if "perplexity" in ev:
        p, d = ev["perplexity"]["config"], ev["perplexity"]["data"]
        lines.append(f"- perplexity: `{d['name']}` ({d['origin']}, split {d['split']}, fingerprint {d['fingerprint']}), "
                     f"{p['num_windows']} windows x {p['seq_len']} tokens")
    if "zeroshot" in ev:
        z = ev["zeroshot"]["config"]
        lines.append(f"- zero-shot: {', '.join(z['tasks'])} (limit {z['limit']} items per task)")
    speed = _get(dense, "eval", "speed", "model")
    if speed:
        lines.append(f"- speed: dense {speed['prefill_tokens_per_s']:.0f} prefill tok/s, "
                     f"{speed['decode_tokens_per_s']:.1f} decode tok/s; ideal = dense FLOPs / pruned FLOPs")
    return lines


def _series(table: list[dict[str, Any]], key: str) -> dict[str, list[tuple[float, float]]]:
    """Per method: (kept params, mean of ``key`` over seeds) points sorted by params."""
    grouped: dict[str, dict[float, list[float]]] = {}
    for row in table:
        if row["kind"] != "dense" and row.get(key) is not None and row.get("kept_params"):
            grouped.setdefault(row["method"], {}).setdefault(row["kept_params"], []).append(row[key])
    return {m: sorted((p, statistics.fmean(v)) for p, v in pts.items()) for m, pts in grouped.items()}


def _plot(table: list[dict[str, Any]], key: str, ylabel: str, log_y: bool) -> bytes | None:
    series = _series(table, key)
    if not series:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.4), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for method, points in sorted(series.items()):
        axes.plot([p / 1e6 for p, _ in points], [v for _, v in points], marker="o", label=method)
    dense = table[0]
    if dense.get(key) is not None and dense.get("kept_params"):
        axes.axhline(dense[key], color="black", linestyle="--", linewidth=0.8)
        axes.plot([dense["kept_params"] / 1e6], [dense[key]], marker="*", color="black", markersize=10, label="dense")
    if log_y:
        axes.set_yscale("log")
    axes.set_xlabel("kept parameters (millions)")
    axes.set_ylabel(ylabel)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_results(out: Path, meta: dict[str, Any], dense: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Path]:
    """Write the combined outputs into ``out``; returns them by name (plots only when there is data)."""
    table = rows(dense, runs, meta["units"].get("total_params"))
    protocols = {protocol_key(r) for r in [dense, *runs] if r.get("status") == "ok"}
    combined = {**meta, "comparable": len(protocols) == 1, "rows": table, "dense": dense, "runs": runs}
    files = {
        "json": write_json_atomic(out / "results.json", combined),
        "csv": write_text_atomic(out / "results.csv", csv_text(table)),
        "md": write_text_atomic(out / "results.md", markdown(table, meta, dense)),
    }
    for name, key, label, log_y in (("ppl_vs_params", "ppl", "perplexity (log)", True),
                                    ("acc_vs_params", "acc_mean", "mean zero-shot accuracy", False)):
        image = _plot(table, key, label, log_y)
        if image is not None:
            files[name] = write_bytes_atomic(out / f"{name}.png", image)
    return files


def protocol_key(record: dict[str, Any]) -> str:
    """The record's perplexity and zero-shot protocols, canonically serialised: equal keys compare."""
    protocols = {name: _get(record, "eval", name, "protocol") for name in ("perplexity", "zeroshot")}
    return json.dumps(protocols, sort_keys=True)
