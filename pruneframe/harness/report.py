"""Comparison outputs: ``results.json``, ``results.csv``, ``results.md`` and PNG figures, all written atomically.

``results.csv`` has one row per run (plus the dense model) with every number and its interval.
``results.md`` has one row per method and budget (seeds combined, see :mod:`pruneframe.harness.summary`):
kept parameters, the perplexity ratio to dense per source with its 95% interval (the in-domain source
marked), the out-of-domain geometric mean that ranks the methods (bits per byte ranks when a run's vocabulary differs), the rank, accuracies with standard
errors, measured and ideal speedups with their repeat spread, prune time and memory. A value is bold
only where it is better than the next method's beyond the intervals. ``results.json`` keeps the records
(per-window NLLs, per-item correctness) and the summary, so every number can be recomputed;
:func:`read_results` reads it back, so the outputs can be regenerated without rerunning anything. The
figures (:mod:`pruneframe.harness.figures`) are drawn from the same summary as the table.
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

from pruneframe.util.io import read_small_text, write_json_atomic, write_text_atomic
from pruneframe.evaluation.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED
from pruneframe.harness.figures import render as render_figures
from pruneframe.harness.group_values import bytes_per_token, engine_speedup, kept_fraction, kept_params, per_byte, speedup
from pruneframe.harness.results_file import check_results
from pruneframe.harness.summary import BITS_PER_BYTE_LEGEND, Group, Measure, Summary, bits_per_byte_fields, summarise
from pruneframe.harness.summary import nested_get as _get
from pruneframe.pipeline.prune_report import PruneReport

__all__ = ["rows", "markdown", "csv_text", "protocol_key", "write_results", "read_results", "write_bytes_atomic", "ZEROSHOT_HOWTO"]

_MB = 2**20

#: What the report says when no zero-shot task ran.
ZEROSHOT_HOWTO = (
    "Zero-shot accuracy: not measured (no tasks found or configured). To add tasks: online, name lm-eval tasks "
    "(`--zeroshot hellaswag,arc_easy` or `evaluation.zeroshot.tasks`); offline, put JSONL files with one "
    '`{"question": str, "choices": [str, ...], "label": int}` object per line under `<data dir>/zeroshot/` '
    "(the file name is the task name) or pass their paths."
)


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary sibling and ``os.replace`` (as :mod:`pruneframe.util.io` does for text)."""
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


def _prune_report(record: dict[str, Any]) -> PruneReport | None:
    """The run's typed prune report (None for the dense record and failed runs)."""
    return PruneReport.model_validate(record["prune"]) if record.get("prune") else None


def _calibration_domain(meta: dict[str, Any]) -> str | None:
    return _get(meta, "calibration", "domain") or None


