"""GRASPrune on tiny random models of every family: budget at every step, gradients, determinism."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
import pytest
import torch
from tiny import FAMILIES, tiny_model, tokens

import pruneframe
from pruneframe.pipeline.budget import check_meets_budget
from pruneframe.checkpoint import load_pruned
from pruneframe.toolkit.gates import gated
from pruneframe.pipeline.host import PluginHost
from pruneframe.pipeline.hookspecs import hookimpl
from pruneframe_grasprune.plugin import normalised_ranks

FAST = dict(num_sequences=4, seq_len=12, epochs=2, rescale_sequences=2, lr=0.2)


class ProjectionSpy:
    """A plugin that records every projection (it runs first and defers to the core projector)."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, int]] = []

    @hookimpl(hookwrapper=True)
    def pruneframe_project(self, scores, units, budget, minimum, policy, scope):
        outcome = yield
        mask = outcome.get_result()
        check_meets_budget(mask, units.cost, budget, units.groups, minimum)
        self.calls.append((mask.clone(), units.kept_cost(mask)))


def _assert_folds_exactly(model: torch.nn.Module, result: pruneframe.PruneResult) -> None:
    """The folded model's logits equal the dense model's with the mask and recalibration as gates."""
    ids = tokens(2, 10, seed=9)
    with torch.no_grad(), gated(model, result.units, result.mask, result.recalibration):
        ref = model(ids).logits
    with torch.no_grad():
        torch.testing.assert_close(result.model(ids).logits, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_budget_met_at_every_step_and_export_reloads(tmp_path, family: str) -> None:
    model = tiny_model(family)
    spy = ProjectionSpy()
    host = PluginHost.create(plugins=[spy])
    result = pruneframe.prune(model, "grasprune", 0.5, calibration=tokens(6, 12), config=FAST, host=host, progress=False)
    steps = FAST["epochs"] * FAST["num_sequences"]
    assert len(spy.calls) == steps + 1  # one projection per training step, then the final one
    budget = result.report.budget_prunable_params
    assert all(cost <= budget for _, cost in spy.calls)
    assert result.report.method_stats["gates"]["kept_cost_per_step"] == [c for _, c in spy.calls[:-1]]
    # the exported checkpoint reloads to identical logits
    out = result.save(tmp_path / "ckpt")
    loaded, _ = load_pruned(out)
    ids = tokens(2, 10, seed=9)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, result.model(ids).logits, atol=0, rtol=0)
        with gated(model, result.units, result.mask, result.recalibration):
            ref = model(ids).logits
    torch.testing.assert_close(result.model(ids).logits, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("objective", ["lm", "distill"])
def test_gradients_reach_gate_scores_and_nothing_else(objective: str) -> None:
    model = tiny_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    seen = []
    original = torch.optim.AdamW.step

    def spy_step(self, *args, **kwargs):
        seen.append([p.grad is not None and bool(p.grad.abs().sum() > 0) for g in self.param_groups for p in g["params"]])
        # the backbone is frozen: no parameter of the model has a gradient
        assert all(p.grad is None for p in model.parameters())
        return original(self, *args, **kwargs)

    torch.optim.AdamW.step = spy_step
    try:
        cfg = {**FAST, "loss": objective, "rescale_loss": objective}
        result = pruneframe.prune(model, "grasprune", 0.6, calibration=tokens(6, 12), config=cfg, progress=False)
    finally:
        torch.optim.AdamW.step = original
    assert seen and all(all(s) for s in seen)  # every step: the gate (or scale) tensor got a gradient
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), f"{n} changed"
        assert p.requires_grad == flags[n]
        assert p.grad is None
    assert result.recalibration is not None and result.recalibration.scales is not None
    # scales moved away from 1 for kept units only matter; they are bounded by alpha
    assert (result.recalibration.scales - 1).abs().max() <= 0.5 + 1e-6


