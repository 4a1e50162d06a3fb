"""Wanda-sp: structured Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for LLMs"),
as the FLAP paper (An et al. 2024) uses it for its structured baseline.

Wanda scores a weight by ``|W_ij| * ||x_j||``, its magnitude times the norm of the input feature it
reads. A unit's score is the mean of that over its weights:

* FFN channel c: gate_proj and up_proj row c (inputs: the MLP input features) and down_proj
  column c (input: channel c's activation);
* KV group: its q/k/v rows (inputs: the attention input features) and its o_proj columns (inputs:
  those heads' outputs).

``||x_j||`` is the root mean square of feature j over all calibration tokens (Wanda's L2 norm up to
a constant). Dividing by the unit's parameter count makes FFN channels and KV groups comparable
under ``allocation="global"``; with the default ``uniform`` allocation only within-layer order
matters. ``matrices="output"`` scores with the down_proj / o_proj columns alone, which is exactly the
FLAP repository's ``prune_wanda_sp`` (its per-column mean over rows, heads summed over their
channels, up to a per-kind constant).

Differences from the FLAP code: statistics come from one forward pass of the dense model (FLAP
prunes layer by layer and feeds each layer its pruned predecessors' outputs), and the core projector
meets the parameter budget exactly instead of a per-layer channel ratio.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal

import torch
from pydantic import Field

from pruneframe.toolkit.collect import collect_input_moments
from pruneframe.pipeline.hookspecs import hookimpl
from pruneframe.pipeline.methods import PruningMethod, ScoringContext
from pruneframe.toolkit.streaming import StreamingOptions
from pruneframe.pipeline.units import UnitKind
from pruneframe_baselines import AllocationConfig

__all__ = ["WandaSPConfig", "WandaSP"]

PositiveInt = Annotated[int, Field(ge=1)]

# which linear layer's input each part reads (q/k/v share one input, gate/up another)
_INPUT_OF = {
    "gate_proj": "mlp_in",
    "up_proj": "mlp_in",
    "down_proj": "down_in",
    "q_proj": "attn_in",
    "k_proj": "attn_in",
    "v_proj": "attn_in",
    "o_proj": "o_in",
}
_TARGETS = {
    "mlp_in": lambda m: m.mlp_in,
    "down_in": lambda m: m.down_proj,
    "attn_in": lambda m: m.attn_in,
    "o_in": lambda m: m.o_proj,
}
_OUTPUT_PARTS = ("down_proj", "o_proj")


class WandaSPConfig(AllocationConfig, StreamingOptions):
    """Wanda-sp settings.

    Attributes:
        num_windows: calibration windows for the activation norms.
        seq_len: tokens per window.
        batch_size: windows per forward pass.
        matrices: ``all`` (every weight of a unit) or ``output`` (down_proj / o_proj columns only,
            as in the FLAP repository's wanda-sp).
        allocation: ``uniform`` (FLAP's wanda-sp prunes every layer by the same ratio) or ``global``.
        offload, compute_device: ``offload="cpu"`` streams the calibration pass one decoder layer
            at a time through ``compute_device`` (:class:`~pruneframe.toolkit.streaming.StreamingOptions`).
    """

    num_windows: PositiveInt = 64
    seq_len: Annotated[int, Field(ge=2)] = 128
    batch_size: PositiveInt = 8
    matrices: Literal["all", "output"] = "all"
    allocation: Literal["global", "uniform"] = "uniform"


class WandaSP(PruningMethod):
    """Mean of ``|W| * ||x||`` over each unit's weights, from one forward-only calibration pass."""

    name = "wanda-sp"
    Config = WandaSPConfig
    summary = "structured Wanda: mean |W| x input-feature norm per unit (FLAP's baseline)"
    config: WandaSPConfig

    def score(self, context: ScoringContext) -> torch.Tensor:
        """One score per unit (float32, flat unit order)."""
        cfg, units = self.config, context.units
        windows = context.require_calibration(self.name).windows(cfg.num_windows, cfg.seq_len)
        keys = {_INPUT_OF[p] for p in _OUTPUT_PARTS} if cfg.matrices == "output" else set(_TARGETS)
        moments = collect_input_moments(
            context.model,
            windows,
            {k: _TARGETS[k] for k in sorted(keys)},
            batch_size=cfg.batch_size,
            progress=context.progress,
            desc="wanda-sp norms",
            adapter=units.adapter,
            streaming=cfg.streaming,
            device=cfg.device_for(context.model) if cfg.streaming else None,
        )
        context.stats["calibration_tokens"] = int(windows.numel())
        context.stats["forward_passes"] = -(-len(windows) // cfg.batch_size)
        scores = torch.empty(len(units), dtype=torch.float32)
        with torch.no_grad():
            for i, layer in enumerate(context.layers()):
                for kind in (UnitKind.FFN, UnitKind.KV):
                    parts = layer.of(kind)
                    if cfg.matrices == "output":
                        parts = [p for p in parts if p.name in _OUTPUT_PARTS]
                    total = 0.0
                    for part in parts:
                        norm = moments[_INPUT_OF[part.name]][i].mean_square().sqrt().to(part.weight.device)
                        if part.axis == 1:  # the input features of a column slice are its own columns
                            norm = norm[part.start : part.stop]
                        total = total + part.per_unit_sum_of(lambda block, ch: block.abs() * (norm[ch] if part.axis == 1 else norm)[None, :]).cpu()
                    n = sum(p.params_per_unit for p in parts)
                    scores[units.slice(i, kind)] = (total / n).float()
        return scores


@hookimpl
def pruneframe_register_methods(register: Callable[[type[PruningMethod]], None]) -> None:
    """Register the Wanda-sp baseline."""
    register(WandaSP)