def _row(record: dict[str, Any], dense_params: int | None, summary: Summary) -> dict[str, Any]:
    """The flat numbers of one record (dense or pruned), intervals included."""
    ev = record.get("eval", {})
    report = _prune_report(record)
    dense = record.get("kind") == "dense"
    measures = summary.per_run.get(str(record.get("run_id")), {})
    row: dict[str, Any] = {
        "run_id": record.get("run_id"),
        "kind": record.get("kind"),
        "status": record.get("status"),
        "method": "dense" if dense else _get(record, "protocol", "method", "name"),
        "budget": "-" if dense else _get(record, "protocol", "budget", "label"),
        "recovery": "none" if dense else _get(record, "protocol", "recovery", "label") or "none",
        "seed": None if dense else _get(record, "protocol", "seed"),
        "budget_prunable_params": report and report.budget_prunable_params,
        "kept_params": dense_params if dense else report and report.kept_params,
        "kept_fraction": 1.0 if dense else report and report.kept_fraction_of_total,
        "kept_prunable_fraction": 1.0 if dense else report and report.kept_fraction_of_prunable,
    }
    for source in summary.sources:
        row[f"ppl_{source.label}"] = _get(ev, "perplexity", "sources", source.label, "ppl")
        measure = measures.get(f"ratio:{source.label}")
        low, high = measure.interval() if measure else (None, None)
        row[f"ratio_{source.label}"] = 1.0 if dense else measure.value() if measure else None
        row[f"ratio_{source.label}_low"], row[f"ratio_{source.label}_high"] = low, high
    ood = measures.get("ood")
    row["ood_ratio"] = 1.0 if dense else ood.value() if ood else None
    row["ood_ratio_low"], row["ood_ratio_high"] = ood.interval() if ood else (None, None)
    row.update(bits_per_byte_fields(ev, measures, summary, dense) if summary.bits_per_byte else {})
    accs = []
    for task, values in (_get(ev, "zeroshot", "tasks") or {}).items():
        row[f"acc_{task}"] = values.get("acc")
        row[f"acc_{task}_se"] = values.get("acc_stderr")
        row[f"acc_{task}_low"], row[f"acc_{task}_high"] = (values.get("acc_ci") or [None, None])[:2]
        if values.get("acc") is not None:
            accs.append(values["acc"])
    row["acc_mean"] = statistics.fmean(accs) if accs else None
    for phase in ("prefill", "decode"):
        row[f"{phase}_speedup"] = _get(ev, "speed", "measured_speedup", phase)
        spread = _get(ev, "speed", "speedup_spread", phase) or {}
        row[f"{phase}_speedup_q25"], row[f"{phase}_speedup_q75"] = spread.get("q25"), spread.get("q75")
        row[f"{phase}_speedup_min"], row[f"{phase}_speedup_max"] = spread.get("min"), spread.get("max")
    for key, value in (_get(ev, "llamacpp-speed", "measured_speedup") or {}).items():
        row[f"llamacpp_{key}_speedup"] = value
    if summary.bits_per_byte:
        row["bytes_per_token"] = bytes_per_token(record)
    row.update(
        {
            "ideal_speedup": _get(ev, "speed", "ideal_speedup"),
            "prune_s": report and report.timings.total_s,
            "tokens_processed": report and report.calibration_tokens,
            "peak_rss_mb": report and report.memory.peak_rss_bytes / _MB,
            "delta_rss_mb": report and report.memory.delta_rss_bytes / _MB,
            "recovery_s": _get(record, "recovery", "wall_s"),
            "recovery_tokens": _get(record, "recovery", "tokens"),
            "recovery_tokens_per_s": _get(record, "recovery", "tokens_per_s"),
            "error": record.get("error"),
        }
    )
    return row


def rows(
    dense: dict[str, Any], runs: list[dict[str, Any]], dense_params: int | None, summary: Summary | None = None, calibration_domain: str | None = None
) -> list[dict[str, Any]]:
    """Flat rows: the dense model first, then every run in order."""
    summary = summary or summarise(dense, runs, calibration_domain)
    return [_row(record, dense_params, summary) for record in [dense, *runs]]


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


# ----------------------------------------------------------------------------- Markdown


def _count(n: float) -> str:
    """``134.5M`` / ``4.20M`` for large counts, ``45,360`` for small ones."""
    return f"{n / 1e6:.1f}M" if n >= 1e7 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n:,.0f}"


