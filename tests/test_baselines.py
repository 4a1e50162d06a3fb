"""The baseline method plugins: magnitude, llm-pruner, wanda-sp, flap and random."""

from __future__ import annotations

import copy

import pytest
import torch
from pydantic import ValidationError
from tiny import tiny_model, tokens

import pruneframe
from pruneframe.architectures import discover
from pruneframe.pipeline.budget import check_meets_budget
from pruneframe.pipeline.calibration import CalibrationData
from pruneframe.toolkit.gates import gated
from pruneframe.pipeline.host import PluginHost
from pruneframe.pipeline.methods import ScoringContext
from pruneframe.pipeline.units import UnitKind
from pruneframe_baselines.ranges import resolve_layer_range

METHODS = ["magnitude", "llm-pruner", "wanda-sp", "flap", "random"]
FFN_PARTS = (("gate_proj", 0), ("up_proj", 0), ("down_proj", 1))  # (matrix, axis of its channels)
# small calibration settings so the whole file stays fast: 4 windows of 16 tokens
SMALL = {
    "magnitude": {},
    "random": {},
    "llm-pruner": {"num_samples": 4, "seq_len": 16},
    "wanda-sp": {"num_windows": 4, "seq_len": 16, "batch_size": 2},
    "flap": {"num_windows": 4, "seq_len": 16, "batch_size": 2},
}


def _method(name: str, **config):
    return PluginHost.create().method(name, {**SMALL[name], **config})


def _context(model, method, calibration: torch.Tensor | None = None) -> ScoringContext:
    units = discover(model)
    return ScoringContext(
        model=model,
        units=units,
        calibration=None if calibration is None else CalibrationData(calibration),
        budget=units.prunable_params,
        minimum=method.minimum(units),
        project=lambda s: s > 0,
        progress=False,
    )


def _model_state(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [p.requires_grad for p in model.parameters()],
    )


def test_all_baselines_are_registered_through_entry_points() -> None:
    methods = PluginHost.create().methods()
    assert set(METHODS) <= set(methods)
    for name in METHODS:
        assert methods[name].__module__.startswith("pruneframe_baselines.")
        assert methods[name].summary and methods[name].__doc__


@pytest.mark.parametrize("name", METHODS)
def test_scores_are_finite_deterministic_and_leave_the_model_untouched(name: str) -> None:
    model = tiny_model("qwen2")
    before, flags = _model_state(model)
    calib = tokens(4, 16)
    runs = []
    for _ in range(2):
        method = _method(name, seed=3)
        runs.append(method.score(_context(model, method, calib)))
    units = discover(model)
    assert runs[0].shape == (len(units),) and runs[0].dtype == torch.float32
    assert torch.isfinite(runs[0]).all()
    torch.testing.assert_close(runs[0], runs[1], atol=0, rtol=0)
    after, flags_after = _model_state(model)
    assert flags_after == flags
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_random_scores_depend_on_the_seed() -> None:
    model = tiny_model()
    a, b = (_method("random", seed=s) for s in (0, 1))
    assert not torch.equal(a.score(_context(model, a)), b.score(_context(model, b)))


