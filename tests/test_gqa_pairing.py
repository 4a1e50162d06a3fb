"""Which query heads share a KV head in transformers' grouped-query attention, and that a KV group owns exactly those.

transformers' ``repeat_kv`` repeats each KV head for ``G`` consecutive query heads, so KV head ``h``
serves query heads ``hG .. hG + G - 1``. A KV group unit must own those query rows and o_proj columns
(docs/methods.md: LLM-Pruner's official code groups heads ``h, h + K, ...`` instead).
"""

from __future__ import annotations

import torch

from pruneframe.architectures import discover
from pruneframe.testing import tiny_model


def _head_outputs(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The first layer's attention output per query head, before o_proj: ``[heads, tokens, head_dim]``."""
    seen: list[torch.Tensor] = []
    attn = model.model.layers[0].self_attn
    handle = attn.o_proj.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    with torch.no_grad():
        model(ids)
    handle.remove()
    heads = model.config.num_attention_heads
    return seen[0][0].reshape(ids.shape[1], heads, -1).transpose(0, 1)


def test_kv_head_h_serves_query_heads_hG_to_hG_plus_G_minus_1_and_its_unit_owns_them() -> None:
    model = tiny_model("llama-gqa")  # 6 query heads, 2 KV heads: G = 3
    heads, kv = model.config.num_attention_heads, model.config.num_key_value_heads
    g, hd = heads // kv, model.config.head_dim
    ids = torch.arange(12)[None]
    before = _head_outputs(model, ids)
    layer = discover(model).layer_slices(model)[0]
    for h in range(kv):
        changed = model.__class__(model.config).eval()
        changed.load_state_dict(model.state_dict())
        with torch.no_grad():  # a different value vector for KV head h only
            changed.model.layers[0].self_attn.v_proj.weight[h * hd : (h + 1) * hd].mul_(-2.0)
        after = _head_outputs(changed, ids)
        moved = [q for q in range(heads) if not torch.allclose(before[q], after[q])]
        assert moved == list(range(h * g, (h + 1) * g))
        # the KV group unit h owns exactly those query rows and o_proj columns
        q_slice, o_slice = layer.slice("q_proj"), layer.slice("o_proj")
        assert q_slice.per_unit == o_slice.per_unit == g * hd
        rows = range(q_slice.start + h * q_slice.per_unit, q_slice.start + (h + 1) * q_slice.per_unit)
        assert [r // hd for r in rows][::hd] == moved
