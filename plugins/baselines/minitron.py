"""Minitron: activation importance for hidden (embedding) channels, attention heads and FFN neurons
(Muralidharan et al., NeurIPS 2024, "Compact Language Models via Pruning and Knowledge Distillation").

One forward-only pass over calibration windows records, per window, the mean over its tokens of each
activation's magnitude, and aggregates the windows by their L2 norm (the paper's batch and sequence
aggregation, as we read it):

* an FFN neuron: its activation, the input of down_proj (the paper takes the first projection's output;
  with a gated MLP the product that down_proj reads is what the neuron passes on);
* an attention head: the L2 norm over its channels of that aggregate on the input of o_proj (its output
  before the projection); a KV group scores the sum of its query heads, since a KV head is removed with
  the query heads that share it;
* a hidden (embedding) channel: the sum over every layer of that aggregate on the outputs of the norms
  that feed attention and the MLP (the inputs of q/k/v and gate/up).

The hidden dimension is cut to ``hidden_keep`` of its width (default 0.75: the Llama-3.1-Minitron 4B
width model keeps 3,072 of 4,096 channels), and the FFN and KV widths are then set by the exact budget
with the same keep fraction in every layer and kind (``allocation: uniform``, Minitron's models have
uniform layers). Each norm's scale is corrected for the channels it loses
(:class:`~pruneframe.pipeline.methods.HiddenOptions`). The paper's recipe then distils; pruneframe's
``distill`` recovery is that step (``recovery: [{name: distill, tokens: ...}]`` in a comparison).

Depth mode (``removal: layers``, or ``minitron@layers``): whole decoder layers go instead, ranked by the
paper's LM-loss importance: the increase of the mean next-token loss on the calibration windows when
that layer alone is skipped (its output replaced by its input). The exact projector then removes the
least important layers until the budget holds; the hidden dimension and the layers' widths are kept.

Differences from the paper: the depth mode ranks every layer on its own and removes the lowest-ranked,
where the paper also tried contiguous ranges and, for its final models, a downstream task's accuracy;
its architecture search over several candidate widths, each briefly distilled, is replaced by the fixed
``hidden_keep`` (or the ``balanced`` rule) and the budget's exact projection; the calibration windows
default to WikiText-2 validation text here (the paper uses 1,024 samples of its pretraining data).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from torch import nn
from pydantic import Field, model_validator

from pruneframe.pipeline.hookspecs import hookimpl
from pruneframe.pipeline.methods import HiddenOptions, PruningMethod, ScoringContext
from pruneframe.pipeline.units import UnitKind, UnitSet
from pruneframe.toolkit.collect import batches, collect_layer_inputs
from pruneframe.toolkit.distributed import summed
from pruneframe_baselines import AllocationConfig

__all__ = ["MinitronConfig", "Minitron", "WindowL2", "layer_loss_importance"]

PositiveInt = Annotated[int, Field(ge=1)]

_TARGETS = {
    "down_in": lambda m: m.down_proj,
    "o_in": lambda m: m.o_proj,
    "attn_in": lambda m: m.attn_in,
    "mlp_in": lambda m: m.mlp_in,
}


class MinitronConfig(AllocationConfig, HiddenOptions):
    """Minitron settings (width mode by default; ``removal: layers`` is the depth mode).

    Attributes:
        hidden_keep: share of hidden channels kept (default 0.75; ``None`` cuts only heads and neurons;
            ``"balanced"`` cuts the hidden dimension by about the fraction the budget leaves the heads and
            neurons, which a fixed share cannot do at every budget on a model whose embedding dominates).
        num_windows: calibration windows the activations are recorded on.
        seq_len: tokens per window.
        batch_size: windows per forward pass.
        allocation: ``uniform`` (default: the same keep fraction in every layer and kind) or ``global``.
        removal: ``none`` (width mode), or ``layers`` (depth mode: whole layers by LM-loss importance;
            the hidden width is then kept, and ``hidden_keep`` defaults to ``None``).
        depth_windows: calibration windows the depth mode's losses are measured on.
    """

    hidden_keep: Annotated[float, Field(gt=0, le=1)] | Literal["balanced"] | None = 0.75
    num_windows: PositiveInt = 64
    seq_len: Annotated[int, Field(ge=2)] = 256
    batch_size: PositiveInt = 8
    allocation: Literal["global", "uniform"] = "uniform"
    depth_windows: PositiveInt = 16

    @model_validator(mode="before")
    @classmethod
    def _depth_keeps_the_hidden_width(cls, data: Any) -> Any:
        """In depth mode the hidden width stays unless ``hidden_keep`` is set (which the session then refuses)."""
        if isinstance(data, dict) and data.get("removal") == "layers" and "hidden_keep" not in data:
            return {**data, "hidden_keep": None}
        return data


@dataclass
class WindowL2:
    """Per feature: the L2 norm over windows of the mean magnitude over each window's tokens.

    Attributes:
        windows: windows seen.
        total_sq: per feature, the sum over windows of the squared per-window mean magnitude (float64).
    """

    windows: int
    total_sq: torch.Tensor

    @classmethod
    def empty(cls, features: int) -> WindowL2:
        """Zero sums for ``features`` features."""
        return cls(0, torch.zeros(features, dtype=torch.float64))

    def add(self, x: torch.Tensor) -> None:
        """Accumulate inputs ``[windows, tokens, features]``."""
        per_window = x.detach().abs().to(torch.float64).mean(dim=-2).reshape(-1, x.shape[-1])
        self.total_sq = self.total_sq.to(per_window.device) + per_window.square().sum(0)
        self.windows += per_window.shape[0]

    def merge_ranks(self) -> None:
        """Sum the counts and sums over all ranks."""
        self.windows = int(summed(torch.tensor(self.windows, dtype=torch.float64)))
        self.total_sq = summed(self.total_sq)

    def value(self) -> torch.Tensor:
        """The aggregate per feature (float64, CPU)."""
        return self.total_sq.sqrt().cpu()


def _skipped(output: Any, hidden_in: torch.Tensor) -> Any:
    """A decoder layer's output with its hidden states replaced by the layer's input (the layer skipped)."""
    if isinstance(output, tuple):
        return (hidden_in, *output[1:])
    return hidden_in


def layer_loss_importance(model: nn.Module, units: UnitSet, windows: torch.Tensor, batch_size: int, progress: bool = False) -> torch.Tensor:
    """Per decoder layer: the mean next-token loss on ``windows`` with that layer skipped, minus the dense loss (float64).

    One dense pass and one pass per layer; a skipped layer's output is its input, so the rest of the model
    runs unchanged on the stream the layer would have received.
    """
    layers = units.require_adapter().layer_slices(model)
    device = next(model.parameters()).device

    def mean_loss() -> float:
        total, count = 0.0, 0
        with torch.no_grad():
            for batch in batches(windows, batch_size):
                ids = batch.to(device)
                logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
                loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum")
                total += float(loss)
                count += int(ids[:, 1:].numel())
        return total / max(count, 1)

    from tqdm.auto import tqdm

    dense = mean_loss()
    increase = torch.zeros(len(layers), dtype=torch.float64)
    for i, layer in enumerate(tqdm(layers, desc="minitron layer losses", disable=not progress, leave=False)):
        handle = layer.layer.register_forward_hook(
            lambda _m, args, kwargs, output: _skipped(output, kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]), with_kwargs=True
        )
        try:
            increase[i] = mean_loss() - dense
        finally:
            handle.remove()
    return increase


class Minitron(PruningMethod):
    """Activation importance of neurons, heads and hidden channels (see the module docstring)."""

    name = "minitron"
    Config = MinitronConfig
    summary = "activation importance of FFN neurons, heads and hidden channels; cuts the hidden dimension"
    config: MinitronConfig

    def __init__(self, config: MinitronConfig | dict[str, Any] | None = None) -> None:
        super().__init__(config)
        self._stats: dict[tuple[int, int], dict[str, list[WindowL2]]] = {}

    def _collect(self, context: ScoringContext) -> dict[str, list[WindowL2]]:
        calibration = context.require_calibration(self.name)
        key = (id(context.model), id(calibration))
        if key not in self._stats:
            windows = calibration.windows(self.config.num_windows, self.config.seq_len)
            stats = collect_layer_inputs(
                context.model,
                windows,
                _TARGETS,
                WindowL2.empty,
                batch_size=self.config.batch_size,
                progress=context.progress,
                desc="minitron activations",
                adapter=context.units.adapter,
            )
            context.stats["calibration_tokens"] = int(windows.numel())
            self._stats = {key: stats}  # type: ignore[dict-item]
        return self._stats[key]

    def score(self, context: ScoringContext) -> torch.Tensor:
        """One importance per unit (float32, flat unit order); in depth mode every unit carries its layer's."""
        if self.config.removal == "layers":
            return self._depth_scores(context)
        units, stats = context.units, self._collect(context)
        scores = torch.empty(len(units), dtype=torch.float32)
        for i, layer in enumerate(context.layers()):
            scores[units.slice(i, UnitKind.FFN)] = stats["down_in"][i].value().float()
            heads = stats["o_in"][i].value().reshape(-1, layer.head_dim).norm(dim=1)
            scores[units.slice(i, UnitKind.KV)] = heads.reshape(-1, layer.queries_per_group).sum(1).float()
        return scores

    def _depth_scores(self, context: ScoringContext) -> torch.Tensor:
        cfg, units = self.config, context.units
        windows = context.require_calibration(self.name).windows(cfg.depth_windows, cfg.seq_len)
        importance = layer_loss_importance(context.model, units, windows, cfg.batch_size, context.progress)
        context.stats["calibration_tokens"] = int(windows.numel())
        context.stats["layer_loss_increase"] = [round(float(x), 6) for x in importance]
        scores = torch.empty(len(units), dtype=torch.float32)
        for i in range(units.num_layers):
            scores[units.slice(i, UnitKind.FFN)] = float(importance[i])
            scores[units.slice(i, UnitKind.KV)] = float(importance[i])
        return scores

    def score_hidden(self, context: ScoringContext) -> torch.Tensor:
        """One importance per hidden channel: the summed aggregates of every attention and MLP input."""
        stats = self._collect(context)
        total = torch.zeros(context.units.hidden_size, dtype=torch.float64)
        for name in ("attn_in", "mlp_in"):
            for acc in stats[name]:
                total += acc.value()
        return total.float()


@hookimpl
def pruneframe_register_methods(register: Callable[[type[PruningMethod]], None]) -> None:
    """Register Minitron."""
    register(Minitron)
