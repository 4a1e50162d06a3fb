"""Model size: parameter counts, per-layer prunable widths (read from the modules), checkpoint bytes."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field

from pruneframe.evaluation.base import EvalContext, Evaluator, model_dtype
from pruneframe.evaluation.protocol import SizeProtocol

__all__ = [
    "PRUNABLE_PROJECTIONS",
    "LayerWidths",
    "decoder_layers",
    "layer_widths",
    "parameter_counts",
    "checkpoint_bytes",
    "SizeConfig",
    "SizeEvaluator",
]

#: The projections whose rows/columns structured pruning removes.
PRUNABLE_PROJECTIONS: tuple[str, ...] = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


@dataclass(frozen=True)
class LayerWidths:
    """The prunable widths of one decoder layer, as its modules have them now.

    Attributes:
        index: layer index.
        ffn: FFN (intermediate) channels, ``mlp.down_proj.in_features``.
        q_heads: query heads, ``q_proj.out_features // head_dim``.
        kv_heads: KV heads, ``k_proj.out_features // head_dim``.
        head_dim: per-head width.
        hidden: model width, ``o_proj.out_features``.
    """

    index: int
    ffn: int
    q_heads: int
    kv_heads: int
    head_dim: int
    hidden: int


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder layers of a Llama-style model: the modules holding both ``self_attn`` and ``mlp``."""
    layers = [m for m in model.modules() if hasattr(m, "self_attn") and hasattr(m, "mlp")]
    if not layers:
        raise ValueError(f"{type(model).__name__}: no decoder layers (modules with self_attn and mlp) found")
    return layers


def _head_dim(model: torch.nn.Module, attn: torch.nn.Module) -> int:
    head_dim = getattr(attn, "head_dim", None)
    if head_dim is None:
        config = getattr(model, "config", None)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return int(head_dim)


def layer_widths(model: torch.nn.Module) -> list[LayerWidths]:
    """Per-layer widths read from the modules (so a pruned model reports its own, possibly uneven, widths)."""
    widths = []
    for index, layer in enumerate(decoder_layers(model)):
        attn, mlp = layer.self_attn, layer.mlp
        head_dim = _head_dim(model, attn)
        widths.append(
            LayerWidths(
                index=index,
                ffn=int(mlp.down_proj.in_features),
                q_heads=int(attn.q_proj.out_features) // head_dim,
                kv_heads=int(attn.k_proj.out_features) // head_dim,
                head_dim=head_dim,
                hidden=int(attn.o_proj.out_features),
            )
        )
    return widths


def _unique_numel(params: Any) -> int:
    seen: set[int] = set()
    total = 0
    for param in params:
        if id(param) not in seen:
            seen.add(id(param))
            total += param.numel()
    return total


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """``total`` (tied weights counted once), ``prunable`` (see ``PRUNABLE_PROJECTIONS``) and ``other``."""
    total = _unique_numel(model.parameters())
    prunable_params = []
    for layer in decoder_layers(model):
        for path in PRUNABLE_PROJECTIONS:
            module = layer.get_submodule(path)
            prunable_params.extend(module.parameters(recurse=False))
    prunable = _unique_numel(prunable_params)
    return {"total": total, "prunable": prunable, "other": total - prunable}


def checkpoint_bytes(folder: str | os.PathLike[str]) -> dict[str, int]:
    """Bytes on disk of a checkpoint folder: ``weights`` (weight files) and ``total`` (every file)."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"checkpoint folder {str(root)!r} does not exist")
    weights = total = 0
    for path in root.rglob("*"):
        if path.is_file():
            size = path.stat().st_size
            total += size
            if path.name.endswith(_WEIGHT_SUFFIXES):
                weights += size
    return {"weights": weights, "total": total}


class SizeConfig(BaseModel):
    """Size settings: optionally a checkpoint folder whose bytes are counted."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: Annotated[str, Field(min_length=1)] | None = None


class SizeEvaluator(Evaluator):
    """Parameter counts, per-layer widths, and (with a dense model in the context) the kept fraction."""

    name: ClassVar[str] = "size"
    Config: ClassVar[type[BaseModel]] = SizeConfig

    def evaluate(self, model: Any, tokenizer: Any, context: EvalContext) -> dict[str, Any]:
        """Count parameters and widths; add checkpoint bytes and the ratio to the dense model when available."""
        cfg: SizeConfig = self.config  # type: ignore[assignment]
        counts = parameter_counts(model)
        result: dict[str, Any] = {
            "params": counts,
            "layers": [asdict(w) for w in layer_widths(model)],
        }
        if context.dense_model is not None:
            dense = parameter_counts(context.dense_model)
            result["dense_params"] = dense
            result["kept_fraction"] = counts["total"] / dense["total"]
            result["kept_prunable_fraction"] = counts["prunable"] / dense["prunable"] if dense["prunable"] else None
        if cfg.checkpoint is not None:
            result["checkpoint_bytes"] = checkpoint_bytes(cfg.checkpoint)
        protocol = SizeProtocol(checkpoint=cfg.checkpoint, dtype=model_dtype(model))
        result["protocol"] = protocol.model_dump(mode="json")
        return result