def _mean(values: list[Any]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None


def _seed_suffix(measure: Measure, digits: int) -> str:
    """`` s low-high`` over the seeds' values when there are several, else nothing."""
    if len(measure.seed_points) < 2:
        return ""
    smin, smax = measure.seed_range()
    return f" s {smin:.{digits}f}-{smax:.{digits}f}"


def _ratio_cell(group: Group, key: str) -> str:
    measure = group.measures.get(key)
    if measure is None:
        return "-"
    low, high = measure.interval()
    return f"{measure.value():.2f} [{low:.2f}, {high:.2f}]" + _seed_suffix(measure, 2)


def _acc_cell(group: Group, task: str) -> str:
    measure = group.measures.get(f"acc:{task}")
    if measure is None:
        return "-"
    ses = [_get(r, "eval", "zeroshot", "tasks", task, "acc_stderr") for r in group.records]
    se = ses[0] if len(ses) == 1 and ses[0] is not None else measure.se()
    return f"{measure.value():.3f} ±{se:.3f}" + _seed_suffix(measure, 3)


def _speed_cell(group: Group, phase: Literal["prefill", "decode"]) -> str:
    measured = speedup(group, phase)
    if measured is None:
        return "-"
    text = f"{measured.value:.2f}x" + (f" ±{measured.width:.0%}" if measured.width is not None else "")
    return text + (f" / {measured.ideal:.2f}x" if measured.ideal else "")


def _per_byte_cell(group: Group, dense: dict[str, Any], phase: Literal["prefill", "decode"], engine: Literal["torch", "llamacpp"]) -> str:
    """The speedup in bytes of text per second (:func:`~pruneframe.harness.group_values.per_byte`) of ``engine``."""
    measured = per_byte(engine_speedup(group, phase, engine), group, dense)
    return "-" if measured is None else f"{measured.value:.2f}x"


def _llamacpp_cell(group: Group, phase: str) -> str:
    """llama.cpp's measured speedup for ``phase`` (``prefill_256``, ``decode``, ...) / its ideal, meaned over seeds."""
    value = _mean([_get(r, "eval", "llamacpp-speed", "measured_speedup", phase) for r in group.records])
    ideal = _mean([_get(r, "eval", "llamacpp-speed", "ideal_speedup", phase.split("_")[0]) for r in group.records])
    return "-" if value is None else f"{value:.2f}x" + (f" / {ideal:.2f}x" if ideal else "")


def _reports(group: Group) -> list[PruneReport]:
    return [report for report in map(_prune_report, group.records) if report is not None]


def _kept_cell(group: Group) -> str:
    kept, frac = kept_params(group), kept_fraction(group)
    return "-" if kept is None else f"{_count(kept)} ({frac:.1%})" if frac is not None else _count(kept)


def _rss_cell(group: Group) -> str:
    peaks = [r.memory.peak_rss_bytes for r in _reports(group)]
    deltas = [r.memory.delta_rss_bytes for r in _reports(group)]
    if not any(peaks):
        return "-"
    return f"{max(p for p in peaks if p) / _MB:,.0f} (+{max(d or 0 for d in deltas) / _MB:,.0f})"


@dataclass(frozen=True)
class _Column:
    """A Markdown column: its header, the dense row's cell, a group's cell, and the measure key ranked (if any)."""

    header: str
    dense: Callable[[dict[str, Any]], str]
    cell: Callable[[Group], str]
    key: str | None = None


def _columns(summary: Summary, dense: dict[str, Any]) -> list[_Column]:
    seeds = any(len(g.records) > 1 for g in summary.groups)
    columns = [_Column("method", lambda d: "dense", lambda g: g.method), _Column("budget", lambda d: "-", lambda g: g.budget)]
    recovered = any(g.recovery != "none" for g in summary.groups)
    if recovered:
        columns.append(_Column("recovery", lambda d: "-", lambda g: g.recovery))
    if seeds:
        columns.append(_Column("seeds", lambda d: "-", lambda g: ",".join(str(s) for s in g.seeds)))
    columns.append(_Column("kept params", lambda d: d["kept"], _kept_cell))
    for source in summary.sources:
        mark = " (in-domain)" if source.in_domain else ""
        columns.append(
            _Column(
                f"{source.label}{mark} ppl/dense",
                lambda d, s=source: f"ppl {s.dense_ppl:.2f}",
                lambda g, s=source: _ratio_cell(g, f"ratio:{s.label}"),
                f"ratio:{source.label}",
            )
        )
    scope = "OOD" if summary.summary_scope == "out-of-domain" else "all-source"
    columns.append(_Column(f"{scope} geomean", lambda d: "1", lambda g: _ratio_cell(g, "ood"), "ood"))
    if summary.bits_per_byte:
        for s in summary.sources:
            bpb = _Column(f"{s.label} bpb/dense", lambda d, s=s: _dense_bpb(dense, s.label), lambda g, s=s: _ratio_cell(g, f"bpb:{s.label}"), f"bpb:{s.label}")
            columns.append(bpb)
        columns.append(_Column(f"{scope} bpb geomean", lambda d: "1", lambda g: _ratio_cell(g, "bpb"), "bpb"))
    columns.append(_Column("rank", lambda d: "-", lambda g: str(g.ranks[summary.ranking_key]) if summary.ranking_key in g.ranks else "-"))
    for task in summary.tasks:
        columns.append(_Column(f"acc {task}", lambda d, t=task: _dense_acc(dense, t), lambda g, t=task: _acc_cell(g, t), f"acc:{task}"))
    if any(_get(r, "eval", "speed", "measured_speedup") for g in summary.groups for r in g.records):
        columns += [
            _Column("prefill speedup (meas ±IQR / ideal)", lambda d: "1", lambda g: _speed_cell(g, "prefill")),
            _Column("decode speedup (meas ±IQR / ideal)", lambda d: "1", lambda g: _speed_cell(g, "decode")),
        ]
    phases = {k for g in summary.groups for r in g.records for k in _get(r, "eval", "llamacpp-speed", "measured_speedup") or {}}
    for phase in sorted(phases, key=lambda k: (k == "decode", len(k), k)):
        columns.append(_Column(f"llama.cpp {phase.replace('_', ' ')} speedup (meas / ideal)", lambda d: "1", lambda g, p=phase: _llamacpp_cell(g, p)))
    if summary.bits_per_byte:  # a trimmed vocabulary reads the same text in more tokens: speed per byte compares
        engines = (("torch", "hf", "speed"), ("llamacpp", "llama.cpp", "llamacpp-speed"))
        for engine, label, key in engines:
            if not any(_get(r, "eval", key) for g in summary.groups for r in g.records):
                continue
            for phase in ("prefill", "decode"):
                cell = lambda g, p=phase, e=engine: _per_byte_cell(g, dense, p, e)  # noqa: E731
                columns.append(_Column(f"{label} {phase} speedup per byte", lambda d: "1", cell))
    columns += [
        _Column("prune time (s)", lambda d: "-", lambda g: f"{_mean([r.timings.total_s for r in _reports(g)]) or 0:.1f}"),
        _Column("peak RSS MB (+ while pruning)", lambda d: "-", _rss_cell),
    ]
    if recovered:
        columns.append(_Column("recovery time (s), tokens/s", lambda d: "-", _recovery_cell))
    return columns


def _recovery_cell(group: Group) -> str:
    walls = [_get(r, "recovery", "wall_s") for r in group.records if _get(r, "recovery", "steps")]
    rates = [_get(r, "recovery", "tokens_per_s") for r in group.records if _get(r, "recovery", "steps")]
    return "-" if not walls else f"{_mean(walls):.1f}, {_mean(rates):,.0f}"


def _dense_bpb(dense: dict[str, Any], label: str) -> str:
    value = _get(dense, "eval", "perplexity", "sources", label, "bits_per_byte")
    return "-" if value is None else f"bpb {value:.3f}"


def _dense_acc(dense: dict[str, Any], task: str) -> str:
    row = _get(dense, "eval", "zeroshot", "tasks", task) or {}
    if row.get("acc") is None:
        return "-"
    return f"{row['acc']:.3f} ±{row.get('acc_stderr') or 0:.3f}"


def _bold(group: Group, key: str | None, summary: Summary) -> bool:
    """Rank 1 in the column while some method at the budget ranks lower (so the lead is beyond the intervals)."""
    if key is None or group.ranks.get(key) != 1:
        return False
    peers = [g.ranks.get(key) for g in summary.groups if g.setting == group.setting and key in g.ranks]
    return any(rank is not None and rank > 1 for rank in peers)


def _order(summary: Summary) -> list[Group]:
    settings = list(dict.fromkeys(g.setting for g in summary.groups))

    def key(g: Group) -> tuple[int, float, str]:
        ood = g.measures.get(summary.ranking_key)
        return settings.index(g.setting), ood.point if ood else float("inf"), g.method

    return sorted(summary.groups, key=key)


def markdown(table: list[dict[str, Any]], meta: dict[str, Any], dense: dict[str, Any], summary: Summary | None = None) -> str:
    """The results as a Markdown document: the protocol, one row per method and budget, rank agreement."""
    summary = summary or summarise(dense, [], _calibration_domain(meta))
    columns = _columns(summary, dense)
    dense_cells = {"kept": _count(table[0]["kept_params"]) + " (100%)" if table and table[0].get("kept_params") else "-"}
    lines = [
        f"# Comparison on {meta['model']['spec']}",
        "",
        *_protocol_lines(meta, dense, summary),
        "",
        *(line for part in _legend(summary) for line in (part, "")),
        "| " + " | ".join(c.header for c in columns) + " |",
        "| " + " | ".join("---" for _ in columns) + " |",
        "| " + " | ".join(c.dense(dense_cells) for c in columns) + " |",
    ]
    for group in _order(summary):
        cells = [c.cell(group) for c in columns]
        cells = [f"**{text}**" if _bold(group, c.key, summary) and text != "-" else text for c, text in zip(columns, cells)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += _tau_lines(summary)
    if "zeroshot" not in meta.get("evaluation", {}):
        lines += ["", ZEROSHOT_HOWTO]
    refused = [(r["run_id"], name, result["refused"]) for g in summary.groups for r in g.records for name, result in _refusals(r)]
    if refused:
        lines += ["", "Evaluations refused (the run's other columns stand):", ""]
        lines += [f"- `{run_id}` {name}: {why}" for run_id, name, why in refused]
    failed = [row for row in table if row["status"] == "failed"]
    if failed:
        lines += ["", "Failed runs (not cached; rerun the comparison to retry them):", ""]
        lines += [f"- `{row['run_id']}`: {row['error']}" for row in failed]
    return "\n".join(lines) + "\n"


def _refusals(record: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The evaluations of ``record`` that refused its model (``{"refused": why}``), by evaluator name."""
    return [(name, result) for name, result in (record.get("eval") or {}).items() if isinstance(result, dict) and "refused" in result]


def _legend(summary: Summary) -> list[str]:
    scope = (
        "the out-of-domain sources (those not marked in-domain)"
        if summary.summary_scope == "out-of-domain"
        else "every source (none is out of the calibration domain)"
    )
    return [
        f"Perplexity columns: perplexity / the dense model's on the same windows, with a 95% paired-bootstrap interval "
        f"over windows ({BOOTSTRAP_RESAMPLES:,} resamples, seed {BOOTSTRAP_SEED}); the dense row gives its perplexity. "
        f"In-domain: the source shares the calibration text's domain. Geomean: the geometric mean of the ratios over "
        f"{scope}; it ranks the methods. Accuracies: mean ± standard error.",
        "With several seeds a cell is the seeds' mean (geometric for ratios), its interval, and `s min-max` over seeds.",
        "Rank: 1 + the number of methods at the same budget that are better beyond the 95% interval of the paired "
        "difference (and, with several seeds each, whose seed ranges do not overlap); equal ranks are ties. Bold: the "
        "rank-1 value(s) of a column where another method ranks below. Speedups: dense time / pruned time, each "
        "reduced over alternating dense/pruned repeats by the statistic named above, ± half the interquartile range of "
        "the per-repeat speedups, / the FLOPs ideal.",
    ] + ([BITS_PER_BYTE_LEGEND] if summary.bits_per_byte else [])


def _tau_lines(summary: Summary) -> list[str]:
    entries = [(budget, pairs) for budget, pairs in summary.taus.items() if pairs]
    if not entries:
        return []
    lines = ["", "Rank agreement between sources (Kendall tau of the methods' ratios to dense, per budget):", ""]
    for budget, pairs in entries:
        parts = [f"{name} {'-' if tau is None else f'{tau:+.2f}'}" for name, tau in pairs.items()]
        lines.append(f"- {budget}: " + "; ".join(parts))
    recovery = [(budget, taus) for budget, taus in summary.recovery_taus.items() if taus]
    if recovery:
        lines += [
            "",
            "Does recovery change which method is best? Kendall tau between the methods' OOD geomeans before and after recovery (+1: same order), per budget:",
            "",
        ]
        for budget, taus in recovery:
            parts = [f"{name} {'-' if tau is None else f'{tau:+.2f}'}" for name, tau in taus.items()]
            lines.append(f"- {budget}: " + "; ".join(parts))
    return lines


def _dtype_text(meta: dict[str, Any], cfg: dict[str, Any]) -> str:
    """The dtype the runs computed in and why (results written before the reason was recorded: the setting)."""
    if meta.get("dtype_reason"):
        return f"{meta.get('dtype')}: {meta['dtype_reason']}"
    return str(cfg["dtype"])


def _protocol_lines(meta: dict[str, Any], dense: dict[str, Any], summary: Summary) -> list[str]:
    cal, ev, cfg = meta["calibration"], meta["evaluation"], meta["config"]
    targets = ", ".join(f"{slug}: {n:,}" for slug, n in meta["budgets"].items())
    lines = [
        f"- model: `{meta['model']['spec']}` ({_dtype_text(meta, cfg)}), {meta['units']['total_params']:,} parameters, "
        f"{meta['units']['prunable_params']:,} prunable",
        f"- budgets ({cfg['budget_kind']}), as prunable parameters every method must meet: {targets}",
        f"- calibration: `{cal['name']}` ({cal['origin']}, split {cal['split']}, domain `{cal.get('domain') or '?'}`), "
        f"{cal['tokens']:,} tokens, fingerprint {cal['fingerprint']}",
    ]
    if "perplexity" in ev:
        p = ev["perplexity"]["config"]
        lines.append(f"- perplexity protocol `{p.get('protocol', 'custom')}`: {p['seq_len']}-token windows, per source:")
        for source in summary.sources:
            stamp = _get(dense, "eval", "perplexity", "sources", source.label, "protocol", "data") or {}
            mark = " **in-domain**" if source.in_domain else ""
            lines.append(
                f"  - `{source.label}`{mark}: domain `{source.domain}`, {stamp.get('origin')} split "
                f"{stamp.get('split')} (fingerprint {stamp.get('fingerprint')}), {source.windows} windows"
            )
    if "zeroshot" in ev:
        z = ev["zeroshot"]["config"]
        lines.append(f"- zero-shot: {', '.join(z['tasks'])} (limit {z['limit']} items per task)")
    speed = _get(dense, "eval", "speed", "model")
    if speed:
        repeats = _get(dense, "eval", "speed", "protocol", "repeats")
        statistic = _get(dense, "eval", "speed", "protocol", "statistic") or "median"
        reduced = "the fastest repeat of each model" if statistic == "min" else "the median repeat of each model"
        lines.append(
            f"- speed: dense {speed['prefill_tokens_per_s']:.0f} prefill tok/s, "
            f"{speed['decode_tokens_per_s']:.1f} decode tok/s; {repeats} alternating repeats per run, "
            f"{reduced} (statistic `{statistic}`); ideal = dense FLOPs / pruned FLOPs"
        )
    return lines


def write_results(out: Path, meta: dict[str, Any], dense: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Path]:
    """Write the combined outputs into ``out``; returns them by name (plots only when there is data).

    Every output is computed before the first file is written, so a failure leaves the folder as it was.
    """
    summary = summarise(dense, runs, _calibration_domain(meta))
    table = rows(dense, runs, meta["units"].get("total_params"), summary)
    protocols = {protocol_key(r) for r in [dense, *runs] if r.get("status") == "ok"}
    combined = {**meta, "comparable": len(protocols) == 1, "rows": table, "summary": summary.as_dict(), "dense": dense, "runs": runs}
    texts = {"csv": csv_text(table), "md": markdown(table, meta, dense, summary)}
    images = render_figures(summary, dense, meta["units"].get("total_params"))
    files = {
        "json": write_json_atomic(out / "results.json", combined),
        "csv": write_text_atomic(out / "results.csv", texts["csv"]),
        "md": write_text_atomic(out / "results.md", texts["md"]),
    }
    for name, image in images.items():
        files[name] = write_bytes_atomic(out / f"{name}.png", image)
    return files


#: The keys :func:`write_results` adds to the comparison's meta in ``results.json``.
_DERIVED = ("comparable", "rows", "summary", "dense", "runs")


def read_results(path: Path) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """The meta, dense record and run records of a stored ``results.json`` (what :func:`write_results` takes).

    Raises:
        ValueError: naming ``path``: not a small regular UTF-8 file, not JSON, or not a comparison's
            results (:func:`~pruneframe.harness.results_file.check_results` names the values).
        OSError: it cannot be read.
    """
    try:
        data = json.loads(read_small_text(path))
    except RecursionError:
        raise ValueError(f"{str(path)!r}: nested too deeply to be a results.json") from None
    except ValueError as exc:  # also json.JSONDecodeError
        raise ValueError(str(exc) if str(path) in str(exc) else f"{str(path)!r}: {exc}") from None
    try:
        check_results(data)
    except ValueError as exc:
        raise ValueError(f"{str(path)!r}: {exc}") from None
    meta = {key: value for key, value in data.items() if key not in _DERIVED}
    dense = data["dense"]
    # results.json is written with sorted keys: restore the comparison's order of sources and budgets
    order = [s.get("label") for s in _get(data, "summary", "sources") or []]
    sources = _get(dense, "eval", "perplexity", "sources")
    if isinstance(sources, dict) and order:
        dense["eval"]["perplexity"]["sources"] = {**{k: sources[k] for k in order if k in sources}, **sources}
    slugs = [_budget_slug(b) for b in _get(meta, "config", "budgets") or []]
    if isinstance(meta.get("budgets"), dict):
        meta["budgets"] = {**{k: meta["budgets"][k] for k in slugs if k in meta["budgets"]}, **meta["budgets"]}
    return meta, dense, data["runs"]


def _budget_slug(budget: Any) -> str | None:
    """A configured budget's slug (its key in ``meta["budgets"]``), as :func:`pruneframe.harness.config.budget_slug`."""
    keep = budget.get("keep") if isinstance(budget, dict) else budget
    if isinstance(keep, (int, float)):
        return f"{keep:g}"
    return str(budget["params"]) if isinstance(budget, dict) and "params" in budget else None


def protocol_key(record: dict[str, Any]) -> str:
    """The record's perplexity and zero-shot protocols, canonically serialised: equal keys compare."""
    protocols = {name: _get(record, "eval", name, "protocol") for name in ("perplexity", "zeroshot")}
    return json.dumps(protocols, sort_keys=True)
