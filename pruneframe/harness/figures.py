"""The comparison's figures, drawn from the same :class:`~pruneframe.harness.summary.Summary` as the table.

Every plotted number comes from the functions the table's cells call: a perplexity point is its group's
:meth:`Measure.value() <pruneframe.harness.summary.Measure.value>` (the geometric mean over seeds), its
bar the measure's 95% paired-bootstrap interval and its shaded bar the seed range; an accuracy point is
the group's accuracy measure with its 95% Wilson interval; kept parameters and speedups come from
:mod:`pruneframe.harness.group_values`. The point data are returned by pure functions
(:func:`quality_points`, :func:`speed_points`), so a test can compare them with the table without
reading an image.

Figures (PNG bytes by name, see :func:`render`):

- ``ppl_vs_params``: the out-of-domain geomean perplexity ratio (log scale) against kept parameters;
- ``acc_vs_params``: one panel per zero-shot task, accuracy against kept parameters;
- ``quality_vs_speed_<budget>``: per budget, the out-of-domain geomean against the measured prefill and
  decode speedups, the ideal speedups marked; a second row with llama.cpp's speedups when measured.

When some run's vocabulary differs from the dense model's (``Summary.bits_per_byte``), the quality axis is the
geomean of bits per byte over dense's, the measure that ranks such runs, and speedups are per byte of text.

Recovered groups are drawn hollow with dashed lines, each joined to its method's unrecovered point at the
same budget by an arrow. At a budget every method keeps nearly the same parameter count, so in the
parameter figures the methods are offset sideways a little (the axis label says so) to keep their bars apart.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from pruneframe.harness.group_values import engine_speedup, kept_params, llamacpp_prefill_len, per_byte, wilson_interval
from pruneframe.harness.summary import Group, Summary, nested_get

__all__ = ["Point", "series_label", "quality_points", "speed_points", "recovery_pairs", "budget_slug", "render"]

Engine = Literal["torch", "llamacpp"]
_RECOVERY_MARKERS = ("s", "^", "D", "v", "P")


@dataclass(frozen=True)
class Point:
    """One plotted point: a group's value with its 95% interval, its seed range and (speed figures) its speedup.

    Attributes:
        method, budget, recovery: the group.
        x: kept parameters (parameter figures) or the measured speedup (speed figures).
        x_low, x_high: the speedup's spread (speed figures only).
        ideal: the ideal speedup (speed figures only).
        y: the table's value; low, high: its 95% interval.
        seed_low, seed_high: min and max over seeds (``None`` with one seed).
    """

    method: str
    budget: str
    recovery: str
    x: float
    y: float
    low: float
    high: float
    seed_low: float | None = None
    seed_high: float | None = None
    x_low: float | None = None
    x_high: float | None = None
    ideal: float | None = None


def series_label(group: Group) -> str:
    """The legend label: the method, with its recovery in brackets when recovered."""
    return group.method if group.recovery == "none" else f"{group.method} ({group.recovery})"


#: The longest budget slug: a figure's file name stays well within a file system's 255 bytes.
_SLUG_MAX = 100


def budget_slug(budget: str) -> str:
    """A file-name-safe form of a budget label (``keep 0.8 of prunable params`` -> ``keep-0.8-of-prunable-params``), at most 100 characters."""
    return re.sub(r"[^a-z0-9.]+", "-", budget.lower()).strip("-")[:_SLUG_MAX].strip("-") or "budget"


def _y(group: Group, key: str, summary: Summary) -> tuple[float, float, float, float | None, float | None] | None:
    """(value, low, high, seed min, seed max) of measure ``key``: the bootstrap interval, or Wilson's for accuracies."""
    measure = group.measures.get(key)
    if measure is None:
        return None
    value = measure.value()
    if key.startswith("acc:"):
        low, high = wilson_interval(value, summary.tasks[key.removeprefix("acc:")])
    else:
        low, high = measure.interval()
    seed_low, seed_high = measure.seed_range() if len(measure.seed_points) > 1 else (None, None)
    return value, low, high, seed_low, seed_high


def quality_points(summary: Summary, key: str) -> dict[str, list[Point]]:
    """Per series label: the groups' ``key`` measure (``ood``, ``ratio:<source>``, ``acc:<task>``) against kept parameters.

    Points are sorted by kept parameters; groups without the measure or without a prune report are left out.
    """
    out: dict[str, list[Point]] = {}
    for group in summary.groups:
        y, x = _y(group, key, summary), kept_params(group)
        if y is None or x is None:
            continue
        out.setdefault(series_label(group), []).append(Point(group.method, group.budget, group.recovery, x, y[0], y[1], y[2], y[3], y[4]))
    return {label: sorted(points, key=lambda p: p.x) for label, points in out.items()}


