"""GRASPrune as a pruneframe method.

Stage A (scoring): one gate score s per unit (FFN channel or KV group), p = sigmoid(s / tau). Every
step the core projector turns p into a hard mask m meeting the budget exactly; the forward pass uses
z = m + p - stopgrad(p), so the loss sees the hard mask and the gradient reaches p (projected
straight-through estimator). FFN channels are gated at down_proj's input, KV groups on their keys
and values (see :mod:`pruneframe.toolkit.gates`). AdamW on s only; the backbone is frozen.

Stage B (recalibration, also the ``scales`` recalibration plugin that any scorer can use, see
:mod:`pruneframe_grasprune.scales`): with the final mask fixed, one scale gamma = 1 + alpha * tanh(t) per unit is
trained with the same loss on calibration sequences stage A did not see; the core folds gamma into
down_proj columns (FFN) and k_proj/v_proj rows (KV). In Qwen3 the per-head k_norm cancels a key
scale (as it would the folded k_proj rows), so there a KV-group scale effectively acts on values only.
Optionally (``least_squares``), before the scales, the kept down_proj columns are refit in closed
form to reproduce the dense FFN output (see :mod:`pruneframe.toolkit.refit`); no parameters are added.

Warm start (optional, ``init_from``): the gate scores start at another registered method's scores,
as ranks spread over ``init_spread``; with ``init_scope="uniform"`` the ranks are taken within each
layer and kind, so the first mask follows the per-layer allocation of methods such as LLM-Pruner.
Training then proceeds exactly as above from that mask instead of the tie-broken one.

Step 0 ties: all scores start at 0, so the first mask is decided by the projector's deterministic
tie-break, which orders tied units by their fractional position inside their layer and kind: the
first mask keeps about the same fraction of every layer and kind (rather than cutting the first
layers to their minimum, as a plain index order would).
"""

from __future__ import annotations

from pathlib import Path

import torch

from pruneframe.pipeline.budget import check_meets_budget, group_round_to
from pruneframe.util.devices import dtype_name
from pruneframe.toolkit.gates import UnitGates
from pruneframe.pipeline.hookspecs import hookimpl
from pruneframe.pipeline.methods import PruningMethod, Recalibration, ScoringContext
from pruneframe.toolkit.recompute import recompute_decoder_layers
from pruneframe.toolkit.refit import ffn_input_moments, refit_down_proj
from pruneframe.toolkit.resume import LoopCheckpoint, tensor_digest
from pruneframe_grasprune.compensation import compensation_bias, mean_projection_inputs
from pruneframe_grasprune.config import GRASPruneConfig
from pruneframe_grasprune.optim import BlockAdam
from pruneframe_grasprune.scales import ScaleTraining, Scales, learn_scales
from pruneframe_grasprune.training import attention_implementation, batches, frozen, run_loop, window_loss

__all__ = ["GRASPrune", "normalised_ranks"]


