"""Evaluators: perplexity, zero-shot accuracy, size and speed, each stamping its protocol."""

from pruneframe.evaluation.base import EvalContext, Evaluator
from pruneframe.evaluation.perplexity import (
    NonFiniteError,
    PerplexityEvaluator,
    PerplexityResult,
    perplexity,
)
from pruneframe.evaluation.size import SizeEvaluator, checkpoint_bytes, layer_widths, parameter_counts
from pruneframe.evaluation.speed import SpeedEvaluator, ideal_speedup, measure_speed, model_flops_per_token
from pruneframe.evaluation.zeroshot import ZeroShotEvaluator, zeroshot

__all__ = [
    "EvalContext",
    "Evaluator",
    "NonFiniteError",
    "PerplexityEvaluator",
    "PerplexityResult",
    "perplexity",
    "SizeEvaluator",
    "checkpoint_bytes",
    "layer_widths",
    "parameter_counts",
    "SpeedEvaluator",
    "ideal_speedup",
    "measure_speed",
    "model_flops_per_token",
    "ZeroShotEvaluator",
    "zeroshot",
]
