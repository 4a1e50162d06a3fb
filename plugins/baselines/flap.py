"""FLAP: fluctuation-based adaptive structured pruning with bias compensation (An et al., AAAI 2024,
"Fluctuation-based Adaptive Structured Pruning for Large Language Models").

Scoring works on the inputs of the two output projections, o_proj (per attention channel) and
down_proj (per FFN channel), from one forward-only pass over calibration windows:

* the metric of input channel j (FLAP's ``metrics``): ``WIFV`` (default) = the variance of feature j
  over calibration tokens times ``||W[:, j]||^2``; ``IFV`` = the variance alone; ``WIFN`` = the mean
  over rows of ``|W[:, j]| * ||x_j||`` (RMS over tokens);
* as in the reference code, the attention channel metric is squared, then both kinds are
  standardised per layer (subtract the layer's mean, divide by its unbiased std);
* a KV group's score is the mean of its G·head_dim standardised o_proj channels (FLAP averages a
  head's channels after standardising).

Allocation is global (FLAP's adaptive "AL-AM" structure): the core projector's default ``rank``
policy walks the standardised scores from the top and counts each unit's exact parameter cost, the
role FLAP's compression weights (a head costs ``512/3`` channels in LLaMA) play when it thresholds the
sorted scores. Scores are not divided by cost.

Recalibration (``bias_compensation``): every removed channel is replaced by its mean contribution,
``mlp_bias = W_down[:, removed] @ mean(x_down)[removed]`` and ``attn_bias = W_o[:, removed] @
mean(x_o)[removed]`` with means over the same calibration tokens; the core folds them into
down_proj / o_proj biases, so each pruned sublayer keeps the dense sublayer's mean output on the
calibration data.

The compensation is also a recalibration plugin of its own, ``bias`` (:class:`BiasCompensation`), which
any scorer can use (``llm-pruner+bias``); ``flap+bias`` with the same windows computes what ``flap`` does.

Differences from the reference code: the variance is the exact unbiased variance over all
calibration tokens (FLAP's running update counts batches), and statistics come from one pass of the
dense model rather than layer by layer over cached hidden states (the same numbers, since FLAP
prunes only after all statistics are gathered).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

import torch
from pydantic import Field

from pruneframe.architectures import unit_indices
from pruneframe.toolkit.collect import Moments, collect_input_moments, column_sums_of, mean_contribution
from pruneframe.pipeline.hookspecs import hookimpl
from pruneframe.pipeline.methods import PruningMethod, Recalibration, ScoringContext
from pruneframe.pipeline.recalibration import RecalibrationConfig, RecalibrationMethod
from pruneframe.toolkit.streaming import StreamingOptions
from pruneframe.pipeline.units import UnitKind
from pruneframe_baselines import AllocationConfig

__all__ = ["FLAPConfig", "FLAP", "BiasConfig", "BiasCompensation", "channel_metric", "standardise", "projection_moments", "compensation"]

PositiveInt = Annotated[int, Field(ge=1)]
Metric = Literal["WIFV", "IFV", "WIFN"]

_TARGETS = {"o_in": lambda m: m.o_proj, "down_in": lambda m: m.down_proj}


class FLAPConfig(AllocationConfig, StreamingOptions):
    """FLAP settings.

    Attributes:
        metric: ``WIFV`` (weighted input feature variance, FLAP's default), ``IFV`` or ``WIFN``.
        num_windows: calibration windows (FLAP's paper uses 1024 windows of 128 tokens).
        seq_len: tokens per window.
        batch_size: windows per forward pass.
        bias_compensation: fold the removed channels' mean contribution into output biases.
        allocation: ``global`` (FLAP's adaptive structure) or ``uniform``.
        offload, compute_device: ``offload="cpu"`` streams the calibration pass one decoder layer
            at a time through ``compute_device`` (:class:`~pruneframe.toolkit.streaming.StreamingOptions`).
    """

    metric: Metric = "WIFV"
    num_windows: PositiveInt = 64
    seq_len: Annotated[int, Field(ge=2)] = 128
    batch_size: PositiveInt = 8
    bias_compensation: bool = True
    allocation: Literal["global", "uniform"] = "global"


class BiasConfig(RecalibrationConfig, StreamingOptions):
    """Settings of the ``bias`` recalibration: the calibration windows its means are taken over.

    Attributes:
        num_windows: calibration windows (FLAP's default here).
        seq_len: tokens per window.
        batch_size: windows per forward pass.
    """

    num_windows: PositiveInt = 64
    seq_len: Annotated[int, Field(ge=2)] = 128
    batch_size: PositiveInt = 8


def projection_moments(
    context: ScoringContext, cfg: FLAPConfig | BiasConfig, owner: str, cache: dict[tuple[int, int], dict[str, list[Moments]]]
) -> dict[str, list[Moments]]:
    """Input moments of every o_proj and down_proj over ``cfg``'s calibration windows (one forward pass).

    ``cache`` keeps the last result per (model, calibration) pair, so scoring and recalibrating on the
    same model and data run one pass.
    """
    calibration = context.require_calibration(owner)
    key = (id(context.model), id(calibration))
    if key in cache:
        return cache[key]
    windows = calibration.windows(cfg.num_windows, cfg.seq_len)
    moments = collect_input_moments(
        context.model,
        windows,
        _TARGETS,
        batch_size=cfg.batch_size,
        progress=context.progress,
        desc=f"{owner} fluctuation",
        adapter=context.units.adapter,
        streaming=cfg.streaming,
        device=cfg.device_for(context.model) if cfg.streaming else None,
    )
    context.stats["calibration_tokens"] = int(windows.numel())
    context.stats["forward_passes"] = context.stats.get("forward_passes", 0) + -(-len(windows) // cfg.batch_size)
    cache.clear()
    cache[key] = moments
    return moments


def compensation(context: ScoringContext, mask: torch.Tensor, moments: dict[str, list[Moments]]) -> Recalibration:
    """FLAP's bias compensation for ``mask``: each removed channel's mean contribution as an output bias."""
    units, mask = context.units, mask.bool().cpu()
    layers = context.layers()
    hidden = layers[0].o_proj.out_features
    mlp_bias = torch.zeros(units.num_layers, hidden, dtype=torch.float64)
    attn_bias = torch.zeros(units.num_layers, hidden, dtype=torch.float64)
    with torch.no_grad():
        for i, mods in enumerate(layers):
            removed = torch.nonzero(~mask[units.slice(i, UnitKind.FFN)]).flatten()
            mlp_bias[i] = mean_contribution(mods.down_proj.weight, moments["down_in"][i].mean(), removed)
            groups = torch.nonzero(~mask[units.slice(i, UnitKind.KV)]).flatten()
            cols = unit_indices(groups, mods.queries_per_group * mods.head_dim)
            attn_bias[i] = mean_contribution(mods.o_proj.weight, moments["o_in"][i].mean(), cols)
    context.stats["bias_compensation"] = True
    return Recalibration(mlp_bias=mlp_bias.float(), attn_bias=attn_bias.float())


def channel_metric(metric: Metric, weight: torch.Tensor, moments: Moments) -> torch.Tensor:
    """FLAP's per-input-channel metric of a linear layer from its input moments (float64, CPU)."""
    if metric == "IFV":
        return moments.variance().cpu()
    if metric == "WIFV":
        return moments.variance().cpu() * column_sums_of(weight, lambda block, _: block.square())
    norm = moments.mean_square().sqrt()
    return column_sums_of(weight, lambda block, cols: block.abs() * norm[cols].to(block.device)[None, :]) / weight.shape[0]


def standardise(values: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / std`` over one layer's channels; all zeros when the std is zero or undefined."""
    if values.numel() < 2:
        return torch.zeros_like(values)
    std = values.std()
    if not torch.isfinite(std) or std <= 0:
        return torch.zeros_like(values)
    return (values - values.mean()) / std


class FLAP(PruningMethod):
    """Standardised fluctuation scores on o_proj / down_proj inputs, plus mean-output bias compensation."""

    name = "flap"
    Config = FLAPConfig
    summary = "fluctuation metric on o_proj/down_proj inputs, standardised per layer, with bias compensation"
    config: FLAPConfig

    def __init__(self, config: FLAPConfig | dict[str, Any] | None = None) -> None:
        super().__init__(config)
        # input moments of the last scoring pass, reused by recalibrate() on the same model and data
        self._moments: dict[tuple[int, int], dict[str, list[Moments]]] = {}

    def _collect(self, context: ScoringContext) -> dict[str, list[Moments]]:
        return projection_moments(context, self.config, self.name, self._moments)

    def score(self, context: ScoringContext) -> torch.Tensor:
        """One standardised fluctuation score per unit (float32, flat unit order)."""
        units, metric = context.units, self.config.metric
        moments = self._collect(context)
        scores = torch.empty(len(units), dtype=torch.float32)
        for i, mods in enumerate(context.layers()):
            mlp = standardise(channel_metric(metric, mods.down_proj.weight, moments["down_in"][i]))
            attn = standardise(channel_metric(metric, mods.o_proj.weight, moments["o_in"][i]).square())
            per_group = mods.queries_per_group * mods.head_dim
            scores[units.slice(i, UnitKind.FFN)] = mlp.float()
            scores[units.slice(i, UnitKind.KV)] = attn.reshape(-1, per_group).mean(1).float()
        return scores

    def recalibrate(self, context: ScoringContext, mask: torch.Tensor) -> Recalibration | None:
        """Output-bias corrections ``[num_layers, hidden]`` for ``mask`` (None without bias compensation)."""
        if not self.config.bias_compensation:
            return None
        return compensation(context, mask, self._collect(context))


class BiasCompensation(RecalibrationMethod):
    """``bias``: FLAP's bias compensation for any scorer's mask (see the module docstring)."""

    name = "bias"
    Config = BiasConfig
    summary = "FLAP's compensation: each removed channel's mean output folded into an output bias"
    config: BiasConfig

    def __init__(self, config: BiasConfig | dict[str, Any] | None = None) -> None:
        super().__init__(config)
        self._moments: dict[tuple[int, int], dict[str, list[Moments]]] = {}

    def recalibrate(self, context: ScoringContext, mask: torch.Tensor) -> Recalibration:
        """Output-bias corrections ``[num_layers, hidden]`` for ``mask``."""
        return compensation(context, mask, projection_moments(context, self.config, self.name, self._moments))


@hookimpl
def pruneframe_register_methods(register: Callable[[type[PruningMethod]], None]) -> None:
    """Register FLAP."""
    register(FLAP)


@hookimpl
def pruneframe_register_recalibrations(register: Callable[[type[RecalibrationMethod]], None]) -> None:
    """Register the ``bias`` recalibration."""
    register(BiasCompensation)