def speed_points(
    summary: Summary, budget: str, phase: Literal["prefill", "decode"], engine: Engine = "torch", key: str = "ood", dense: dict[str, Any] | None = None
) -> list[Point]:
    """The groups at ``budget`` with measure ``key`` against their measured ``phase`` speedup in ``engine``.

    With ``dense`` (the dense record), the speedups are per byte of text (:func:`~pruneframe.harness.group_values.per_byte`).
    """
    points = []
    for group in summary.groups:
        if group.budget != budget:
            continue
        y, s = _y(group, key, summary), engine_speedup(group, phase, engine)
        s = per_byte(s, group, dense) if dense is not None else s
        if y is None or s is None:
            continue
        points.append(Point(group.method, group.budget, group.recovery, s.value, y[0], y[1], y[2], y[3], y[4], s.low, s.high, s.ideal))
    return points


def recovery_pairs(points: Iterable[Point]) -> list[tuple[Point, Point]]:
    """(before, after) per recovered point: the same method's unrecovered point at the same budget (the arrows)."""
    points = list(points)
    before = {(p.method, p.budget): p for p in points if p.recovery == "none"}
    return [(before[(p.method, p.budget)], p) for p in points if p.recovery != "none" and (p.method, p.budget) in before]


def _key(p: Point) -> tuple[str, str, str]:
    return p.method, p.budget, p.recovery


# ----------------------------------------------------------------------------- drawing


def _colours(summary: Summary) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    methods = sorted({g.method for g in summary.groups})
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


def _recovery_styles(summary: Summary) -> dict[str, tuple[str, str]]:
    """Marker and line style per recovery: filled circles and solid lines for unrecovered groups."""
    recoveries = [r for r in dict.fromkeys(g.recovery for g in summary.groups) if r != "none"]
    styles = {"none": ("o", "-")}
    styles.update({r: (_RECOVERY_MARKERS[i % len(_RECOVERY_MARKERS)], "--") for i, r in enumerate(recoveries)})
    return styles


def _draw_point(axes: Any, x: float, p: Point, colour: Any, marker: str, hollow: bool, horizontal: bool) -> None:
    """The 95% interval as a capped bar, the seed range as a wide translucent bar, then the marker."""
    if p.seed_low is not None and p.seed_high is not None:
        axes.vlines(x, p.seed_low, p.seed_high, colors=[colour], linewidth=6, alpha=0.25, zorder=2)
    xerr = None
    if horizontal and p.x_low is not None and p.x_high is not None:
        xerr = [[max(p.x - p.x_low, 0.0)], [max(p.x_high - p.x, 0.0)]]
    # a point lies inside its interval (Measure.interval); the bars never reach past it the other way
    yerr = [[max(p.y - p.low, 0.0)], [max(p.high - p.y, 0.0)]]
    axes.errorbar([x], [p.y], yerr=yerr, xerr=xerr, fmt="none", ecolor=colour, elinewidth=1, capsize=3, zorder=3)
    axes.plot(
        [x], [p.y], marker=marker, linestyle="none", markersize=6, color=colour, markerfacecolor="white" if hollow else colour, markeredgewidth=1.4, zorder=4
    )


def _arrow(axes: Any, start: tuple[float, float], end: tuple[float, float], colour: Any) -> None:
    axes.annotate("", xy=end, xytext=start, zorder=5, arrowprops={"arrowstyle": "->", "color": colour, "linewidth": 1.2, "shrinkA": 4, "shrinkB": 5})