@pytest.mark.parametrize("family", ["llama-gqa", "llama-mha-bias", "gemma3", "phi3"])
@pytest.mark.parametrize("name", METHODS)
def test_prune_meets_the_budget_and_folds_to_the_expected_size(name: str, family: str) -> None:
    model = tiny_model(family)
    result = pruneframe.prune(model, method=name, budget=0.6, calibration=tokens(4, 16), config=SMALL[name], progress=False)
    units = result.units
    minimum = PluginHost.create().method(name, SMALL[name]).minimum(units)
    budget = result.report.budget_prunable_params
    check_meets_budget(result.mask, units.cost, budget, groups=units.groups, minimum=minimum)
    added = 0
    if name == "flap":  # bias compensation adds a bias to every down_proj / o_proj that had none
        for layer in model.model.layers:
            added += model.config.hidden_size * ((layer.mlp.down_proj.bias is None) + (layer.self_attn.o_proj.bias is None))
    assert sum(p.numel() for p in result.model.parameters()) == units.kept_params(result.mask) + added
    ids = tokens(2, 10, seed=5)
    with torch.no_grad(), gated(model, units, result.mask, result.recalibration):
        want = model(ids).logits
    with torch.no_grad():
        torch.testing.assert_close(result.model(ids).logits, want, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- llm-pruner


def _hand_taylor(model, windows: torch.Tensor, importance: str) -> dict[tuple[int, str], torch.Tensor]:
    """Per (layer, matrix): the salience S = w*g (- 0.5 w^2 * Fisher), by plain autograd."""
    names = ["gate_proj", "up_proj", "down_proj", "q_proj", "k_proj", "v_proj", "o_proj"]
    keys, weights = [], []
    for i, layer in enumerate(model.model.layers):
        for n in names:
            module = getattr(layer.mlp if n in names[:3] else layer.self_attn, n)
            keys.append((i, n))
            weights.append(module.weight)
    loss = model(input_ids=windows, labels=windows).loss
    grads = torch.autograd.grad(loss, weights)
    out = {k: w.detach() * g for k, w, g in zip(keys, weights, grads)}
    if importance == "element2":
        fisher = [torch.zeros_like(w) for w in weights]
        for row in windows:
            per = torch.autograd.grad(model(input_ids=row[None], labels=row[None]).loss, weights)
            fisher = [f + g.square() / len(windows) for f, g in zip(fisher, per)]
        out = {k: s - 0.5 * w.detach().square() * f for (k, s), w, f in zip(out.items(), weights, fisher)}
    return out


def _agg(s: torch.Tensor, axis: int, index: slice, importance: str) -> torch.Tensor:
    """Sum over a unit's channels (rows if axis 0, columns if 1) of |sum S| or sum |S| per channel."""
    block = s[index] if axis == 0 else s[:, index].T
    return block.sum(1).abs().sum() if importance == "vector" else block.abs().sum()


@pytest.mark.parametrize("importance", ["vector", "element1", "element2"])
def test_taylor_importance_matches_a_hand_computation(importance: str) -> None:
    model = tiny_model("llama-gqa", num_hidden_layers=2)
    calib = tokens(4, 16, seed=5)
    method = _method("llm-pruner", importance=importance, batch_size=3 if importance == "element1" else None)
    scores = method.score(_context(model, method, calib))
    s = _hand_taylor(model, calib, importance)
    units = discover(model)
    hd, G = model.config.head_dim, model.config.num_attention_heads // model.config.num_key_value_heads

    c = 7  # FFN channel 7 of layer 1: gate/up rows and the down column
    want_ffn = sum(_agg(s[(1, n)], ax, slice(c, c + 1), importance) for n, ax in FFN_PARTS)
    g = 1  # KV group 1 of layer 0: G*hd q rows, hd k/v rows, G*hd o columns
    q, kv = slice(g * G * hd, (g + 1) * G * hd), slice(g * hd, (g + 1) * hd)
    want_kv = (
        _agg(s[(0, "q_proj")], 0, q, importance)
        + _agg(s[(0, "k_proj")], 0, kv, importance)
        + _agg(s[(0, "v_proj")], 0, kv, importance)
        + _agg(s[(0, "o_proj")], 1, q, importance)
    )
    got = torch.stack([scores[units.slice(1, UnitKind.FFN)][c], scores[units.slice(0, UnitKind.KV)][g]])
    want = torch.stack([want_ffn, want_kv]).float()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def test_taylor_group_reduction_max_takes_the_largest_matrix_share() -> None:
    model = tiny_model("llama-gqa", num_hidden_layers=2)
    calib = tokens(4, 16, seed=5)
    method = _method("llm-pruner", group_reduction="max")
    scores = method.score(_context(model, method, calib))
    s = _hand_taylor(model, calib, "element1")
    c = 3
    want = max(float(_agg(s[(0, n)], ax, slice(c, c + 1), "element1")) for n, ax in FFN_PARTS)
    assert float(scores[discover(model).slice(0, UnitKind.FFN)][c]) == pytest.approx(want, rel=1e-5)


def test_layer_range_defaults_follow_llm_pruner() -> None:
    assert resolve_layer_range(0.1, 0.95, 32) == (4, 30)  # LLaMA-7B: layers 4..30 of 32
    assert resolve_layer_range(0.1, 0.95, 30) == (3, 28)
    assert resolve_layer_range(0.1, 0.95, 8) == (1, 7)  # at least one layer kept on each side
    assert resolve_layer_range(0.1, 0.95, 3) == (0, 3)  # too small to spare layers
    assert resolve_layer_range(1, -1, 5) == (1, 4)
    with pytest.raises(ValueError, match="layer_start=3, layer_end=2"):
        resolve_layer_range(3, 2, 5)


def test_uniform_allocation_keeps_equal_fractions_and_skipped_layers_whole() -> None:
    model = tiny_model("llama-gqa", num_hidden_layers=5, num_attention_heads=12, num_key_value_heads=4, head_dim=4)
    config = {**SMALL["llm-pruner"], "layer_start": 1, "layer_end": -1, "importance": "vector"}
    result = pruneframe.prune(model, method="llm-pruner", budget=0.6, calibration=tokens(4, 16), config=config, progress=False)
    widths = result.units.widths(result.mask)
    shape = result.units.layers[0]
    for i in (0, 4):
        assert widths[i]["ffn_channels"] == shape.ffn_channels and widths[i]["kv_groups"] == shape.kv_groups
    pruned = widths[1:4]
    ffn = [w["ffn_channels"] for w in pruned]
    kv = [w["kv_groups"] for w in pruned]
    assert max(ffn) - min(ffn) <= 1 and max(kv) - min(kv) <= 1
    assert max(ffn) < shape.ffn_channels


# ----------------------------------------------------------------------------- magnitude


def test_magnitude_is_normalised_per_parameter() -> None:
    model = tiny_model("llama-gqa")
    units = discover(model)
    for norm in ("l1", "l2"):
        method = _method("magnitude", norm=norm)
        base = method.score(_context(model, method))
        doubled = copy.deepcopy(model)
        with torch.no_grad():
            for p in doubled.model.layers[1].parameters():
                if p.dim() == 2:
                    p.mul_(2)
        scaled = method.score(_context(doubled, method))
        layer1 = torch.zeros(len(units), dtype=torch.bool)
        layer1[units.slice(1, UnitKind.FFN)] = layer1[units.slice(1, UnitKind.KV)] = True
        torch.testing.assert_close(scaled[layer1], 2 * base[layer1])
        torch.testing.assert_close(scaled[~layer1], base[~layer1])
    # constant weights: FFN channels and KV groups score the same despite very different sizes
    constant = copy.deepcopy(model)
    with torch.no_grad():
        for p in constant.model.layers.parameters():
            if p.dim() == 2:
                p.fill_(0.3)
    for norm in ("l1", "l2"):
        method = _method("magnitude", norm=norm)
        torch.testing.assert_close(method.score(_context(constant, method)), torch.full((len(units),), 0.3))


def test_allocation_is_the_projector_scope() -> None:
    host = PluginHost.create()
    assert host.method("magnitude").config.scope == "global"
    assert host.method("llm-pruner").config.scope == "uniform"
    assert host.method("wanda-sp").config.scope == "uniform"
    assert host.method("magnitude", {"allocation": "uniform"}).config.scope == "uniform"
    assert host.method("flap", {"scope": "uniform"}).config.allocation == "uniform"
    with pytest.raises(ValidationError, match="disagree"):
        host.method("magnitude", {"allocation": "uniform", "scope": "global"})
    with pytest.raises(ValidationError, match="extra"):
        host.method("flap", {"bias": True})


# ----------------------------------------------------------------------------- wanda-sp


def _forward_with_hooks(model, windows: torch.Tensor, hooks: list) -> None:
    """One no-grad forward pass of ``model`` on ``windows``; ``hooks`` (registered handles) are removed after it."""
    try:
        with torch.no_grad():
            model(input_ids=windows, use_cache=False)
    finally:
        for h in hooks:
            h.remove()


def _linear_inputs(model, windows: torch.Tensor, layer: int) -> dict[str, torch.Tensor]:
    """Every token's input ``[tokens, features]`` to one layer's gate/down/q/o projections."""
    block = model.model.layers[layer]
    modules = {
        "gate": block.mlp.gate_proj,
        "down": block.mlp.down_proj,
        "q": block.self_attn.q_proj,
        "o": block.self_attn.o_proj,
    }
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str):
        return lambda module, args: seen.__setitem__(name, args[0].reshape(-1, args[0].shape[-1]))

    _forward_with_hooks(model, windows, [m.register_forward_pre_hook(keep(k)) for k, m in modules.items()])
    return seen


