"""What the benchmark scripts share: where things live, stored comparisons, accumulating JSON, timing helpers.

Scripts import it as ``from common import ...`` (a script's own folder is first on ``sys.path``).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pruneframe.util.io import write_json_atomic

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs"
RUNS = DOCS / "runs"

#: Not published methods: controls.
CONTROLS = ("random",)
#: What must agree between two comparisons for their rows to sit in one table (besides the weights and the windows).
PROTOCOL_FIELDS = ("calibration", "dtype")


def load_results(path: Path) -> dict[str, Any]:
    """A comparison's stored ``results.json`` (``path`` is its folder or the file)."""
    file = path / "results.json" if path.is_dir() else path
    return json.loads(file.read_text())


def keep_of(budget_label: str) -> float:
    """The keep-ratio of a report's budget label (``keep 0.8 of prunable params`` -> 0.8)."""
    return float(budget_label.split()[1])


def is_pipeline(method: str) -> bool:
    """Whether ``method`` was assembled from parts (a recalibration or a removal mode named) rather than published."""
    return "+" in method or "@" in method


def ood_cells(results: dict[str, Any], measure: str = "ood", recovery: str = "none") -> dict[tuple[str, float], dict[str, float]]:
    """(method, keep) -> one measure (value, low, high) of a comparison's groups with ``recovery``: by default the OOD geomean."""
    cells = {}
    for group in results["summary"]["groups"]:
        if group["recovery"] != recovery or measure not in group["measures"]:
            continue
        found = group["measures"][measure]
        cells[(group["method"], keep_of(group["budget"]))] = {k: found[k] for k in ("value", "low", "high")}
    return cells


def in_domain_source(results: dict[str, Any]) -> str | None:
    """The label of a comparison's in-domain source (the calibration text's domain), if it has one."""
    return next((s["label"] for s in results["summary"]["sources"] if s["in_domain"]), None)


def protocol_mismatch(first: dict[str, Any], second: dict[str, Any]) -> list[str]:
    """The protocol fields in which two comparisons differ (model weights, calibration, dtype, perplexity windows)."""
    diffs = [f for f in PROTOCOL_FIELDS if first[f] != second[f]]
    if first["model"]["weights_fingerprint"] != second["model"]["weights_fingerprint"]:
        diffs.append("model weights")
    if any(first["evaluation"]["perplexity"][k] != second["evaluation"]["perplexity"][k] for k in ("config", "data")):
        diffs.append("perplexity protocol")
    return diffs


def write_json_if_changed(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON unless ``path`` already holds the same data (a stored file keeps its bytes)."""
    if path.exists() and json.loads(path.read_text()) == json.loads(json.dumps(data, default=str)):
        return
    write_json_atomic(path, data)


def with_run(path: Path, run: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs stored in ``path`` (a JSON object with ``runs``) with ``run`` added last: runs accumulate."""
    old = json.loads(path.read_text())["runs"] if path.exists() else []
    return [*old, run]


def machine() -> dict[str, Any]:
    """The processor name, core count and 1-minute load average, recorded beside timings."""
    return {"machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(), "load_avg_1min": os.getloadavg()[0]}


def timed(fn: Callable[[], object]) -> float:
    """Wall seconds of one call of ``fn``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def worker_json(command: list[str], timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a worker process and parse the JSON object its last line of output prints.

    Raises:
        RuntimeError: the worker failed or timed out (the message holds the end of its error output).
    """
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, env=env)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"timed out after {timeout:.0f} s") from None
    if done.returncode != 0:
        raise RuntimeError(f"failed\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