def _legend(axes: Any, summary: Summary, intervals: str, spread: str | None = None) -> None:
    """Methods by colour, recoveries by marker, the interval conventions, outside the axes on the right."""
    from matplotlib.lines import Line2D

    colours, styles = _colours(summary), _recovery_styles(summary)
    handles = [Line2D([], [], color=c, marker="o", linestyle="-", label=m) for m, c in colours.items()]
    handles += [
        Line2D([], [], color="grey", marker=styles[r][0], markerfacecolor="white", linestyle=styles[r][1], label=f"after {r}") for r in styles if r != "none"
    ]
    handles.append(Line2D([], [], color="black", marker="*", markersize=10, linestyle="none", label="dense"))
    handles.append(Line2D([], [], color="grey", linewidth=1, marker="_", markersize=8, label=intervals))
    if spread:
        handles.append(Line2D([], [], color="grey", linewidth=1, marker="|", markersize=8, label=spread))
    if any(len(m.seed_points) > 1 for g in summary.groups for m in g.measures.values()):
        handles.append(Line2D([], [], color="grey", linewidth=6, alpha=0.25, label="seed range (min-max)"))
    axes.legend(handles=handles, fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def _offsets(summary: Summary, points: dict[str, list[Point]], width: float) -> dict[tuple[str, str], float]:
    """Sideways offsets (in x units) per (method, recovery), methods spread around 0, recoveries just right of theirs."""
    methods = sorted({p.method for pts in points.values() for p in pts})
    recoveries = list(_recovery_styles(summary))
    step = width * 0.012
    centre = (len(methods) - 1) / 2
    return {(m, r): (i - centre) * step * (1 + 0.5 * (len(recoveries) > 1)) + j * step * 0.5 for i, m in enumerate(methods) for j, r in enumerate(recoveries)}


def _params_axes(axes: Any, summary: Summary, points: dict[str, list[Point]], dense_point: tuple[float, float] | None, ylabel: str, log_y: bool) -> None:
    """Series against kept parameters (millions), recovered groups hollow and dashed, before/after arrows."""
    colours, styles = _colours(summary), _recovery_styles(summary)
    xs = [p.x for pts in points.values() for p in pts] + ([dense_point[0]] if dense_point else [])
    scale, unit = next((s, u) for s, u in ((1e9, "billions"), (1e6, "millions"), (1e3, "thousands"), (1.0, "")) if max(xs) >= s or s == 1.0)
    width = (max(xs) - min(xs)) / scale if max(xs) > min(xs) else max(xs) / scale
    offsets = _offsets(summary, points, width)
    placed: dict[tuple[str, str, str], tuple[float, float]] = {}
    for _label, pts in sorted(points.items()):
        method, recovery = pts[0].method, pts[0].recovery
        colour, (marker, line) = colours[method], styles[recovery]
        xs_m = [p.x / scale + offsets[(method, recovery)] for p in pts]
        axes.plot(xs_m, [p.y for p in pts], linestyle=line, color=colour, linewidth=1, alpha=0.7, zorder=1)
        for x, p in zip(xs_m, pts):
            _draw_point(axes, x, p, colour, marker, hollow=recovery != "none", horizontal=False)
            placed[_key(p)] = (x, p.y)
    for before, after in recovery_pairs(p for pts in points.values() for p in pts):
        _arrow(axes, placed[_key(before)], placed[_key(after)], colours[after.method])
    if dense_point is not None:
        axes.axhline(dense_point[1], color="black", linestyle=":", linewidth=0.8, zorder=0)
        axes.plot([dense_point[0] / scale], [dense_point[1]], marker="*", color="black", markersize=11, zorder=4)
    if log_y:
        axes.set_yscale("log")
    axes.set_xlabel(f"kept parameters{f' ({unit})' if unit else ''}; methods offset sideways at each budget")
    axes.set_ylabel(ylabel + (" (log scale)" if log_y else ""))
    axes.grid(True, which="major", alpha=0.3)


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _measure_name(summary: Summary) -> str:
    """What the figures' quality axis shows: bits per byte when some run's vocabulary differs, else perplexity."""
    return "bits per byte" if summary.bits_per_byte else "perplexity"


def _scope_name(summary: Summary) -> str:
    return "out-of-domain" if summary.summary_scope == "out-of-domain" else "all-source"


def perplexity_figure(summary: Summary, dense_params: float | None) -> bytes | None:
    """``ppl_vs_params``: the OOD geomean ratio to dense against kept parameters, or ``None`` without data."""
    points = quality_points(summary, summary.ranking_key)
    if not points:
        return None
    figure = _new_figure(8.2, 4.8)
    axes = figure.add_subplot()
    label = f"{_scope_name(summary)} geomean {_measure_name(summary)} / dense"
    _params_axes(axes, summary, points, (dense_params, 1.0) if dense_params else None, label, log_y=True)
    _legend(axes, summary, "95% paired-bootstrap interval")
    return _png(figure)


def accuracy_figure(summary: Summary, dense: dict[str, Any], dense_params: float | None) -> bytes | None:
    """``acc_vs_params``: one panel per zero-shot task, accuracy against kept parameters, or ``None`` without data."""
    panels = {task: quality_points(summary, f"acc:{task}") for task in summary.tasks}
    panels = {task: pts for task, pts in panels.items() if pts}
    if not panels:
        return None
    columns = min(len(panels), 2)
    rows = -(-len(panels) // columns)
    figure = _new_figure(5.0 * columns + 2.4, 3.8 * rows)
    for i, (task, points) in enumerate(panels.items()):
        axes = figure.add_subplot(rows, columns, i + 1)
        acc = nested_get(dense, "eval", "zeroshot", "tasks", task, "acc")
        _params_axes(axes, summary, points, (dense_params, acc) if dense_params and acc is not None else None, "accuracy", log_y=False)
        axes.set_title(f"{task} ({summary.tasks[task]} items)", fontsize="medium")
        if i == columns - 1 or len(panels) == 1:
            _legend(axes, summary, "95% Wilson interval")
    return _png(figure)


def _speed_axes(axes: Any, summary: Summary, points: list[Point], xlabel: str, ideal_label: str) -> None:
    colours, styles = _colours(summary), _recovery_styles(summary)
    for p in points:
        marker, _ = styles[p.recovery]
        _draw_point(axes, p.x, p, colours[p.method], marker, hollow=p.recovery != "none", horizontal=True)
    for before, after in recovery_pairs(points):
        _arrow(axes, (before.x, before.y), (after.x, after.y), colours[after.method])
    ideals = [p.ideal for p in points if p.ideal]
    if ideals:
        low, high = min(ideals), max(ideals)
        text = f"{ideal_label} {low:.2f}x" if high - low < 0.005 else f"{ideal_label} {low:.2f}-{high:.2f}x"
        if high - low < 0.005:
            axes.axvline(low, color="dimgrey", linestyle="--", linewidth=1, zorder=0)
        else:
            axes.axvspan(low, high, color="grey", alpha=0.15, zorder=0)
        axes.text(
            high,
            0.98,
            text + " ",
            transform=axes.get_xaxis_transform(),
            rotation=90,
            va="top",
            ha="right",
            fontsize="small",
            color="dimgrey",
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1},
        )
    axes.axvline(1.0, color="black", linestyle=":", linewidth=0.8, zorder=0)
    axes.axhline(1.0, color="black", linestyle=":", linewidth=0.8, zorder=0)
    axes.plot([1.0], [1.0], marker="*", color="black", markersize=11, zorder=4)
    axes.set_yscale("log")
    axes.set_xlabel(xlabel)
    axes.grid(True, alpha=0.3)


def speed_figure(summary: Summary, budget: str, dense: dict[str, Any] | None = None) -> bytes | None:
    """``quality_vs_speed_<budget>``: OOD geomean against prefill and decode speedups (and llama.cpp's), or ``None``.

    When some run's vocabulary differs (``summary.bits_per_byte``): bits per byte against speedups per byte
    of text (those need ``dense``, the dense record).
    """
    key, per_byte_of = summary.ranking_key, dense if summary.bits_per_byte else None
    rows: list[tuple[Engine, str]] = [("torch", "PyTorch (speed evaluator)")]
    if any(speed_points(summary, budget, "decode", "llamacpp", key)):
        rows.append(("llamacpp", "llama.cpp (llamacpp-speed evaluator)"))
    if not any(speed_points(summary, budget, phase, key=key) for phase in ("prefill", "decode")):
        return None
    figure = _new_figure(11.6, 4.2 * len(rows))
    ylabel = f"{_scope_name(summary)} geomean {_measure_name(summary)} / dense (log scale)"
    unit = " per byte" if per_byte_of is not None else ""
    last = None
    for r, (engine, name) in enumerate(rows):
        for c, phase in enumerate(("prefill", "decode")):
            axes = figure.add_subplot(len(rows), 2, 2 * r + c + 1)
            points = speed_points(summary, budget, phase, engine, key, per_byte_of)
            if engine == "torch":
                xlabel, ideal = f"{phase} speedup{unit} over dense", "FLOPs ideal"
            else:
                length = next((llamacpp_prefill_len(g) for g in summary.groups if g.budget == budget), None)
                xlabel = f"prefill speedup{unit} over dense ({length}-token prompt)" if phase == "prefill" else f"decode speedup{unit} over dense"
                ideal = "FLOPs ideal" if phase == "prefill" else "weight-bytes ideal"
            _speed_axes(axes, summary, points, xlabel, ideal)
            axes.set_title(f"{name}: {phase}", fontsize="medium")
            if c == 0:
                axes.set_ylabel(ylabel)
            last = axes if r == 0 and c == 1 else last
    figure.suptitle(f"Quality against speed at {budget}", fontsize="medium")
    spread = "speedup: ± half IQR of repeats" + ("; llama.cpp: seed range" if len(rows) > 1 else "")
    _legend(last, summary, "95% paired-bootstrap interval", spread)
    return _png(figure)


def render(summary: Summary, dense: dict[str, Any], dense_params: float | None) -> dict[str, bytes]:
    """Every figure with data, as PNG bytes by name (file name without ``.png``)."""
    images = {"ppl_vs_params": perplexity_figure(summary, dense_params), "acc_vs_params": accuracy_figure(summary, dense, dense_params)}
    for budget in dict.fromkeys(g.budget for g in summary.groups):
        images[f"quality_vs_speed_{budget_slug(budget)}"] = speed_figure(summary, budget, dense)
    return {name: image for name, image in images.items() if image is not None}
