"""The numbers of a comparison report: ratios to dense with intervals, the out-of-domain summary, ranks, tau.

Computed from the run records alone (per-window NLL sums and per-item correctness), so ``results.json``
holds everything needed to recompute them.

- **Ratio to dense**, per perplexity source: ``ppl(method) / ppl(dense)`` on the same windows, with a
  95% paired-bootstrap interval over windows (:mod:`pruneframe.evaluation.stats`).
- **In-domain**: a source whose domain tag equals the calibration text's (same named corpus or folder).
- **OOD summary**: the geometric mean of the ratios over the other (out-of-domain) sources, with an
  interval from the same resamples; it is what ranks the methods. With no out-of-domain source it is
  taken over every source, and the report says so.
- **Seeds**: a method's value at a budget is the geometric mean over its seeds (for accuracies: the mean),
  its interval comes from the same resampled windows/items for every seed, and ``seed_range`` is the
  min-max of the seeds' own values.
- **Rank**: ``1 + the number of methods at the same budget that are better beyond the interval``: the
  paired bootstrap interval of the difference excludes zero and, when both have several seeds, their
  seed ranges do not overlap. Equal ranks are ties.
- **Kendall tau**, per budget, between every two sources' orderings of the methods.
- **Recovery**: recovered runs form their own groups (method, budget, recovery), ranked among the
  groups of the same budget and recovery; ``recovery_taus`` holds, per budget and recovery, the Kendall
  tau between the methods' unrecovered and recovered OOD orderings (does recovery change which method
  is best?).
- **Bits per byte**: when some run's vocabulary differs from the dense model's (its prune trimmed the
  vocabulary, or its tokenizer fingerprint differs), a ratio of per-token perplexities compares
  different token counts and such runs get none. Every run then also gets ``bpb:<source>``, its bits
  per byte over the dense model's on the same text, and ``bpb``, their geometric mean over the OOD
  scope, which ranks the methods instead (``Summary.bits_per_byte``). The windows are cut in each
  model's own tokens, so window ``i`` of two tokenizers covers nearly, not exactly, the same text; the
  interval resamples windows by position for every model alike (approximately paired).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Literal

import numpy as np

from pruneframe.evaluation.stats import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    LEVEL,
    bootstrap_indices,
    excludes_zero,
    exp_or_inf,
    kendall_tau,
    log_ppl_draws,
    percentile_interval,
)

__all__ = [
    "nested_get",
    "SourceInfo",
    "Measure",
    "Group",
    "Summary",
    "summarise",
    "perplexity_sources",
    "setting_label",
    "vocabulary_differs",
    "bits_per_byte_fields",
    "BITS_PER_BYTE_LEGEND",
]


def nested_get(data: Any, *keys: str) -> Any:
    """``data[k1][k2]...``, or ``None`` as soon as a level is missing or not a dict."""
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


@dataclass(frozen=True)
class SourceInfo:
    """One perplexity source of the comparison.

    Attributes:
        label: the column label (the evaluator's source label).
        domain: its domain tag.
        in_domain: shares the calibration text's domain.
        windows: number of windows; tokens: predicted tokens per window.
        dense_ppl: the dense model's perplexity on it.
    """

    label: str
    domain: str
    in_domain: bool
    windows: int
    tokens: int
    dense_ppl: float


@dataclass
class Measure:
    """One value of one row (a run or a method's seeds), on a log scale for ratios.

    ``point`` and ``draws`` are log ratios (perplexity) or accuracies; ``seed_points`` the per-seed values.
    """

    point: float
    draws: np.ndarray = field(repr=False)
    seed_points: list[float]
    log_scale: bool

    def _out(self, value: float) -> float:
        return exp_or_inf(value) if self.log_scale else value

    def value(self) -> float:
        """The reported value (a ratio or an accuracy)."""
        return self._out(self.point)

    def interval(self) -> tuple[float, float]:
        """The 95% bootstrap interval of the reported value, widened where needed to hold the value itself.

        The percentile interval of the draws can miss the point estimate by a rounding error (one window:
        every draw is the point, summed in another order) or, for a skewed statistic, by more; a value is
        never shown outside its own interval.
        """
        low, high = percentile_interval(self.draws, LEVEL)
        return self._out(min(low, self.point)), self._out(max(high, self.point))

    def seed_range(self) -> tuple[float, float]:
        """Min and max over seeds of the reported value."""
        return self._out(min(self.seed_points)), self._out(max(self.seed_points))

    def se(self) -> float:
        """Standard deviation of the bootstrap draws (for accuracies: the standard error of the mean)."""
        return float(np.std(self.draws, ddof=1)) if self.draws.size > 1 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: value, interval, seed range and seed values."""
        low, high = self.interval()
        smin, smax = self.seed_range()
        return {
            "value": self.value(),
            "low": low,
            "high": high,
            "level": LEVEL,
            "seed_min": smin,
            "seed_max": smax,
            "seed_values": [self._out(p) for p in self.seed_points],
        }


@dataclass
class Group:
    """A method at a budget: its successful runs (one per seed) and its measures by column key."""

    method: str
    budget: str
    records: list[dict[str, Any]]
    measures: dict[str, Measure] = field(default_factory=dict)
    ranks: dict[str, int] = field(default_factory=dict)
    recovery: str = "none"

    @property
    def setting(self) -> tuple[str, str]:
        """``(budget, recovery)``: the groups ranked against each other."""
        return self.budget, self.recovery

    @property
    def seeds(self) -> list[int]:
        """The seeds of the successful runs."""
        return [int(nested_get(r, "protocol", "seed") or 0) for r in self.records]


@dataclass
class Summary:
    """Everything the report shows beyond the raw records."""

    sources: list[SourceInfo]
    summary_scope: Literal["out-of-domain", "all"]
    tasks: dict[str, int]
    groups: list[Group]
    per_run: dict[str, dict[str, Measure]]
    taus: dict[str, dict[str, float | None]]
    better: dict[str, Literal["min", "max"]]
    recovery_taus: dict[str, dict[str, float | None]] = field(default_factory=dict)
    bits_per_byte: bool = False

    @property
    def ranking_key(self) -> str:
        """The measure that ranks the methods: ``bpb`` when vocabularies differ, else ``ood``."""
        return "bpb" if self.bits_per_byte else "ood"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (ranks, intervals, seed spreads, tau) for ``results.json``."""
        return {
            "bootstrap": {
                "resamples": BOOTSTRAP_RESAMPLES,
                "seed": BOOTSTRAP_SEED,
                "level": LEVEL,
                "paired": "the same resampled windows/items for every model",
            },
            "sources": [vars(s) for s in self.sources],
            "summary_scope": self.summary_scope,
            "groups": [
                {
                    "method": g.method,
                    "budget": g.budget,
                    "recovery": g.recovery,
                    "seeds": g.seeds,
                    "measures": {k: m.as_dict() for k, m in g.measures.items()},
                    "ranks": g.ranks,
                }
                for g in self.groups
            ],
            "kendall_tau": self.taus,
            "kendall_tau_recovery": self.recovery_taus,
            **({"ranked_by": "bits per byte"} if self.bits_per_byte else {}),
        }


def perplexity_sources(dense: dict[str, Any], calibration_domain: str | None) -> list[SourceInfo]:
    """The dense record's perplexity sources, each marked in-domain when it shares the calibration domain."""
    found = []
    for label, row in (nested_get(dense, "eval", "perplexity", "sources") or {}).items():
        if not row.get("window_nll"):
            continue
        domain = row.get("domain") or ""
        found.append(
            SourceInfo(
                label=label,
                domain=domain,
                in_domain=bool(calibration_domain) and domain == calibration_domain,
                windows=len(row["window_nll"]),
                tokens=int(row["window_tokens"]),
                dense_ppl=float(row["ppl"]),
            )
        )
    return found


def _comparable(run_row: dict[str, Any], dense_row: dict[str, Any]) -> bool:
    """Same windows: the data fingerprint, windowing and count of both stamps agree."""
    keys = ("seq_len", "num_windows", "offset_windows", "tokenizer_fingerprint")
    a, b = run_row.get("protocol") or {}, dense_row.get("protocol") or {}
    return (
        all(a.get(k) == b.get(k) for k in keys)
        and nested_get(a, "data", "fingerprint") == nested_get(b, "data", "fingerprint")
        and len(run_row.get("window_nll") or []) == len(dense_row.get("window_nll") or [])
    )


def _bytes_comparable(run_row: dict[str, Any], dense_row: dict[str, Any]) -> bool:
    """Same text and windowing (the tokenizer may differ), with the bytes of every window recorded."""
    keys = ("seq_len", "num_windows", "offset_windows")
    a, b = run_row.get("protocol") or {}, dense_row.get("protocol") or {}
    sizes = {len(row.get(k) or []) for row in (run_row, dense_row) for k in ("window_nll", "window_bytes")}
    return (
        all(a.get(k) == b.get(k) for k in keys)
        and nested_get(a, "data", "fingerprint") == nested_get(b, "data", "fingerprint")
        and len(sizes) == 1
        and 0 not in sizes
    )


def _log_nats_per_byte(row: dict[str, Any], indices: np.ndarray) -> tuple[float, np.ndarray]:
    """``log(nats per byte)`` of a source's row, and its value on each resample of windows."""
    point = math.log(math.fsum(row["window_nll"]) / sum(row["window_bytes"]))
    return point, np.log(log_ppl_draws(row["window_nll"], row["window_bytes"], indices))


#: What the report's legend says of the bits-per-byte columns.
BITS_PER_BYTE_LEGEND = (
    "Bits per byte: some run's vocabulary differs from the dense model's (its ppl ratios count other tokens: none). bpb/dense: "
    "bits per byte (NLL over the UTF-8 bytes its windows cover) / the dense model's on the same text; their geomean ranks the "
    "methods. Windows are cut in each model's own tokens: the interval resamples them by position (approximately paired). "
    "Speedup per byte: the speedup in tokens per second times the run's bytes of text per token over the dense model's."
)


def vocabulary_differs(record: dict[str, Any], dense: dict[str, Any]) -> bool:
    """Whether ``record``'s model reads text with other tokens than the dense model (a trimmed vocabulary, another tokenizer)."""
    if nested_get(record, "prune", "vocabulary"):
        return True
    for label, row in (nested_get(record, "eval", "perplexity", "sources") or {}).items():
        dense_fp = nested_get(dense, "eval", "perplexity", "sources", label, "protocol", "tokenizer_fingerprint")
        if nested_get(row, "protocol", "tokenizer_fingerprint") != dense_fp:
            return True
    return False


def _bpb_measures(
    record: dict[str, Any], dense: dict[str, Any], sources: list[SourceInfo], indices: dict[str, np.ndarray], scope: list[str]
) -> dict[str, Measure]:
    """``bpb:<source>`` (bits per byte over the dense model's) per source and ``bpb``, their geometric mean over ``scope``."""
    measures: dict[str, Measure] = {}
    for source in sources:
        row = nested_get(record, "eval", "perplexity", "sources", source.label)
        dense_row = nested_get(dense, "eval", "perplexity", "sources", source.label)
        if not row or not dense_row or not _bytes_comparable(row, dense_row):
            continue
        point, draws = _log_nats_per_byte(row, indices[source.label])
        dense_point, dense_draws = _log_nats_per_byte(dense_row, indices[source.label])
        measures[f"bpb:{source.label}"] = Measure(point - dense_point, draws - dense_draws, [point - dense_point], log_scale=True)
    parts = [measures.get(f"bpb:{label}") for label in scope]
    if scope and all(p is not None for p in parts):
        point = statistics.fmean(p.point for p in parts)  # type: ignore[union-attr]
        measures["bpb"] = Measure(point, np.mean([p.draws for p in parts], axis=0), [point], log_scale=True)  # type: ignore[union-attr]
    return measures


def _task_sizes(records: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Tasks with per-item ``acc`` recorded, and their item count (only when every record agrees)."""
    sizes: dict[str, set[int]] = {}
    for record in records:
        for task, row in (nested_get(record, "eval", "zeroshot", "tasks") or {}).items():
            items = nested_get(row, "items", "acc")
            sizes.setdefault(task, set()).add(len(items) if items else -1)
    return {task: next(iter(n)) for task, n in sorted(sizes.items()) if len(n) == 1 and next(iter(n)) > 0}


def _combine(parts: list[Measure], log_scale: bool) -> Measure:
    """Mean of measures over seeds (draws averaged resample by resample: the same resamples)."""
    return Measure(
        point=statistics.fmean(p.point for p in parts),
        draws=np.mean([p.draws for p in parts], axis=0),
        seed_points=[p.point for p in parts],
        log_scale=log_scale,
    )


def _run_measures(
    record: dict[str, Any],
    dense: dict[str, Any],
    sources: list[SourceInfo],
    indices: dict[str, np.ndarray],
    dense_draws: dict[str, np.ndarray],
    tasks: dict[str, int],
    item_indices: dict[str, np.ndarray],
    scope: list[str],
) -> dict[str, Measure]:
    measures: dict[str, Measure] = {}
    for source in sources:
        row = nested_get(record, "eval", "perplexity", "sources", source.label)
        dense_row = nested_get(dense, "eval", "perplexity", "sources", source.label)
        if not row or not _comparable(row, dense_row):
            continue
        tokens = [source.tokens] * source.windows
        draws = log_ppl_draws(row["window_nll"], tokens, indices[source.label]) - dense_draws[source.label]
        point = (math.fsum(row["window_nll"]) - math.fsum(dense_row["window_nll"])) / (source.tokens * source.windows)
        measures[f"ratio:{source.label}"] = Measure(point, draws, [point], log_scale=True)
    parts = [measures.get(f"ratio:{label}") for label in scope]
    if scope and all(p is not None for p in parts):
        point = statistics.fmean(p.point for p in parts)  # type: ignore[union-attr]
        measures["ood"] = Measure(point, np.mean([p.draws for p in parts], axis=0), [point], log_scale=True)  # type: ignore[union-attr]
    for task, n in tasks.items():
        items = nested_get(record, "eval", "zeroshot", "tasks", task, "items", "acc")
        if items and len(items) == n:
            values = np.asarray(items, dtype=np.float64)
            point = float(values.mean())
            measures[f"acc:{task}"] = Measure(point, values[item_indices[task]].mean(axis=1), [point], log_scale=False)
    return measures


def _better(a: Measure, b: Measure, direction: Literal["min", "max"]) -> bool:
    """Whether ``a`` is better than ``b`` beyond the intervals (paired difference and seed ranges)."""
    diff = a.draws - b.draws if direction == "max" else b.draws - a.draws
    point = a.point - b.point if direction == "max" else b.point - a.point
    if point <= 0 or not excludes_zero(diff, LEVEL):
        return False
    if len(a.seed_points) > 1 and len(b.seed_points) > 1:
        if direction == "min":
            return max(a.seed_points) < min(b.seed_points)
        return min(a.seed_points) > max(b.seed_points)
    return True


def _rank(groups: list[Group], key: str, direction: Literal["min", "max"]) -> None:
    by_budget: dict[tuple[str, str], list[Group]] = {}
    for group in groups:
        if key in group.measures:
            by_budget.setdefault(group.setting, []).append(group)
    for members in by_budget.values():
        for group in members:
            ahead = sum(_better(other.measures[key], group.measures[key], direction) for other in members if other is not group)
            group.ranks[key] = 1 + ahead


def setting_label(budget: str, recovery: str) -> str:
    """A budget, with the recovery after it unless it is ``none``."""
    return budget if recovery == "none" else f"{budget}, recovered with {recovery}"


def _taus(groups: list[Group], sources: list[SourceInfo]) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    settings = list(dict.fromkeys(g.setting for g in groups))
    for setting in settings:
        budget = setting_label(*setting)
        members = [g for g in groups if g.setting == setting]
        pairs: dict[str, float | None] = {}
        for first, second in combinations([s.label for s in sources], 2):
            both = [g for g in members if f"ratio:{first}" in g.measures and f"ratio:{second}" in g.measures]
            pairs[f"{first} ~ {second}"] = kendall_tau([g.measures[f"ratio:{first}"].point for g in both], [g.measures[f"ratio:{second}"].point for g in both])
        out[budget] = pairs
    return out


def _recovery_taus(groups: list[Group]) -> dict[str, dict[str, float | None]]:
    """Per budget and recovery: Kendall tau between the methods' unrecovered and recovered OOD summaries."""
    out: dict[str, dict[str, float | None]] = {}
    before = {(g.method, g.budget): g.measures["ood"].point for g in groups if g.recovery == "none" and "ood" in g.measures}
    for budget, recovery in dict.fromkeys(g.setting for g in groups if g.recovery != "none"):
        members = [g for g in groups if g.setting == (budget, recovery) and "ood" in g.measures and (g.method, budget) in before]
        out.setdefault(budget, {})[recovery] = kendall_tau([before[(g.method, budget)] for g in members], [g.measures["ood"].point for g in members])
    return out


def summarise(dense: dict[str, Any], runs: list[dict[str, Any]], calibration_domain: str | None) -> Summary:
    """Ratios, intervals, the OOD summary, ranks per budget and Kendall tau, from the records."""
    sources = perplexity_sources(dense, calibration_domain)
    ood = [s.label for s in sources if not s.in_domain]
    scope, scope_name = (ood, "out-of-domain") if ood else ([s.label for s in sources], "all")
    indices = {s.label: bootstrap_indices(s.windows, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED + i) for i, s in enumerate(sources)}
    dense_draws = {
        s.label: log_ppl_draws(nested_get(dense, "eval", "perplexity", "sources", s.label, "window_nll"), [s.tokens] * s.windows, indices[s.label])
        for s in sources
    }
    ok = [r for r in runs if r.get("status") == "ok"]
    tasks = _task_sizes(ok)
    item_indices = {t: bootstrap_indices(n, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED + 1000 + i) for i, (t, n) in enumerate(tasks.items())}
    per_run = {r["run_id"]: _run_measures(r, dense, sources, indices, dense_draws, tasks, item_indices, scope) for r in ok}
    bits_per_byte = any(vocabulary_differs(r, dense) for r in ok)
    if bits_per_byte:
        for r in ok:
            per_run[r["run_id"]].update(_bpb_measures(r, dense, sources, indices, scope))
    grouped: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for record in ok:
        key = (
            str(nested_get(record, "protocol", "method", "name")),
            str(nested_get(record, "protocol", "budget", "label")),
            str(nested_get(record, "protocol", "recovery", "label") or "none"),
        )
        grouped.setdefault(key, []).append(record)
    groups = []
    better: dict[str, Literal["min", "max"]] = {}
    for (method, budget, recovery), records in grouped.items():
        group = Group(method, budget, records, recovery=recovery)
        keys = set.intersection(*(set(per_run[r["run_id"]]) for r in records))
        for key in sorted(keys):
            log_scale = not key.startswith("acc:")
            group.measures[key] = _combine([per_run[r["run_id"]][key] for r in records], log_scale)
            better[key] = "max" if key.startswith("acc:") else "min"
        groups.append(group)
    for key, direction in better.items():
        _rank(groups, key, direction)
    return Summary(
        sources=sources,
        summary_scope=scope_name,
        tasks=tasks,
        groups=groups,
        per_run=per_run,
        taus=_taus(groups, sources),
        better=better,
        recovery_taus=_recovery_taus(groups),
        bits_per_byte=bits_per_byte,
    )


def bits_per_byte_fields(ev: dict[str, Any], measures: dict[str, Measure], summary: Summary, dense: bool) -> dict[str, Any]:
    """A table row's bits per byte per source, its ratio to dense with the interval, and the ratios' geometric mean (``bpb_ood_ratio``).

    ``ev``: the record's evaluation; ``measures``: its :attr:`Summary.per_run` entry; ``dense``: whether it is the dense record.
    """
    out: dict[str, Any] = {}
    for key, label in [*((f"bpb:{s.label}", s.label) for s in summary.sources), ("bpb", None)]:
        name = "bpb_ood_ratio" if label is None else f"bpb_ratio_{label}"
        if label is not None:
            out[f"bpb_{label}"] = nested_get(ev, "perplexity", "sources", label, "bits_per_byte")
        measure = measures.get(key)
        out[name] = 1.0 if dense else measure.value() if measure else None
        out[f"{name}_low"], out[f"{name}_high"] = measure.interval() if measure else (None, None)
    return out
