"""Unit discovery, exact costs, fold equivalence and checkpoints on every supported family."""

from __future__ import annotations

import gc
import inspect
import json
import weakref
from importlib import metadata

import pytest
import torch
from tiny import FAMILIES, tiny_model, tokens

from pruneframe.architectures import discover
from pruneframe.checkpoint import load_pruned, save
from pruneframe.pipeline.fold import fold
from pruneframe.toolkit.gates import gated
from pruneframe.pipeline.methods import Recalibration
from pruneframe.pipeline.units import UnitKind

ALL = sorted(FAMILIES)


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _random_mask(units, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(len(units), generator=g) < 0.5
    for i in range(units.num_layers):  # keep >= 1 KV group per layer, drop >= 1 where possible
        kv = units.slice(i, UnitKind.KV)
        mask[kv.start] = True
        if kv.stop - kv.start > 1:
            mask[kv.stop - 1] = False
    return mask


def _random_recalibration(units, hidden: int, seed: int, bias: bool, model=None) -> Recalibration:
    """Random scales; optionally biases; with ``model``, also replacement down_proj weights and output scales."""
    g = torch.Generator().manual_seed(seed)
    scales = 0.5 + torch.rand(len(units), generator=g)
    extra = {}
    if model is not None:
        extra = dict(
            down_proj=[torch.randn(m.mlp.down_proj.weight.shape, generator=g) * 0.05 for m in model.model.layers],
            mlp_out_scale=0.5 + torch.rand(units.num_layers, hidden, generator=g),
            attn_out_scale=0.5 + torch.rand(units.num_layers, hidden, generator=g),
        )
    if not bias:
        return Recalibration(scales=scales, **extra)
    return Recalibration(
        scales=scales,
        mlp_bias=0.1 * torch.randn(units.num_layers, hidden, generator=g),
        attn_bias=0.1 * torch.randn(units.num_layers, hidden, generator=g),
        **extra,
    )


@pytest.mark.parametrize("family", ALL)
def test_unit_costs_add_up_to_parameter_count(family: str) -> None:
    model = tiny_model(family)
    units = discover(model)
    assert units.prunable_params + units.nonprunable_params == _count(model)
    cfg = model.config
    d, hd = cfg.hidden_size, getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    G = cfg.num_attention_heads // cfg.num_key_value_heads
    bias_ffn = 2 if getattr(cfg, "mlp_bias", False) else 0
    qkv_bias = getattr(cfg, "attention_bias", False) or family == "qwen2"
    assert units.layers[0].ffn_cost == 3 * d + bias_ffn
    assert units.layers[0].kv_cost == (2 * G + 2) * hd * d + ((G + 2) * hd if qkv_bias else 0)
    assert units.layers[0].queries_per_group == G
    # removing everything prunable leaves exactly the non-prunable parameters
    non = _count(model) - sum(
        p.numel()
        for n, p in model.named_parameters()
        if any(k in n for k in ("gate_proj", "up_proj", "q_proj", "k_proj", "v_proj", "qkv_proj", "gate_up_proj"))
        or (n.endswith("weight") and any(k in n for k in ("down_proj", "o_proj")))
    )
    assert units.nonprunable_params == non


def test_unsupported_architecture_names_supported_ones() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(NotImplementedError, match="LlamaForCausalLM.*Qwen3ForCausalLM"):
        discover(model)


@pytest.mark.parametrize("family", ALL)
@pytest.mark.parametrize(("with_bias", "with_weights"), [(False, False), (True, False), (False, True), (True, True)])
def test_fold_equals_gated_model(family: str, with_bias: bool, with_weights: bool) -> None:
    """Folded logits == dense model with the same mask, scales (biases, refit weights, output scales) as gates (fp32, 1e-5)."""
    model = tiny_model(family)
    units = discover(model)
    mask = _random_mask(units, seed=1)
    rec = _random_recalibration(units, model.config.hidden_size, seed=2, bias=with_bias, model=model if with_weights else None)
    ids = tokens()
    originals = [m.mlp.down_proj.weight.detach().clone() for m in model.model.layers]
    with torch.no_grad(), gated(model, units, mask, rec):
        want = model(ids).logits
    # the replacement weights are swapped out again on exit
    for m, w in zip(model.model.layers, originals):
        torch.testing.assert_close(m.mlp.down_proj.weight, w, atol=0, rtol=0)
    folded = fold(model, units, mask, rec)
    with torch.no_grad():
        got = folded(ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    added = sum(int(rec.mlp_bias is not None and m.mlp.down_proj.bias is None) for m in model.model.layers)
    added += sum(int(rec.attn_bias is not None and m.self_attn.o_proj.bias is None) for m in model.model.layers)
    assert _count(folded) == _count(model) - int(units.cost[~mask].sum()) + added * model.config.hidden_size
    # the dense model is untouched and no hooks were left behind
    assert _count(model) == units.total_params
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in folded.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("family", ALL)
def test_full_mask_fold_is_identity(family: str) -> None:
    model = tiny_model(family)
    units = discover(model)
    ids = tokens()
    folded = fold(model, units, torch.ones(len(units), dtype=torch.bool))
    with torch.no_grad():
        torch.testing.assert_close(folded(ids).logits, model(ids).logits, atol=1e-6, rtol=1e-6)


def test_mask_zero_gate_equals_removal_in_qwen3_key_norm() -> None:
    """A zero key gate before Qwen3's k_norm still removes the group (norm of zero is zero)."""
    model = tiny_model("qwen3")
    units = discover(model)
    mask = torch.ones(len(units), dtype=torch.bool)
    kv = units.slice(1, UnitKind.KV)
    mask[kv.start] = False
    ids = tokens()
    with torch.no_grad(), gated(model, units, mask):
        want = model(ids).logits
    with torch.no_grad():
        got = fold(model, units, mask)(ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama-gqa", "phi3"])
def test_inplace_fold_frees_each_layers_old_weights_before_the_next(family: str, monkeypatch) -> None:
    model = tiny_model(family, num_hidden_layers=3)
    units = discover(model)
    adapter = units.require_adapter()
    old = [[weakref.ref(p) for p in layer.parameters()] for layer in model.model.layers]
    alive_when_folding: list[list[int]] = []
    set_widths = type(adapter).set_widths

    def spy(self, layer, widths, config) -> None:
        gc.collect()
        alive_when_folding.append([sum(ref() is not None for ref in refs) for refs in old])
        set_widths(self, layer, widths, config)

    monkeypatch.setattr(type(adapter), "set_widths", spy)
    fold(model, units, _random_mask(units, 0), inplace=True)
    # While layer i is finished, only layers i+1.. still hold weights that will be replaced; norms stay.
    norms = [sum(1 for n, _ in layer.named_parameters() if "norm" in n) for layer in model.model.layers]
    for i, alive in enumerate(alive_when_folding):
        assert alive[:i] == norms[:i], f"layer {i}: replaced weights of earlier layers still alive: {alive}"


def test_fold_removes_the_attention_block_of_a_layer_without_kv_group() -> None:
    """No KV group kept: the attention block goes with its input norm, and the count follows the units' accounting."""
    model = tiny_model()
    units = discover(model)
    mask = torch.ones(len(units), dtype=torch.bool)
    mask[units.slice(0, UnitKind.KV)] = False
    folded = fold(model, units, mask)
    assert isinstance(folded.model.layers[0].input_layernorm, torch.nn.Identity)
    dropped = units.prunable_params - units.kept_cost(mask)
    assert sum(p.numel() for p in folded.parameters()) == units.kept_params(mask) == units.total_params - dropped - units.layers[0].kv_overhead
    assert units.layers[0].kv_overhead == model.config.hidden_size  # its input norm


def test_folded_model_decodes_with_kv_cache() -> None:
    model = tiny_model("llama-gqa")
    units = discover(model)
    mask = _random_mask(units, seed=3)
    folded = fold(model, units, mask)
    ids = tokens(1, 8)
    with torch.no_grad():
        out = folded.generate(ids, max_new_tokens=5, min_new_tokens=5, do_sample=False)
        # cached decoding gives the same next-token logits as a full forward
        full = folded(out[:, :-1]).logits[:, -1]
        past = folded(out[:, :-2], use_cache=True)
        cache = getattr(past, "cache", None) or past.past_key_values
        # transformers >= 5.2x names the cache argument `cache` (and warns on `past_key_values`)
        name = "cache" if "cache" in inspect.signature(folded.forward).parameters else "past_key_values"
        step = folded(out[:, -2:-1], use_cache=True, **{name: cache}).logits[:, -1]
    assert out.shape == (1, 13)
    torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ALL)
def test_checkpoint_roundtrip(tmp_path, family: str) -> None:
    model = tiny_model(family)
    units = discover(model)
    mask = _random_mask(units, seed=4)
    rec = _random_recalibration(units, model.config.hidden_size, seed=5, bias=(family == "llama-gqa"))
    folded = fold(model, units, mask, rec)
    out = save(tmp_path / "ckpt", folded, report={"method": "test"})
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "modeling_pruneframe.py", "pruning.json"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    report = json.loads((out / "pruning.json").read_text())
    widths = units.widths(mask)
    assert [layer["intermediate_size"] for layer in report["layers"]] == [w["ffn_channels"] for w in widths]
    assert [layer["num_key_value_heads"] for layer in report["layers"]] == [w["kv_groups"] for w in widths]
    assert [layer["num_attention_heads"] for layer in report["layers"]] == [w["query_heads"] for w in widths]
    assert report["software"]["torch"] == metadata.version("torch")  # the installed torch, local tag included
    assert report["software"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert report["software"]["transformers"] == metadata.version("transformers")
    loaded, tok = load_pruned(out)
    assert tok is None
    ids = tokens()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, folded(ids).logits, atol=0, rtol=0)


def test_checkpoint_loads_with_auto_class_and_remote_code(tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    model = tiny_model("qwen2")
    units = discover(model)
    folded = fold(model, units, _random_mask(units, seed=6))
    out = save(tmp_path / "ckpt", folded)
    auto = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    ids = tokens()
    with torch.no_grad():
        torch.testing.assert_close(auto(ids).logits, folded(ids).logits, atol=0, rtol=0)
    # discovery works on the reloaded (heterogeneous) model and sees the pruned widths
    again = discover(auto)
    assert again.total_params == _count(folded)
    assert [s.ffn_channels for s in again.layers] == [layer.mlp.down_proj.in_features for layer in folded.model.layers]