def test_run_is_deterministic_for_a_seed() -> None:
    def run(seed: int):
        model = tiny_model()
        r = pruneframe.prune(model, "grasprune", 0.5, calibration=tokens(6, 12), config={**FAST, "seed": seed}, progress=False)
        return r.scores, r.mask, r.recalibration.scales

    a, b, c = run(1), run(1), run(2)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not torch.equal(a[0], c[0])


def test_first_mask_spreads_ties_across_layers() -> None:
    """At step 0 all gates tie; the first mask keeps about the same fraction of every layer and kind."""
    model = tiny_model(num_hidden_layers=4)
    spy = ProjectionSpy()
    host = PluginHost.create(plugins=[spy])
    result = pruneframe.prune(model, "grasprune", 0.5, calibration=tokens(6, 12), config=FAST, host=host, progress=False)
    first = spy.calls[0][0]
    widths = result.units.widths(first)
    ffn = [w["ffn_channels"] for w in widths]
    assert max(ffn) - min(ffn) <= 1, ffn


def test_non_finite_loss_stops_with_step() -> None:
    model = tiny_model()
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.fill_(float("inf"))
    with pytest.raises(FloatingPointError, match="step 0"):
        pruneframe.prune(model, "grasprune", 0.5, calibration=tokens(6, 12), config=FAST, progress=False)


def test_backbone_dtype_follows_the_model_unless_named() -> None:
    """``dtype: auto`` trains on a bf16 model as loaded (fp32 gates and scales); a named dtype must match."""
    model = tiny_model().to(torch.bfloat16)
    result = pruneframe.prune(model, "grasprune", 0.5, calibration=tokens(6, 12), config=FAST, progress=False)
    assert result.scores.dtype is torch.float32 and result.recalibration.scales.dtype is torch.float32
    assert next(result.model.parameters()).dtype is torch.bfloat16
    with pytest.raises(ValueError, match="dtype=float32 but the model is bfloat16"):
        pruneframe.prune(tiny_model().to(torch.bfloat16), "grasprune", 0.5, calibration=tokens(6, 12), config={**FAST, "dtype": "float32"}, progress=False)


def test_config_is_typed() -> None:
    from pruneframe_grasprune import GRASPruneConfig

    cfg = GRASPruneConfig()
    assert (cfg.tau, cfg.lr, cfg.betas, cfg.epochs, cfg.num_sequences, cfg.rescale_alpha) == (1.5, 1e-2, (0.9, 0.99), 4, 512, 0.5)
    with pytest.raises(ValueError):
        GRASPruneConfig(tau=0)
    with pytest.raises(ValueError):
        GRASPruneConfig(unknown=1)
    with pytest.raises(ValueError):
        GRASPruneConfig(policy="optimal")


def test_bias_compensation_folds_exactly() -> None:
    model = tiny_model("qwen2")
    cfg = {**FAST, "bias_compensation": True}
    result = pruneframe.prune(model, "grasprune", 0.5, calibration=tokens(6, 12), config=cfg, progress=False)
    rec = result.recalibration
    assert rec.mlp_bias is not None and rec.attn_bias is not None and rec.scales is not None
    assert rec.mlp_bias.abs().sum() > 0
    _assert_folds_exactly(model, result)
    assert result.model.model.layers[0].mlp.down_proj.bias is not None


def test_least_squares_refit_folds_exactly_and_adds_no_parameters() -> None:
    model = tiny_model("llama-gqa")
    dense = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = {**FAST, "least_squares": True}
    result = pruneframe.prune(model, "grasprune", 0.5, calibration=tokens(6, 12), config=cfg, progress=False)
    rec = result.recalibration
    assert rec.down_proj is not None and rec.scales is not None
    layer0 = model.model.layers[0].mlp.down_proj.weight
    assert not torch.equal(rec.down_proj[0], layer0)  # the kept columns were refit
    assert all(torch.equal(p, dense[n]) for n, p in model.named_parameters())  # the dense model is untouched
    _assert_folds_exactly(model, result)
    assert sum(p.numel() for p in result.model.parameters()) == result.units.kept_params(result.mask)  # nothing added


