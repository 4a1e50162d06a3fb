"""Depth pruning by Block Influence: whole layers (ShortGPT) or attention and MLP blocks separately.

ShortGPT (Men et al., 2024, "ShortGPT: Layers in Large Language Models are More Redundant Than You
Expect") scores decoder layer ``i`` by its *Block Influence*

    ``BI_i = 1 - E_t[ cos(x_i,t, x_{i+1},t) ]``,

one minus the mean cosine similarity, over calibration tokens ``t``, of the hidden state entering
the layer and the one leaving it: a layer that barely turns the residual stream matters little, and
the layers with the lowest BI are removed. ``block-influence`` applies the same measure to each
block on its own (as BlockPruner, Zhong et al., 2024, prunes attention and MLP blocks apart): the
attention block's BI compares the layer's input with the residual stream after attention (the
input of the MLP's norm), the MLP block's compares that with the layer's output.

The statistics come from one forward pass of the dense model (ShortGPT's protocol), the cosines in
float64. Every unit of a layer (or block) carries its layer's (block's) BI as its score, and the core
projector removes whole layers (``removal="layers"``) or whole blocks (``removal="blocks"``) under the
exact budget, keeping the highest BI first (:mod:`pruneframe.pipeline.removal`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch import nn

from pruneframe.pipeline.hookspecs import hookimpl
from pruneframe.pipeline.methods import MethodConfig, PruningMethod, ScoringContext
from pruneframe.pipeline.units import UnitKind, UnitSet
from pruneframe.toolkit.collect import batches

__all__ = ["BlockInfluenceConfig", "ShortGPTConfig", "ShortGPT", "BlockInfluence", "block_influence"]

PositiveInt = Annotated[int, Field(ge=1)]


class ShortGPTConfig(MethodConfig):
    """ShortGPT settings.

    Attributes:
        num_windows / seq_len: calibration windows the Block Influence is averaged over.
        batch_size: windows per forward pass.
        removal: ``layers`` (ShortGPT: whole layers) or ``blocks`` (each layer's two blocks apart).
    """

    num_windows: PositiveInt = 32
    seq_len: PositiveInt = 128
    batch_size: PositiveInt = 8
    removal: Literal["layers", "blocks"] = "layers"


class BlockInfluenceConfig(ShortGPTConfig):
    """Block-influence settings: ShortGPT's, removing attention and MLP blocks apart by default."""

    removal: Literal["layers", "blocks"] = "blocks"


def _first_tensor(value: Any) -> torch.Tensor:
    return value[0] if isinstance(value, (tuple, list)) else value


class _CosineSums:
    """Running sums of per-token cosine similarities between pairs of hidden states (float64)."""

    def __init__(self, layers: int) -> None:
        self.attn = torch.zeros(layers, dtype=torch.float64)
        self.mlp = torch.zeros(layers, dtype=torch.float64)
        self.layer = torch.zeros(layers, dtype=torch.float64)
        self.tokens = 0

    @staticmethod
    def cosine_sum(a: torch.Tensor, b: torch.Tensor) -> float:
        a, b = a.detach().double().flatten(0, -2), b.detach().double().flatten(0, -2)
        return float(torch.nn.functional.cosine_similarity(a, b, dim=-1).sum())


def block_influence(model: nn.Module, units: UnitSet, windows: torch.Tensor, batch_size: int, progress: bool = False) -> dict[str, torch.Tensor]:
    """Per decoder layer, the Block Influence of the layer, its attention block and its MLP block.

    Returns ``{"layer": [L], "attention": [L], "mlp": [L]}`` (float64): ``1 - mean cos`` over every
    token of ``windows`` between the layer's input and output, its input and the residual stream after
    attention, and that stream and its output.
    """
    adapter = units.require_adapter()
    layers = adapter.layer_slices(model)
    sums = _CosineSums(len(layers))
    seen: dict[int, dict[str, torch.Tensor]] = {}
    handles = []

    def on_input(i: int) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            seen.setdefault(i, {})["in"] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

        return hook

    def on_mid(i: int) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple) -> None:
            seen.setdefault(i, {})["mid"] = args[0]

        return hook

    def on_output(i: int) -> Callable[..., None]:
        def hook(_module: nn.Module, _args: tuple, _kwargs: dict, output: Any) -> None:
            state = seen.pop(i)
            out = _first_tensor(output)
            sums.layer[i] += sums.cosine_sum(state["in"], out)
            sums.attn[i] += sums.cosine_sum(state["in"], state["mid"])
            sums.mlp[i] += sums.cosine_sum(state["mid"], out)

        return hook

    for i, layer in enumerate(layers):
        mlp_norm = adapter.block_norms(layer, UnitKind.FFN)
        if not mlp_norm:
            raise ValueError(f"layer {i} has no norm in front of its MLP block, so the stream after attention cannot be read")
        handles.append(layer.layer.register_forward_pre_hook(on_input(i), with_kwargs=True))
        handles.append(mlp_norm[0].register_forward_pre_hook(on_mid(i)))
        handles.append(layer.layer.register_forward_hook(on_output(i), with_kwargs=True))
    device = next(model.parameters()).device
    decoder = model.get_decoder()
    try:
        from tqdm.auto import tqdm

        with torch.no_grad():
            for batch in tqdm(list(batches(windows, batch_size)), desc="block influence", disable=not progress, leave=False):
                decoder(input_ids=batch.to(device), use_cache=False)  # the hidden states only: no logits over the vocabulary
                sums.tokens += int(batch.numel())
    finally:
        for handle in handles:
            handle.remove()
    n = max(sums.tokens, 1)
    return {"layer": 1.0 - sums.layer / n, "attention": 1.0 - sums.attn / n, "mlp": 1.0 - sums.mlp / n}