def test_wanda_sp_is_the_mean_of_weight_times_input_norm_over_a_unit() -> None:
    model = tiny_model("llama-gqa")
    calib = tokens(4, 16, seed=1)
    units = discover(model)
    x = _linear_inputs(model, calib, layer=2)
    rms = {k: v.double().square().mean(0).sqrt() for k, v in x.items()}
    block = model.model.layers[2]
    W = {n: getattr(block.mlp, n).weight.detach().double() for n in ("gate_proj", "up_proj", "down_proj")}
    W |= {n: getattr(block.self_attn, n).weight.detach().double() for n in ("q_proj", "k_proj", "v_proj", "o_proj")}
    c, g = 5, 1
    hd, G = model.config.head_dim, model.config.num_attention_heads // model.config.num_key_value_heads
    q, kv = slice(g * G * hd, (g + 1) * G * hd), slice(g * hd, (g + 1) * hd)
    ffn_terms = [
        W["gate_proj"][c].abs() * rms["gate"],
        W["up_proj"][c].abs() * rms["gate"],
        W["down_proj"][:, c].abs() * rms["down"][c],
    ]
    kv_terms = [W[n][r].abs() * rms["q"] for n, r in (("q_proj", q), ("k_proj", kv), ("v_proj", kv))]
    kv_terms.append(W["o_proj"][:, q].abs() * rms["o"][q])

    def mean(terms):
        return sum(t.sum() for t in terms) / sum(t.numel() for t in terms)

    expected = {"all": (mean(ffn_terms), mean(kv_terms)), "output": (mean(ffn_terms[2:]), mean(kv_terms[3:]))}
    for matrices, want in expected.items():
        method = _method("wanda-sp", matrices=matrices)
        scores = method.score(_context(model, method, calib))
        got = (scores[units.slice(2, UnitKind.FFN)][c], scores[units.slice(2, UnitKind.KV)][g])
        torch.testing.assert_close(torch.stack(got), torch.stack(want).float(), rtol=1e-5, atol=0)


