"""``refit``: re-solve the kept weights of o_proj and down_proj so each layer reproduces its dense output.

A recalibration for any scorer's mask (``SCORER+refit``, ``@mixed`` removal included). For every
decoder layer in order, the input columns of o_proj over the kept heads and of down_proj over the kept
FFN channels are replaced by the ridge least-squares solution that best reproduces the dense
projection's output on calibration tokens, with the activations of the already pruned and refit
layers upstream (:func:`pruneframe.toolkit.refit.sequential_refit`). It adds no parameters: the fold
slices the refit weights like the originals.

This is the closed-form core that the one-shot reconstruction methods after LLM-Pruner share (the
output-matrix regression of SlimLLM; SlimGPT's and ZipLM's OBS updates are the same least squares
solved column by column). The damping is relative to the mean kept diagonal of each Gram matrix.

With ``offload: cpu`` each layer is moved to ``compute_device`` in turn, so the pass needs one layer's
weights, the calibration hidden states and one Gram matrix on the device. Hidden channels, where a
method also cuts them, are cut after the refit on the refit weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import torch
from pydantic import Field

from pruneframe.pipeline.hookspecs import hookimpl
from pruneframe.pipeline.methods import Recalibration, ScoringContext
from pruneframe.pipeline.recalibration import RecalibrationConfig, RecalibrationMethod
from pruneframe.toolkit.refit import sequential_refit
from pruneframe.toolkit.streaming import StreamingOptions

__all__ = ["RefitConfig", "Refit"]

PositiveInt = Annotated[int, Field(ge=1)]


class RefitConfig(RecalibrationConfig, StreamingOptions):
    """Settings of the ``refit`` recalibration.

    Attributes:
        num_windows: calibration windows the Gram matrices are summed over.
        seq_len: tokens per window.
        batch_size: windows per layer call.
        damping: ridge strength, relative to the mean kept diagonal of each Gram matrix (> 0).
    """

    num_windows: PositiveInt = 64
    seq_len: Annotated[int, Field(ge=2)] = 256
    batch_size: PositiveInt = 4
    damping: Annotated[float, Field(gt=0)] = 0.01


class Refit(RecalibrationMethod):
    """Sequential ridge least-squares refit of o_proj and down_proj over the kept units."""

    name = "refit"
    Config = RefitConfig
    summary = "re-solves the kept o_proj and down_proj columns (ridge least squares, layer by layer) to match the dense outputs"
    replaces_weights = True
    config: RefitConfig

    def recalibrate(self, context: ScoringContext, mask: torch.Tensor) -> Recalibration:
        """Replacement o_proj and down_proj weights (full shapes) for ``mask``."""
        cfg = self.config
        windows = context.require_calibration(self.name).windows(cfg.num_windows, cfg.seq_len)
        o_proj, down_proj = sequential_refit(
            context.model,
            context.units,
            mask,
            windows,
            damping=cfg.damping,
            batch_size=cfg.batch_size,
            device=cfg.device_for(context.model) if cfg.streaming else None,
            progress=context.progress,
        )
        context.stats["refit"] = {"tokens": int(windows.numel()), "damping": cfg.damping}
        return Recalibration(o_proj=o_proj, down_proj=down_proj)


@hookimpl
def pruneframe_register_recalibrations(register: Callable[[type[RecalibrationMethod]], None]) -> None:
    """Register the ``refit`` recalibration."""
    register(Refit)
