"""LLM-Pruner's Taylor importance (Ma et al., NeurIPS 2023, "LLM-Pruner: On the Structural Pruning of
Large Language Models"), block-wise: FFN channels and attention groups scored from gradients of the
language-modelling loss on a few calibration sequences (default 10 x 64 tokens, as the paper).

Salience of a weight with gradient ``g`` of the mean loss (``importance``):

* ``vector``: ``S = w * g``, aggregated as ``|sum S|`` per channel (first-order change of the loss
  when the whole channel vector is removed);
* ``element1``: ``S = w * g``, aggregated as ``sum |S|`` per channel (first-order, element-wise);
* ``element2``: ``S = w * g - 0.5 * w^2 * H``, aggregated as ``sum |S|``, with the Hessian diagonal
  approximated by the empirical Fisher ``H = (1/N) sum_n g_n^2`` over per-sequence gradients ``g_n``
  (the reference code's ``param_mix`` with its ``acc_grad``).

A channel is a row of q/k/v/gate/up or a column of o/down. As in the reference code, a unit's
importance in one weight matrix is the sum over its channels (a KV group owns ``G * head_dim`` q rows
and o columns and ``head_dim`` k and v rows), and ``group_reduction`` (sum, mean or max) combines the
matrices of a unit (gate/up/down, or q/k/v/o).

Allocation: ``uniform`` (the paper's default: the same ratio in every pruned layer) or ``global``.
Layers outside ``[layer_start, layer_end)`` are kept whole (the paper prunes layers 4..30 of
LLaMA-7B's 32); fractional bounds are rounded inward, so the defaults 0.1 / 0.95 give 4..30 of 32.

Memory: only the projection weights require gradients, and a post-accumulate-grad hook turns each
weight's gradient into per-unit numbers and frees it at once, so no full set of gradients is held
(``element2`` keeps one float32 Fisher buffer per projection weight, i.e. about one extra copy).
``batch_size`` splits the gradient pass into micro-batches; gradients then accumulate across them
and are reduced after the last one.

Hidden channels (LLM-Pruner's ``channel`` strategy): with ``hidden_keep`` set
(:class:`~pruneframe.pipeline.methods.HiddenOptions`), a second gradient pass on the same sequences
scores every hidden channel by the same salience summed over every tensor it spans (embedding and
lm_head columns, norm entries, q/k/v/gate/up input columns, o/down output rows and biases). It is first
order for every ``importance`` (``element2``'s Fisher term is not computed there) and runs on the whole
model at once (not with ``offload``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn
from tqdm.auto import tqdm

from pruneframe.architectures import WeightSlice
from pruneframe.architectures.hidden import HiddenSite, hidden_sites
from pruneframe.toolkit.collect import batches
from pruneframe.pipeline.hookspecs import hookimpl
from pruneframe.toolkit.losses import causal_lm_loss, hidden_state_loss
from pruneframe.pipeline.methods import HiddenOptions, PruningMethod, ScoringContext
from pruneframe.toolkit.recompute import recompute_decoder_layers
from pruneframe.toolkit.streaming import StreamingOptions, streamed_backward
from pruneframe.pipeline.units import UnitKind, UnitSet
from pruneframe_baselines import AllocationConfig
from pruneframe_baselines.ranges import LayerBound, range_minimum, resolve_layer_range

__all__ = ["LLMPrunerConfig", "LLMPruner", "salience", "unit_importance"]

PositiveInt = Annotated[int, Field(ge=1)]
Importance = Literal["vector", "element1", "element2"]


class LLMPrunerConfig(AllocationConfig, StreamingOptions, HiddenOptions):
    """LLM-Pruner settings.

    Attributes:
        importance: ``vector``, ``element1`` (first order) or ``element2`` (with the Fisher term).
        group_reduction: how a unit's per-matrix importances combine: ``sum``, ``mean`` or ``max``.
        num_samples: calibration sequences for the gradients.
        seq_len: tokens per sequence.
        batch_size: sequences per backward pass of the gradient (None: all at once, as the paper).
        layer_start: first pruned layer: an index (negative counts from the end) or a fraction of the layers.
        layer_end: end (exclusive) of the pruned layers, same forms; layers outside are kept whole.
            Fractions apply to models with at least 8 layers; smaller models prune every layer.
        allocation: ``uniform`` (same ratio per pruned layer and kind) or ``global``.
        recompute: keep only each decoder layer's inputs during the forward pass and recompute its
            activations in the backward pass (:mod:`pruneframe.toolkit.recompute`): the activations of one
            layer at a time instead of all, for one more forward pass; the same gradients.
        offload, compute_device: ``offload="cpu"`` runs the gradient passes one decoder layer at a
            time on ``compute_device`` (:func:`pruneframe.toolkit.streaming.streamed_backward`; the weights
            stay where they are, recomputation is implied; :class:`~pruneframe.toolkit.streaming.StreamingOptions`).
        hidden_keep: share of hidden channels to keep (``None``, the default: all of them; the
            ``channel`` strategy's scores, see the module docstring).
    """

    importance: Importance = "element1"
    group_reduction: Literal["sum", "mean", "max"] = "sum"
    num_samples: PositiveInt = 10
    seq_len: Annotated[int, Field(ge=2)] = 64
    batch_size: PositiveInt | None = None
    layer_start: LayerBound = 0.1
    layer_end: LayerBound = 0.95
    allocation: Literal["global", "uniform"] = "uniform"
    recompute: bool = True


def salience(weight: torch.Tensor, grad: torch.Tensor, fisher: torch.Tensor | None = None) -> torch.Tensor:
    """Element-wise Taylor salience ``w * g`` (minus ``0.5 * w^2 * fisher`` when given), float32."""
    w = weight.detach().float()
    s = w * grad.float()
    if fisher is not None:
        s = s - 0.5 * w.square() * fisher
    return s


def unit_importance(part: WeightSlice, s: torch.Tensor, importance: Importance) -> torch.Tensor:
    """One slice's share of each unit's importance: per channel ``|sum S|`` or ``sum |S|``, summed per unit.

    ``s``: the salience of the slice's weights (``part.take`` of the whole weight's salience).
    """
    per_channel = part.channel_sum(s).abs() if importance == "vector" else part.channel_sum(s.abs())
    return per_channel.reshape(part.units, part.per_unit).sum(dim=1)


@contextmanager
def _only_these_require_grad(model: nn.Module, weights: list[nn.Parameter]) -> Iterator[None]:
    """Gradients flow to ``weights`` only; requires_grad flags and existing ``.grad`` are restored."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    chosen = {id(w) for w in weights}
    try:
        for p in params:
            p.grad = None
            p.requires_grad_(id(p) in chosen)
        yield
    finally:
        for p, flag, grad in zip(params, flags, grads):
            p.requires_grad_(flag)
            p.grad = grad


