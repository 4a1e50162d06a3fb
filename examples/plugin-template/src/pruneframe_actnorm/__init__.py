"""``act-norm``: a unit's importance is how much it writes into the residual stream on calibration data.

For an FFN channel ``c`` the score is ``rms(a_c) * ||W_down[:, c]||``: the root mean square of its
activation (the input of down_proj) over calibration tokens times the norm of the down_proj column
it multiplies. For a KV group it is the mean of the same product over the o_proj columns of its
query heads. One forward pass, no gradients, any family pruneframe has an adapter for (the weight
slices tell where a unit's columns are, fused projections included).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import torch
from pydantic import Field

from pruneframe.toolkit.collect import collect_input_moments
from pruneframe.pipeline.hookspecs import hookimpl
from pruneframe.pipeline.methods import MethodConfig, PruningMethod, ScoringContext
from pruneframe.pipeline.units import UnitKind

__all__ = ["ActNormConfig", "ActNorm"]


class ActNormConfig(MethodConfig):
    """act-norm settings (``policy`` and ``scope`` come from :class:`~pruneframe.pipeline.methods.MethodConfig`).

    Attributes:
        num_windows: calibration windows.
        seq_len: tokens per window.
        batch_size: windows per forward pass.
    """

    num_windows: Annotated[int, Field(ge=1)] = 32
    seq_len: Annotated[int, Field(ge=2)] = 128
    batch_size: Annotated[int, Field(ge=1)] = 8


class ActNorm(PruningMethod):
    """Activation RMS times output-column norm, per unit."""

    name = "act-norm"
    Config = ActNormConfig
    summary = "activation RMS x output-column norm per unit (forward only)"
    config: ActNormConfig

    def score(self, context: ScoringContext) -> torch.Tensor:
        """One score per unit (float32, flat unit order)."""
        cfg, units = self.config, context.units
        windows = context.require_calibration(self.name).windows(cfg.num_windows, cfg.seq_len)
        moments = collect_input_moments(
            context.model,
            windows,
            {"down_proj": lambda m: m.down_proj, "o_proj": lambda m: m.o_proj},
            batch_size=cfg.batch_size,
            progress=context.progress,
            desc="act-norm",
            adapter=units.adapter,
        )
        context.stats["calibration_tokens"] = int(windows.numel())
        scores = torch.empty(len(units), dtype=torch.float32)
        with torch.no_grad():
            for i, layer in enumerate(context.layers()):
                for kind, name in ((UnitKind.FFN, "down_proj"), (UnitKind.KV, "o_proj")):
                    part = layer.slice(name)  # input columns: one block of per_unit columns per unit
                    rms = moments[name][i].mean_square().sqrt()[part.start : part.stop]
                    column_norm = part.weight.detach().double().square().sum(0).sqrt().cpu()
                    per_column = rms.cpu() * column_norm
                    scores[units.slice(i, kind)] = per_column.reshape(part.units, part.per_unit).mean(1).float()
        return scores


@hookimpl
def pruneframe_register_methods(register: Callable[[type[PruningMethod]], None]) -> None:
    """Register act-norm."""
    register(ActNorm)
