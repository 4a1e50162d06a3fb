"""GRASPrune's stage B as a recalibration of its own: ``scales``, usable after any scorer's mask.

With the mask fixed, one scale gamma = 1 + alpha * tanh(t) per unit (and optionally one per hidden
dimension of every down_proj and o_proj output) is trained by AdamW with the causal-LM loss or the
KL divergence from the dense model, on calibration sequences taken after ``offset_sequences``; the
core folds the scales into down_proj columns (FFN) and k_proj/v_proj rows (KV). The defaults are
GRASPrune's own, so ``grasprune+scales`` recalibrates as ``grasprune`` does when their settings agree.
:func:`learn_scales` is the loop both use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from pydantic import Field

from pruneframe.toolkit.gates import UnitGates, replaced_weights
from pruneframe.pipeline.methods import Recalibration, ScoringContext
from pruneframe.pipeline.recalibration import RecalibrationConfig, RecalibrationMethod
from pruneframe.toolkit.recompute import recompute_decoder_layers
from pruneframe.toolkit.resume import LoopCheckpoint
from pruneframe.toolkit.streaming import StreamingOptions
from pruneframe_grasprune.training import attention_implementation, batches, frozen, run_loop, window_loss

__all__ = ["ScaleTraining", "learn_scales", "ScalesConfig", "Scales"]

PositiveInt = Annotated[int, Field(ge=1)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]


@dataclass(frozen=True)
class ScaleTraining:
    """How :func:`learn_scales` trains: the scale bound, the optimiser and the batches."""

    alpha: float
    lr: float
    betas: tuple[float, float]
    weight_decay: float
    epochs: int
    loss: str
    outputs: bool
    batch_size: int
    shuffle: bool
    seed: int
    attention: str | None
    recompute: bool


def learn_scales(
    context: ScoringContext,
    mask: torch.Tensor,
    windows: torch.Tensor,
    how: ScaleTraining,
    *,
    stream: torch.device | None = None,
    mlp_bias: torch.Tensor | None = None,
    attn_bias: torch.Tensor | None = None,
    down_proj: list[torch.Tensor] | None = None,
    checkpoint: LoopCheckpoint | None = None,
) -> Recalibration:
    """Train the per-unit scales (and output scales when ``how.outputs``) for the fixed ``mask``.

    ``mlp_bias``/``attn_bias``/``down_proj`` (bias compensation, a refit) are applied while training and
    returned with the scales. Statistics go to ``context.stats["rescale"]``.
    """

    def scale(raw: torch.Tensor) -> torch.Tensor:
        return 1 + how.alpha * torch.tanh(raw)

    steps = how.epochs * -(-len(windows) // how.batch_size)
    device = next(context.model.parameters()).device
    hard = mask.to(device=device, dtype=torch.float32)
    units = context.units
    t = torch.zeros(len(units), device=device, requires_grad=True)
    u = torch.zeros(2, units.num_layers, units.hidden_size, device=device, requires_grad=True) if how.outputs else None
    params = [t] if u is None else [t, u]
    optimizer = torch.optim.AdamW(params, lr=how.lr, betas=how.betas, weight_decay=how.weight_decay)

    with (
        frozen(context.model),
        attention_implementation(context.model, how.attention),
        recompute_decoder_layers(context.model, how.recompute and stream is None),
        UnitGates(context.model, units, fused_glu=True) as gates,
        replaced_weights(context.model, down_proj),
    ):
        gates.set_bias(mlp_bias, attn_bias)

        def gate_fn(step: int) -> tuple[torch.Tensor, dict[str, float]]:
            if u is not None:
                gates.set_output_scales(*scale(u))
            return hard * scale(t), {}

        loss_backward = window_loss(how.loss, context.model, gates, windows, how.batch_size, context.progress, stream)
        stats = run_loop(
            context.model,
            gates,
            params,
            gate_fn,
            loss_backward,
            windows,
            batches(len(windows), how.batch_size, how.epochs, how.shuffle, how.seed),
            steps,
            optimizer,
            "grasprune scales",
            context.progress,
            checkpoint,
            compute_device=stream,
        )
    context.stats["rescale"] = {
        "steps": len(stats.losses),
        "tokens": stats.tokens,
        "seconds": stats.seconds,
        "tokens_per_second": stats.tokens_per_second,
        "first_loss": stats.losses[0],
        "last_loss": stats.losses[-1],
        "peak_rss_bytes": stats.peak_rss_bytes,
    }
    gamma = scale(t.detach()).cpu()
    out_scale = (None, None) if u is None else scale(u.detach()).cpu()
    return Recalibration(scales=gamma, mlp_bias=mlp_bias, attn_bias=attn_bias, down_proj=down_proj, mlp_out_scale=out_scale[0], attn_out_scale=out_scale[1])


class ScalesConfig(RecalibrationConfig, StreamingOptions):
    """Settings of the ``scales`` recalibration (GRASPrune's stage B; defaults are GRASPrune's).

    Attributes:
        alpha: gamma = 1 + alpha * tanh(t).
        lr, betas, weight_decay: AdamW's.
        epochs: passes over the sequences.
        loss: ``lm`` (causal-LM cross-entropy) or ``distill`` (KL divergence from the dense model).
        outputs: also learn one scale per hidden dimension of every down_proj and o_proj output.
        num_sequences: calibration sequences trained on.
        offset_sequences: sequences skipped first (GRASPrune's stage A reads the first 512).
        seq_len, batch_size, shuffle, seed: the sequences and their order (batches use ``seed + 1``, as
            GRASPrune's stage B does).
        attn_implementation: attention kernel during the loop (``model``: as loaded).
        recompute: recompute each decoder layer's activations in the backward pass.
    """

    alpha: Annotated[float, Field(gt=0, le=1)] = 0.5
    lr: PositiveFloat = 1e-2
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    epochs: PositiveInt = 1
    loss: Literal["lm", "distill"] = "lm"
    outputs: bool = False
    num_sequences: PositiveInt = 512
    offset_sequences: Annotated[int, Field(ge=0)] = 512
    seq_len: PositiveInt = 256
    batch_size: PositiveInt = 1
    shuffle: bool = True
    seed: int = 0
    attn_implementation: Literal["sdpa", "eager", "model"] = "sdpa"
    recompute: bool = False


class Scales(RecalibrationMethod):
    """``scales``: learned per-unit scales for any scorer's mask (see the module docstring)."""

    name = "scales"
    Config = ScalesConfig
    summary = "GRASPrune's stage B: one learned scale per kept unit, trained with the mask fixed"
    config: ScalesConfig

    def __init__(self, config: ScalesConfig | dict[str, Any] | None = None) -> None:
        super().__init__(config)

    def recalibrate(self, context: ScoringContext, mask: torch.Tensor) -> Recalibration:
        """Train the scales on ``num_sequences`` sequences after ``offset_sequences``."""
        cfg = self.config
        windows = context.require_calibration(self.name).windows(cfg.num_sequences, cfg.seq_len, offset=cfg.offset_sequences)
        how = ScaleTraining(
            alpha=cfg.alpha,
            lr=cfg.lr,
            betas=cfg.betas,
            weight_decay=cfg.weight_decay,
            epochs=cfg.epochs,
            loss=cfg.loss,
            outputs=cfg.outputs,
            batch_size=cfg.batch_size,
            shuffle=cfg.shuffle,
            seed=cfg.seed + 1,
            attention=None if cfg.attn_implementation == "model" else cfg.attn_implementation,
            recompute=cfg.recompute,
        )
        stream = cfg.device_for(context.model) if cfg.streaming else None
        return learn_scales(context, mask, windows, how, stream=stream)