# ----------------------------------------------------------------------------- flap


def _sublayer_inputs(model, windows: torch.Tensor, layer: int):
    """The dense model's inputs to one layer's MLP and attention on ``windows`` (args/kwargs per call)."""
    seen: dict[str, list] = {"mlp": [], "attn": []}
    block = model.model.layers[layer]
    hooks = [
        block.mlp.register_forward_pre_hook(lambda m, args: seen["mlp"].append(args[0])),
        block.self_attn.register_forward_pre_hook(lambda m, args, kwargs: seen["attn"].append((args, dict(kwargs))), with_kwargs=True),
    ]
    _forward_with_hooks(model, windows, hooks)
    return seen


def test_flap_scores_are_standardised_weighted_fluctuations() -> None:
    model = tiny_model("llama-gqa")
    calib = tokens(4, 16, seed=3)
    units = discover(model)
    x = _linear_inputs(model, calib, layer=1)
    block = model.model.layers[1]

    def standard(v):
        return (v - v.mean()) / v.std()

    mlp = standard(x["down"].double().var(0) * block.mlp.down_proj.weight.detach().double().square().sum(0))
    attn = standard((x["o"].double().var(0) * block.self_attn.o_proj.weight.detach().double().square().sum(0)).square())
    per_group = model.config.head_dim * model.config.num_attention_heads // model.config.num_key_value_heads
    method = _method("flap")
    scores = method.score(_context(model, method, calib))
    torch.testing.assert_close(scores[units.slice(1, UnitKind.FFN)], mlp.float(), rtol=1e-4, atol=1e-5)
    want_kv = attn.reshape(-1, per_group).mean(1).float()
    torch.testing.assert_close(scores[units.slice(1, UnitKind.KV)], want_kv, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["llama-gqa", "llama-mha-bias"])
def test_flap_bias_compensation_keeps_each_sublayers_mean_output(family: str) -> None:
    model = tiny_model(family, initializer_range=0.2)  # outputs of order 1, so 1e-4 is a tight check
    calib = tokens(4, 16, seed=2)
    results = {
        flag: pruneframe.prune(
            model,
            method="flap",
            budget=0.5,
            calibration=calib,
            config={**SMALL["flap"], "bias_compensation": flag},
            progress=False,
        )
        for flag in (True, False)
    }
    for layer in range(model.config.num_hidden_layers):
        seen = _sublayer_inputs(model, calib, layer)
        x = seen["mlp"][0]
        ((args, kwargs),) = seen["attn"]
        dense = model.model.layers[layer]
        with torch.no_grad():
            want = (dense.mlp(x).mean((0, 1)), dense.self_attn(*args, **kwargs)[0].mean((0, 1)))
            for flag, result in results.items():
                pruned = result.model.model.layers[layer]
                got = (pruned.mlp(x).mean((0, 1)), pruned.self_attn(*args, **kwargs)[0].mean((0, 1)))
                if flag:
                    torch.testing.assert_close(got[0], want[0], atol=1e-4, rtol=0)
                    torch.testing.assert_close(got[1], want[1], atol=1e-4, rtol=0)
        assert pruned.mlp.down_proj.in_features < dense.mlp.down_proj.in_features
    # without compensation the mean output moves (so the check above is not vacuous)
    with torch.no_grad():
        off = results[False].model.model.layers[layer].mlp(x).mean((0, 1))
    assert (off - want[0]).abs().max() > 1e-2