class LLMPruner(PruningMethod):
    """Taylor importance of FFN channels and KV groups from a backward pass on calibration data."""

    name = "llm-pruner"
    Config = LLMPrunerConfig
    summary = "first/second-order Taylor importance from calibration gradients (LLM-Pruner)"
    config: LLMPrunerConfig

    def layer_range(self, units: UnitSet) -> tuple[int, int]:
        """The pruned layers ``[first, stop)`` of a model with ``units``."""
        return resolve_layer_range(self.config.layer_start, self.config.layer_end, units.num_layers)

    def minimum(self, units: UnitSet) -> torch.Tensor:
        """Every unit of layers outside the pruned range, else one FFN channel and one KV group."""
        return range_minimum(units, *self.layer_range(units))

    def removable(self, units: UnitSet) -> torch.Tensor:
        """Blocks of the pruned layers only: layers outside the range keep every unit."""
        first, stop = self.layer_range(units)
        layer = torch.arange(units.num_layers).repeat_interleave(2)
        return (layer >= first) & (layer < stop)

    def score(self, context: ScoringContext) -> torch.Tensor:
        """One Taylor importance per unit (float32, flat unit order)."""
        cfg, units, model = self.config, context.units, context.model
        windows = context.require_calibration(self.name).windows(cfg.num_samples, cfg.seq_len)
        device = next(model.parameters()).device
        stream = cfg.device_for(model) if cfg.streaming else None
        # slices grouped by the weight that holds them (a fused weight holds several)
        by_weight: dict[int, tuple[nn.Parameter, list[tuple[int, WeightSlice]]]] = {}
        for i, layer in enumerate(context.layers()):
            for part in layer.slices:
                w = part.linear.weight
                by_weight.setdefault(id(w), (w, []))[1].append((i, part))
        weights = [w for w, _ in by_weight.values()]
        shares: dict[tuple[int, str], torch.Tensor] = {}
        fisher: dict[int, torch.Tensor] = {}
        n = len(windows)
        micro = list(batches(windows, cfg.batch_size))
        state = {"reduce": False, "passes": 0}
        losses: list[float] = []

        def accumulate_fisher(p: torch.Tensor) -> None:
            # streamed, the weight visits the compute device: its Fisher buffer stays with the model
            g2 = (p.grad.float().square() / n).to(device if stream is not None else p.grad.device)
            fisher[id(p)] = fisher[id(p)] + g2 if id(p) in fisher else g2
            p.grad = None

        def reduce_to_units(parts: list[tuple[int, WeightSlice]]):
            def hook(p: torch.Tensor) -> None:
                if not state["reduce"]:
                    return  # an earlier micro-batch: let the gradient accumulate
                f = fisher.pop(id(p), None)
                s = salience(p, p.grad, None if f is None else f.to(p.grad.device))
                for i, part in parts:
                    shares[(i, part.name)] = unit_importance(part, part.take(s), cfg.importance).cpu()
                p.grad = None

            return hook

        def backward(batch: torch.Tensor, weight: float) -> None:
            # the loss is a mean over the batch's tokens; weighting each micro-batch by its share of
            # the (equal-length) sequences makes the accumulated gradient that of the mean over all
            if stream is not None:
                loss = streamed_backward(model, batch, hidden_state_loss(model, batch), stream, scale=weight, adapter=units.adapter)
            else:
                ids = batch.to(device)
                loss = causal_lm_loss(model, ids)
                (loss * weight).backward()
            state["passes"] += 1
            losses.append(float(loss.detach()) * len(batch))

        handles = []
        bar = tqdm(total=(n if cfg.importance == "element2" else 0) + len(micro), desc="llm-pruner gradients", disable=not context.progress)
        try:
            with _only_these_require_grad(model, weights), recompute_decoder_layers(model, cfg.recompute and stream is None):
                if cfg.importance == "element2":
                    handles = [w.register_post_accumulate_grad_hook(accumulate_fisher) for w in weights]
                    for row in windows:
                        backward(row[None], 1.0)
                        bar.update()
                    for h in handles:
                        h.remove()
                    losses.clear()
                handles = [w.register_post_accumulate_grad_hook(reduce_to_units(parts)) for w, parts in by_weight.values()]
                for k, batch in enumerate(micro):
                    state["reduce"] = k == len(micro) - 1
                    backward(batch, len(batch) / n)
                    bar.update()
        finally:
            bar.close()
            for h in handles:
                h.remove()
            fisher.clear()
        context.stats["calibration_tokens"] = int(windows.numel())
        context.stats["forward_passes"] = context.stats["backward_passes"] = state["passes"]
        context.stats["calibration_loss"] = sum(losses) / n
        return self._combine(units, context.layers(), shares)

    def score_hidden(self, context: ScoringContext) -> torch.Tensor:
        """One first-order Taylor importance per hidden channel, over every tensor it spans (float32)."""
        cfg, model = self.config, context.model
        if cfg.streaming:
            raise ValueError("llm-pruner: hidden-channel scores need the whole model on its device; set offload: none")
        windows = context.require_calibration(self.name).windows(cfg.num_samples, cfg.seq_len)
        device = next(model.parameters()).device
        by_tensor: dict[int, tuple[nn.Parameter, list[HiddenSite]]] = {}
        for site in hidden_sites(context.units.require_adapter(), model):
            by_tensor.setdefault(id(site.tensor), (site.tensor, []))[1].append(site)
        total = torch.zeros(context.units.hidden_size, dtype=torch.float64)
        micro, n = list(batches(windows, cfg.batch_size)), len(windows)
        state = {"reduce": False}

        def reduce_to_channels(sites: list[HiddenSite]):
            def hook(p: torch.Tensor) -> None:
                if not state["reduce"]:
                    return
                s = salience(p, p.grad)
                for site in sites:
                    other = [d for d in range(s.dim()) if d != site.dim]
                    per = (s.sum(dim=other).abs() if cfg.importance == "vector" else s.abs().sum(dim=other)) if other else s.abs()
                    total.add_(per.double().cpu())
                p.grad = None

            return hook

        tensors = [t for t, _ in by_tensor.values()]
        handles = []
        try:
            with _only_these_require_grad(model, tensors), recompute_decoder_layers(model, cfg.recompute):
                handles = [t.register_post_accumulate_grad_hook(reduce_to_channels(sites)) for t, sites in by_tensor.values()]
                for k, batch in enumerate(tqdm(micro, desc="llm-pruner hidden gradients", disable=not context.progress, leave=False)):
                    state["reduce"] = k == len(micro) - 1
                    (causal_lm_loss(model, batch.to(device)) * (len(batch) / n)).backward()
        finally:
            for h in handles:
                h.remove()
        context.stats["hidden_backward_passes"] = len(micro)
        return total.float()

    def _combine(self, units: UnitSet, layers: list, shares: dict[tuple[int, str], torch.Tensor]) -> torch.Tensor:
        scores = torch.empty(len(units), dtype=torch.float32)
        reduce = {"sum": lambda x: x.sum(0), "mean": lambda x: x.mean(0), "max": lambda x: x.max(0).values}
        for i, layer in enumerate(layers):
            for kind in (UnitKind.FFN, UnitKind.KV):
                names = [p.name for p in layer.of(kind)]
                missing = [name for name in names if (i, name) not in shares]
                if missing:
                    raise RuntimeError(f"llm-pruner: no gradient reached layer {i} {', '.join(missing)}; is it used in forward?")
                stacked = torch.stack([shares[(i, name)] for name in names])
                scores[units.slice(i, kind)] = reduce[self.config.group_reduction](stacked)
        return scores


@hookimpl
def pruneframe_register_methods(register: Callable[[type[PruningMethod]], None]) -> None:
    """Register LLM-Pruner."""
    register(LLMPruner)
