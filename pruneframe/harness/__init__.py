"""The evaluation harness: head-to-head comparisons of pruning methods under one protocol.

``compare(CompareConfig(...))`` prunes one model with every method x budget x seed, evaluates each result
and the dense model with the same evaluators, caches finished runs, and writes JSON, CSV, Markdown and
plots. ``pruneframe compare`` is its command line.
"""

from pruneframe.harness.config import CalibrationSettings, CompareConfig, EvalConfig, InputError, explain
from pruneframe.harness.runner import CompareOutcome, RunSpec, compare

__all__ = [
    "CalibrationSettings",
    "CompareConfig",
    "CompareOutcome",
    "EvalConfig",
    "InputError",
    "RunSpec",
    "compare",
    "explain",
]