class ShortGPT(PruningMethod):
    """Remove whole layers with the lowest Block Influence (ShortGPT)."""

    name = "shortgpt"
    Config = ShortGPTConfig
    summary = "depth: remove whole layers with the lowest Block Influence (ShortGPT)"
    config: ShortGPTConfig

    def _influence(self, context: ScoringContext) -> dict[str, torch.Tensor]:
        cfg = self.config
        windows = context.require_calibration(self.name).windows(cfg.num_windows, cfg.seq_len)
        influence = block_influence(context.model, context.units, windows, cfg.batch_size, context.progress)
        context.stats["calibration_tokens"] = int(windows.numel())
        context.stats["block_influence"] = {k: [round(float(x), 6) for x in v] for k, v in influence.items()}
        return influence

    def score(self, context: ScoringContext) -> torch.Tensor:
        """Every unit of layer ``i`` scores ``BI_i`` (the layer's with ``removal="layers"``, its block's with ``blocks``)."""
        influence = self._influence(context)
        return _spread(context.units, influence, per_block=self.config.removal == "blocks")


class BlockInfluence(ShortGPT):
    """Remove attention and MLP blocks with the lowest Block Influence, each on its own."""

    name = "block-influence"
    Config = BlockInfluenceConfig
    summary = "depth: remove attention and MLP blocks with the lowest Block Influence, apart"
    config: BlockInfluenceConfig


def _spread(units: UnitSet, influence: dict[str, torch.Tensor], per_block: bool) -> torch.Tensor:
    scores = torch.empty(len(units), dtype=torch.float32)
    for i in range(units.num_layers):
        ffn = influence["mlp"][i] if per_block else influence["layer"][i]
        kv = influence["attention"][i] if per_block else influence["layer"][i]
        scores[units.slice(i, UnitKind.FFN)] = float(ffn)
        scores[units.slice(i, UnitKind.KV)] = float(kv)
    return scores


@hookimpl
def pruneframe_register_methods(register: Callable[[type[PruningMethod]], None]) -> None:
    """Register the depth methods."""
    register(ShortGPT)
    register(BlockInfluence)
