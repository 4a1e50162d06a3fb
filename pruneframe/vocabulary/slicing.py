"""Slice a causal LM's vocabulary: keep some rows of the input embedding and of the output layer.

The embedding module is sliced in place (its class, such as Gemma's scaled embedding, stays), and so is
the output layer (weight and bias); tied weights stay one tensor. The config's ``vocab_size`` and the
BOS/EOS/PAD ids of the config and the generation config are renumbered. The sliced model's logits on
renumbered ids are the original logits at the kept columns.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["SPECIAL_ID_FIELDS", "row_cost", "slice_vocabulary"]

#: The token-id settings of a config and a generation config that are renumbered.
SPECIAL_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")


def _layers(model: nn.Module) -> tuple[nn.Embedding, nn.Linear | None, bool]:
    embedding = model.get_input_embeddings()
    head = model.get_output_embeddings()
    if not isinstance(embedding, nn.Embedding):
        raise ValueError(f"vocabulary: the input embedding is a {type(embedding).__name__}, not an nn.Embedding")
    if head is not None and not isinstance(head, nn.Linear):
        raise ValueError(f"vocabulary: the output layer is a {type(head).__name__}, not an nn.Linear")
    tied = head is not None and head.weight is embedding.weight
    return embedding, head, tied


def row_cost(model: nn.Module) -> int:
    """Parameters one token costs: its embedding row, plus its output row and bias unless tied to the embedding."""
    embedding, head, tied = _layers(model)
    cost = embedding.embedding_dim
    if head is not None and not tied:
        cost += head.in_features
    if head is not None and head.bias is not None:
        cost += 1
    return cost


def _model_configs(model: nn.Module) -> list[Any]:
    """The model's config and, when it nests one (a multimodal config), its text config."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return [config] if text is config else [config, text]


def _id_configs(model: nn.Module) -> list[Any]:
    generation = getattr(model, "generation_config", None)
    return _model_configs(model) + ([generation] if generation is not None else [])


def _renumbered(value: Any, table: list[int], field: str) -> Any:
    if value is None:
        return None
    ids = [value] if isinstance(value, int) else list(value)
    for i in ids:
        if not 0 <= i < len(table) or table[i] < 0:
            raise ValueError(f"vocabulary: {field} {i} is not a kept token; keep it (force it when projecting)")
    new = [table[i] for i in ids]
    if isinstance(value, int):
        return new[0]
    return tuple(new) if isinstance(value, tuple) else new


def _check_ids(old_ids: torch.Tensor, size: int) -> torch.Tensor:
    if not isinstance(old_ids, torch.Tensor) or old_ids.dim() != 1 or old_ids.dtype != torch.int64 or old_ids.numel() == 0:
        raise ValueError("old_ids must be a non-empty 1-D int64 tensor of kept token ids")
    if int(old_ids.min()) < 0 or int(old_ids.max()) >= size:
        raise ValueError(f"old_ids must lie in 0..{size - 1} (the embedding's rows)")
    if torch.unique(old_ids).numel() != old_ids.numel():
        raise ValueError("old_ids repeats a token id")
    return old_ids


@torch.no_grad()
def slice_vocabulary(model: nn.Module, old_ids: torch.Tensor) -> nn.Module:
    """Keep the tokens ``old_ids`` (new id ``i`` is old id ``old_ids[i]``) of ``model``, in place; returns ``model``.

    Slices the input embedding (its ``padding_idx`` renumbered, or cleared when that token is dropped)
    and the output layer, keeps a tie between them, and renumbers ``vocab_size`` and the special token
    ids of the config (and of its text config) and the generation config.

    Raises:
        ValueError: ``old_ids`` is not a set of embedding rows, a special token id of a config is
            dropped, or the layers are not an ``nn.Embedding`` and an ``nn.Linear``. Nothing is changed then.
    """
    embedding, head, tied = _layers(model)
    old_ids = _check_ids(old_ids, embedding.num_embeddings)
    table = torch.full((embedding.num_embeddings,), -1, dtype=torch.int64)
    table[old_ids] = torch.arange(old_ids.numel())
    lookup = table.tolist()
    updates = [
        (config, field, _renumbered(getattr(config, field), lookup, field))
        for config in _id_configs(model)
        for field in SPECIAL_ID_FIELDS
        if getattr(config, field, None) is not None
    ]
    size = old_ids.numel()
    index = old_ids.to(embedding.weight.device)
    embedding.weight = nn.Parameter(embedding.weight.index_select(0, index).clone(), requires_grad=embedding.weight.requires_grad)
    embedding.num_embeddings = size
    if embedding.padding_idx is not None:
        embedding.padding_idx = lookup[embedding.padding_idx] if lookup[embedding.padding_idx] >= 0 else None
    if head is not None:
        if tied:
            head.weight = embedding.weight
        else:
            weight = head.weight.index_select(0, old_ids.to(head.weight.device)).clone()
            head.weight = nn.Parameter(weight, requires_grad=head.weight.requires_grad)
        if head.bias is not None:
            head.bias = nn.Parameter(head.bias.index_select(0, old_ids.to(head.bias.device)).clone(), requires_grad=head.bias.requires_grad)
        head.out_features = size
    for config in _model_configs(model):
        config.vocab_size = size
    for config, field, value in updates:
        setattr(config, field, value)
    for module in (model, getattr(model, "model", None)):
        if module is not None and isinstance(getattr(module, "vocab_size", None), int):
            module.vocab_size = size
    return model