def test_output_scales_are_learned_and_fold_exactly() -> None:
    model = tiny_model("llama-mha-bias")  # down_proj / o_proj carry biases: the scale must multiply them too
    cfg = {**FAST, "rescale_outputs": True}
    result = pruneframe.prune(model, "grasprune", 0.5, calibration=tokens(6, 12), config=cfg, progress=False)
    rec = result.recalibration
    hidden = model.config.hidden_size
    assert rec.mlp_out_scale.shape == rec.attn_out_scale.shape == (model.config.num_hidden_layers, hidden)
    assert (rec.mlp_out_scale != 1).any() and (rec.attn_out_scale != 1).any()
    assert ((rec.mlp_out_scale - 1).abs() <= cfg.get("rescale_alpha", 0.5)).all()
    _assert_folds_exactly(model, result)
    assert sum(p.numel() for p in result.model.parameters()) == result.units.kept_params(result.mask)  # nothing added


def test_precomputed_scores_skip_gate_training_and_keep_the_mask() -> None:
    model = tiny_model("llama-gqa")
    first = pruneframe.prune(model, "grasprune", 0.5, calibration=tokens(6, 12), config=FAST, progress=False)
    again = pruneframe.prune(model, "grasprune", 0.5, calibration=tokens(6, 12), config={**FAST, "rescale_outputs": True}, scores=first.scores, progress=False)
    assert torch.equal(again.mask, first.mask)
    stats = again.report.method_stats
    assert "gates" not in stats and stats["scores"] == "precomputed" and "rescale" in stats
    assert again.recalibration.mlp_out_scale is not None
    with pytest.raises(ValueError, match="scores must have shape"):
        pruneframe.prune(model, "grasprune", 0.5, calibration=tokens(6, 12), config=FAST, scores=first.scores[:-1], progress=False)


def test_training_loss_is_the_plain_causal_lm_loss_and_attention_is_restored() -> None:
    from pruneframe_grasprune.training import attention_implementation, causal_lm_loss

    model = tiny_model("qwen3")
    ids = tokens(2, 12)
    before = model.config._attn_implementation
    with torch.no_grad():
        want = model(input_ids=ids, labels=ids).loss
        with attention_implementation(model, "eager"):
            assert model.config._attn_implementation == "eager"
            got = causal_lm_loss(model, ids)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert model.config._attn_implementation == before


@pytest.mark.parametrize("family", ["llama-gqa", "qwen3"])
def test_distillation_loss_is_kl_from_the_ungated_model(family: str) -> None:
    from pruneframe.architectures import discover
    from pruneframe.toolkit.gates import UnitGates
    from pruneframe_grasprune.training import DenseTeacher, distillation_loss, frozen

    model = tiny_model(family)
    units = discover(model)
    ids = tokens(3, 12)
    with torch.no_grad():
        dense = model(ids).logits[:, :-1]
    scores = torch.linspace(-2, 2, len(units)).requires_grad_(True)
    with frozen(model), UnitGates(model, units) as gates:
        gates.set(torch.sigmoid(scores))
        teacher = DenseTeacher(model, gates, ids, batch_size=2, progress=False)
        assert torch.equal(gates.z, torch.sigmoid(scores))  # the teacher pass left the gates as they were
        rows = torch.tensor([2, 0])
        loss = distillation_loss(model, ids[rows], teacher[rows])
        (grad,) = torch.autograd.grad(loss, scores)
        with torch.no_grad():
            student = model(ids[rows]).logits[:, :-1]
        gates.set(torch.ones(len(units)))
        zero = distillation_loss(model, ids[rows], teacher[rows])
    want = torch.nn.functional.kl_div(
        torch.log_softmax(student, -1).flatten(0, 1),
        torch.log_softmax(dense[rows], -1).flatten(0, 1),
        log_target=True,
        reduction="batchmean",
    )
    torch.testing.assert_close(loss.detach(), want, atol=1e-5, rtol=1e-4)
    assert float(zero) == pytest.approx(0.0, abs=1e-5)
    assert grad.abs().sum() > 0


