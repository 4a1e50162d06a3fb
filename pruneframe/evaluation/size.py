"""Model size: parameter counts, per-layer prunable widths (read from the modules), checkpoint bytes."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field

from pruneframe.architectures import LayerWidths, adapter_for
from pruneframe.util.devices import dtype_name
from pruneframe.evaluation.base import EvalContext, Evaluator
from pruneframe.evaluation.protocol import SizeProtocol

__all__ = [
    "LayerWidths",
    "decoder_layers",
    "layer_widths",
    "parameter_counts",
    "checkpoint_bytes",
    "SizeConfig",
    "SizeEvaluator",
]

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder layers of a supported model, in order (from its architecture adapter)."""
    return adapter_for(model).decoder_layers(model)


def layer_widths(model: torch.nn.Module) -> list[LayerWidths]:
    """Per-layer widths read from the modules (so a pruned model reports its own, possibly uneven, widths)."""
    return adapter_for(model).layer_widths(model)


def _unique_numel(params: Any) -> int:
    seen: set[int] = set()
    total = 0
    for param in params:
        if id(param) not in seen:
            seen.add(id(param))
            total += param.numel()
    return total


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """``total`` (tied weights counted once), ``prunable`` (every linear layer holding unit slices) and ``other``."""
    total = _unique_numel(model.parameters())
    prunable = _unique_numel(adapter_for(model).prunable_parameters(model))
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
        protocol = SizeProtocol(checkpoint=cfg.checkpoint, dtype=dtype_name(model))
        result["protocol"] = protocol.model_dump(mode="json")
        return result