class GRASPrune(PruningMethod):
    """GRASPrune: projected-STE gate training, then per-unit scale calibration (no weight updates)."""

    name = "grasprune"
    Config = GRASPruneConfig
    summary = "projected straight-through gates on FFN channels + KV groups, then learned per-unit scales"
    config: GRASPruneConfig

    def _windows(self, context: ScoringContext, num: int, offset: int) -> torch.Tensor:
        return context.require_calibration(self.name).windows(num, self.config.seq_len, offset=offset)

    def _check_dtype(self, model: torch.nn.Module) -> None:
        if self.config.dtype == "auto":
            return
        if dtype_name(model) != self.config.dtype:
            raise ValueError(f"grasprune dtype={self.config.dtype} but the model is {dtype_name(model)}; load the model in the compute dtype")

    def _stream_device(self, model: torch.nn.Module) -> torch.device | None:
        """The device the decoder layers stream through under ``offload``, else None (the model runs where it is)."""
        return self.config.device_for(model) if self.config.streaming else None

    def _attention(self) -> str | None:
        choice = self.config.attn_implementation
        return None if choice == "model" else choice

    def _checkpoint(self, stage: str, context: ScoringContext, windows: torch.Tensor, mask: torch.Tensor | None = None) -> LoopCheckpoint | None:
        """Resumable state of one stage under ``checkpoint_dir`` (None: not kept).

        The fingerprint ties the file to this run: the method's settings (other than where and how
        often state is kept), the model's name and units, the budget, the calibration windows and,
        for stage B, the fixed mask.
        """
        cfg = self.config
        if cfg.checkpoint_dir is None:
            return None
        settings = cfg.model_dump(mode="json", exclude={"checkpoint_dir", "checkpoint_every"})
        fingerprint = {
            "stage": stage,
            "config": settings,
            "budget": int(context.budget),
            "model": str(getattr(getattr(context.model, "config", None), "_name_or_path", "")),
            "units": [len(context.units), int(context.units.prunable_params)],
            "windows": tensor_digest(windows),
            "mask": None if mask is None else tensor_digest(mask),
        }
        return LoopCheckpoint(Path(cfg.checkpoint_dir) / f"grasprune-{stage}.pt", cfg.checkpoint_every, fingerprint)

    def _initial_scores(self, context: ScoringContext) -> torch.Tensor:
        """Zeros (reference), or another method's scores as ranks spread over ``init_spread``."""
        cfg = self.config
        n = len(context.units)
        if cfg.init_from is None:
            return torch.zeros(n)
        if context.score_with is None:
            raise ValueError(f"grasprune init_from={cfg.init_from!r} needs a context that can run other methods (use pruneframe.prune)")
        prior = context.score_with(cfg.init_from, cfg.init_config).float().cpu()
        groups = context.units.groups if cfg.init_scope == "uniform" else torch.zeros(n, dtype=torch.long)
        return cfg.init_spread * (normalised_ranks(prior, groups) - 0.5)

    def score(self, context: ScoringContext) -> torch.Tensor:
        """Train the gates (stage A) and return the final keep probabilities p."""
        cfg = self.config
        self._check_dtype(context.model)
        units = context.units
        windows = self._windows(context, cfg.num_sequences, offset=0)
        steps = cfg.epochs * -(-len(windows) // cfg.batch_size)
        device = next(context.model.parameters()).device
        scores = self._initial_scores(context).to(device).requires_grad_(True)
        round_to = group_round_to(units, cfg.round_to)
        if cfg.optimizer == "block-adam":
            optimizer = BlockAdam([scores], units.kind, lr=cfg.lr, betas=cfg.betas)
        else:
            optimizer = torch.optim.AdamW([scores], lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)

        def gate_fn(step: int) -> tuple[torch.Tensor, dict[str, float]]:
            p = torch.sigmoid(scores / cfg.tau)
            mask = context.project(p)
            check_meets_budget(mask, units.cost, context.budget, units.groups, context.minimum, round_to)
            kept = units.kept_cost(mask)
            z = mask.to(p) + p - p.detach()
            return z, {"kept_cost": kept, "kept": kept / units.prunable_params}

        stream = self._stream_device(context.model)
        with (
            frozen(context.model),
            attention_implementation(context.model, self._attention()),
            recompute_decoder_layers(context.model, cfg.recompute and stream is None),
            UnitGates(context.model, units, fused_glu=True) as gates,
        ):
            loss_backward = window_loss(cfg.loss, context.model, gates, windows, cfg.batch_size, context.progress, stream)
            stats = run_loop(
                context.model,
                gates,
                [scores],
                gate_fn,
                loss_backward,
                windows,
                batches(len(windows), cfg.batch_size, cfg.epochs, cfg.shuffle, cfg.seed),
                steps,
                optimizer,
                "grasprune gates",
                context.progress,
                self._checkpoint("gates", context, windows),
                compute_device=stream,
            )
        context.stats["gates"] = {
            "steps": len(stats.losses),
            "tokens": stats.tokens,
            "seconds": stats.seconds,
            "tokens_per_second": stats.tokens_per_second,
            "first_loss": stats.losses[0],
            "last_loss": stats.losses[-1],
            "kept_cost_per_step": [int(r["kept_cost"]) for r in stats.records],
            "budget": context.budget,
            "peak_rss_bytes": stats.peak_rss_bytes,
        }
        return torch.sigmoid(scores.detach() / cfg.tau).cpu()

    def recalibrate(self, context: ScoringContext, mask: torch.Tensor) -> Recalibration | None:
        """Stage B: learn gamma = 1 + alpha * tanh(t) per kept unit on unseen sequences."""
        cfg = self.config
        if not (cfg.rescale or cfg.bias_compensation or cfg.least_squares):
            return None
        num = cfg.rescale_sequences or cfg.num_sequences
        windows = self._windows(context, num, offset=cfg.num_sequences)
        stream = self._stream_device(context.model)
        mlp_bias = attn_bias = None
        if cfg.bias_compensation:
            means = mean_projection_inputs(context.model, windows, context.progress, stream)
            mlp_bias, attn_bias = compensation_bias(context.model, context.units, mask, *means)
        down_proj = None
        if cfg.least_squares:
            moments = ffn_input_moments(context.model, context.units, mask, windows, context.progress, (mlp_bias, attn_bias), stream)
            down_proj = refit_down_proj(context.model, context.units, mask, moments, cfg.least_squares_damping)
            del moments
        if not cfg.rescale:
            return Recalibration(mlp_bias=mlp_bias, attn_bias=attn_bias, down_proj=down_proj)
        how = ScaleTraining(
            alpha=cfg.rescale_alpha,
            lr=cfg.rescale_lr,
            betas=cfg.betas,
            weight_decay=cfg.weight_decay,
            epochs=cfg.rescale_epochs,
            loss=cfg.rescale_loss,
            outputs=cfg.rescale_outputs,
            batch_size=cfg.batch_size,
            shuffle=cfg.shuffle,
            seed=cfg.seed + 1,
            attention=self._attention(),
            recompute=cfg.recompute,
        )
        return learn_scales(
            context,
            mask,
            windows,
            how,
            stream=stream,
            mlp_bias=mlp_bias,
            attn_bias=attn_bias,
            down_proj=down_proj,
            checkpoint=self._checkpoint("scales", context, windows, mask),
        )


def normalised_ranks(scores: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Each score's rank within its group, scaled to [0, 1] (lowest 0, highest 1; a lone unit 1).

    Equal scores keep index order (stable sort).
    """
    ranks = torch.ones(len(scores))
    for g in torch.unique(groups):
        idx = torch.nonzero(groups == g).flatten()
        if len(idx) > 1:
            order = idx[torch.argsort(scores[idx], stable=True)]
            ranks[order] = torch.arange(len(idx), dtype=torch.float32) / (len(idx) - 1)
    return ranks


@hookimpl
def pruneframe_register_methods(register) -> None:
    """Register GRASPrune."""
    register(GRASPrune)


@hookimpl
def pruneframe_register_recalibrations(register) -> None:
    """Register GRASPrune's stage B as the ``scales`` recalibration."""
    register(Scales)