def test_block_adam_gates_meet_the_budget_and_learn_a_different_ranking() -> None:
    spy = ProjectionSpy()
    host = PluginHost.create(plugins=[spy])
    cfg = {**FAST, "optimizer": "block-adam"}
    result = pruneframe.prune(tiny_model(), "grasprune", 0.5, calibration=tokens(6, 12), config=cfg, host=host, progress=False)
    budget = result.report.budget_prunable_params
    assert len(spy.calls) == FAST["epochs"] * FAST["num_sequences"] + 1
    assert all(cost <= budget for _, cost in spy.calls)
    adamw = pruneframe.prune(tiny_model(), "grasprune", 0.5, calibration=tokens(6, 12), config=FAST, progress=False)
    # a different ranking, not just other values: some pair of units is ordered the other way round
    a, b = result.scores, adamw.scores
    assert len(a.unique()) > 1 and len(b.unique()) > 1
    swapped = (a[:, None] > a[None, :]) & (b[:, None] < b[None, :])
    assert bool(swapped.any())


def test_init_from_another_method_starts_the_gates_at_its_ranks() -> None:
    spy = ProjectionSpy()
    host = PluginHost.create(plugins=[spy])
    model = tiny_model()
    cfg = {**FAST, "init_from": "random", "init_config": {"seed": 3}, "init_spread": 2.0}
    result = pruneframe.prune(model, "grasprune", 0.5, calibration=tokens(6, 12), config=cfg, host=host, progress=False)
    prior = torch.rand(len(result.units), generator=torch.Generator().manual_seed(3))
    ranks = torch.argsort(torch.argsort(prior)).float()
    p0 = torch.sigmoid(2.0 * (ranks / (len(ranks) - 1) - 0.5) / 1.5)
    first = spy.calls[0][0]
    want = host.project(p0, result.units, result.report.budget_prunable_params, result.units.default_minimum(), "rank", "global")
    assert torch.equal(first, want)
    assert "random" in result.report.method_stats["scored_with"]

    uniform = pruneframe.prune(tiny_model(), "grasprune", 0.5, calibration=tokens(6, 12), config={**cfg, "init_scope": "uniform"}, host=host, progress=False)
    units, first = uniform.units, spy.calls[-(FAST["epochs"] * FAST["num_sequences"] + 1)][0]
    p0 = torch.sigmoid(2.0 * (normalised_ranks(prior, units.groups) - 0.5) / 1.5)
    want = host.project(p0, units, uniform.report.budget_prunable_params, units.default_minimum(), "rank", "global")
    assert torch.equal(first, want)
    from pruneframe.pipeline.host import UnknownNameError

    with pytest.raises(UnknownNameError, match="unknown method 'nope'"):
        pruneframe.prune(tiny_model(), "grasprune", 0.5, calibration=tokens(6, 12), config={**FAST, "init_from": "nope"}, progress=False)


@settings(deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.floats(-5, 5, allow_nan=False)), min_size=1, max_size=40))
def test_normalised_ranks_span_each_group_in_score_order(pairs: list[tuple[int, float]]) -> None:
    groups = torch.tensor([g for g, _ in pairs])
    scores = torch.tensor([s for _, s in pairs])
    ranks = normalised_ranks(scores, groups)
    for g in groups.unique():
        r, s = ranks[groups == g], scores[groups == g]
        if len(r) == 1:
            assert r.item() == 1.0
            continue
        assert r.min().item() == 0.0 and r.max().item() == 1.0
        assert len(r.unique()) == len(r)
        order = torch.argsort(r)
        assert bool((s[order][1:] >= s[order][:-1]).all())
