"""Prunes that cut the hidden dimension, end to end: budget, fold, checkpoint, reload, refusals."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from pruneframe import load_pruned
from pruneframe.pipeline.budget import BudgetError
from pruneframe.pipeline.session import PruneSession, as_calibration
from pruneframe.testing import tiny_model, tokens

FAST = {"num_windows": 4, "seq_len": 16, "batch_size": 2, "norm_windows": 2, "norm_seq_len": 16}


def _prune(family: str, method: str, keep: float, config: dict, tmp_path: Path | None = None):
    model = tiny_model(family)
    dense = sum(p.numel() for p in model.parameters())
    session = PruneSession(model, method, {"kind": "total", "keep": keep}, config)
    result = session.run(tokens(8, 32), progress=False)
    return model, dense, session, result


NORM = {"norm_windows": 2, "norm_seq_len": 16}


@pytest.mark.parametrize(
    ("family", "method", "config"),
    [
        ("llama-gqa", "minitron", FAST),
        ("gemma3", "minitron", {**FAST, "hidden_round_to": 8}),
        ("gemma3", "minitron", {**FAST, "hidden_round_to": 8, "hidden_keep": "balanced"}),
        ("qwen2", "magnitude", {"hidden_keep": 0.75, **NORM}),
        ("qwen3", "llm-pruner", {"hidden_keep": 0.75, "num_samples": 2, "seq_len": 16, **NORM}),
        ("llama-mha-bias", "llm-pruner", {"hidden_keep": 0.75, "importance": "vector", "num_samples": 2, "seq_len": 16, "batch_size": 1, **NORM}),
    ],
)
def test_a_hidden_prune_meets_the_total_budget_exactly_and_reloads(family: str, method: str, config: dict, tmp_path: Path) -> None:
    _, dense, session, result = _prune(family, method, 0.6, config)
    folded, report = result.model, result.report
    target = math.floor(0.6 * dense)
    assert report.hidden_size == folded.config.hidden_size < 48
    assert report.kept_params == sum(p.numel() for p in folded.parameters()) <= target
    # exact: no dropped unit (priced at the kept width) fits in what is left, nor does the next hidden block
    left = target - report.kept_params
    cost_units = session.plan.units_at(session.units, report.hidden_size)
    assert bool((cost_units.cost[~result.mask] > left).all())
    assert session.plan.costs.total(min(48, report.hidden_size + session.plan.round_to), result.mask) > target
    ids = tokens(2, 12)
    with torch.no_grad():
        expected = folded(ids).logits
    result.save(tmp_path / "ckpt")
    reloaded, _ = load_pruned(tmp_path / "ckpt")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, expected, rtol=0, atol=1e-5)
    widths = {(w["ffn_channels"], w["kv_groups"]) for w in session.units.widths(result.mask)}
    if len(widths) == 1:  # uniform layers: the family's own config, loaded by transformers alone
        plain = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
        with torch.no_grad():
            torch.testing.assert_close(plain(ids).logits, expected, rtol=0, atol=1e-5)


def test_minitron_keeps_the_same_fraction_of_every_layer_and_records_its_norm_factors() -> None:
    _, _, session, result = _prune("llama-gqa", "minitron", 0.6, FAST)
    widths = session.units.widths(result.mask)
    for kind in ("ffn_channels", "kv_groups"):  # uniform allocation: within one unit, the rest filled exactly
        assert max(w[kind] for w in widths) - min(w[kind] for w in widths) <= 1
    stats = result.report.method_stats
    assert stats["hidden_kept"] == result.report.hidden_size and len(stats["norm_factors"]) == 2 * 3 + 1
    assert all(f > 0 for f in stats["norm_factors"].values())


@pytest.mark.parametrize("keep", [0.8, 0.5])
def test_balanced_minitron_cuts_the_hidden_width_and_the_layers_by_about_one_fraction(keep: float) -> None:
    _, _, session, result = _prune("llama-gqa", "minitron", keep, {**FAST, "hidden_keep": "balanced", "hidden_round_to": 4})
    d, width = session.units.hidden_size, result.report.hidden_size
    costs = session.plan.units_at(session.units, width).cost
    unit_share = float(costs[result.mask].sum() / costs.sum())
    # the widest width whose share the units can match: apart by at most one rounding step of the width
    # and the largest unit's share of the units (the projection fills the rest exactly)
    assert width < d and abs(width / d - unit_share) <= 4 / d + float(costs.max() / costs.sum())


def test_norm_correction_none_leaves_the_norm_scales(tmp_path: Path) -> None:
    model = tiny_model("llama-gqa")
    before = model.model.norm.weight.detach().clone()
    result = PruneSession(model, "minitron", {"kind": "total", "keep": 0.7}, {**FAST, "norm_correction": "none"}).run(tokens(8, 32), progress=False)
    kept = result.model.config.hidden_size
    assert set(result.model.model.norm.weight.tolist()) <= set(before.tolist()) and result.model.model.norm.weight.numel() == kept


def test_refusals_name_the_cause() -> None:
    odd = tiny_model("gemma3")
    odd.get_input_embeddings().embed_scale.fill_(3.0)
    with pytest.raises(ValueError, match="cannot cut this model's hidden dimension: its embedding is scaled by 3"):
        PruneSession(odd, "minitron", {"kind": "total", "keep": 0.6}, FAST)
    with pytest.raises(BudgetError, match="hidden channels .* already take .* lower hidden_keep"):
        PruneSession(tiny_model("llama-gqa"), "minitron", {"kind": "total", "keep": 0.05}, {**FAST, "hidden_keep": 1.0})
    with pytest.raises(ValueError, match="hidden_keep cannot be combined with removal 'mixed'"):
        PruneSession(tiny_model("llama-gqa"), "minitron", 0.5, {**FAST, "removal": "mixed"})
    # a width method without hidden_keep is untouched by all of this
    assert PruneSession(tiny_model("llama-gqa"), "magnitude", 0.5).plan is None


def test_uniform_widths_save_as_the_familys_own_config(tmp_path: Path) -> None:
    """A budget that keeps every unit: the hidden width alone shrinks, widened while a block still fits."""
    _, dense, session, result = _prune("llama-gqa", "minitron", 0.8, {**FAST, "hidden_keep": 0.5})
    assert bool(result.mask.all()) and result.report.hidden_size > session.plan.width  # widened from 24
    assert result.report.kept_params <= math.floor(0.8 * dense)
    assert session.plan.costs.total(result.report.hidden_size + 6, result.mask) > math.floor(0.8 * dense)
    result.save(tmp_path / "ckpt")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    assert type(plain).__name__ == "LlamaForCausalLM" and plain.config.hidden_size == result.report.hidden_size
    ids = tokens(2, 12)
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, result.model(ids).logits, rtol=0, atol=1e-5)


def test_compare_runs_a_hidden_method_beside_a_width_method_at_the_same_total_budget(workspace: dict[str, Path], tmp_path: Path) -> None:
    import json

    from pruneframe.cli import main

    out = tmp_path / "cmp"
    settings = {
        "model": str(workspace["model"]),
        "methods": {"minitron": {**FAST, "hidden_keep": 0.875}, "magnitude": {}},
        "budgets": [0.7],
        "budget_kind": "total",
        "calibration": {"data": str(workspace["calib"])},
        "evaluation": {"perplexity": {"sources": [str(workspace["eval"]), str(workspace["other"])], "seq_len": 32, "num_windows": 2}},
        "out": str(out),
    }
    (tmp_path / "c.json").write_text(json.dumps(settings))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRUNEFRAME_DATA_DIR", str(workspace["data_dir"]))
        assert main(["compare", "--config", str(tmp_path / "c.json"), "--quiet"]) == 0
    runs = {r["run_id"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    dense = json.loads((out / "runs" / "dense.json").read_text())
    assert {r["status"] for r in runs.values()} == {"ok"}
    hidden = runs["minitron-0.7-s0"]["prune"]
    width = runs["magnitude-0.7-s0"]["prune"]
    target = math.floor(0.7 * width["dense_params"])
    assert hidden["hidden_size"] < 48 and width["hidden_size"] is None
    assert hidden["kept_params"] <= target and width["kept_params"] <= target
    assert dense["kind"] == "dense"


def _hidden_scores(method: str, config: dict, family: str = "llama-mha-bias") -> tuple[torch.Tensor, torch.nn.Module, torch.Tensor]:
    model = tiny_model(family)
    session = PruneSession(model, method, 0.5, {"hidden_keep": 0.5, **config})
    calibration = as_calibration(tokens(4, 32))
    context = session._context(calibration, False)
    return session.method.score_hidden(context), model, calibration.windows(config.get("num_samples", 1), config.get("seq_len", 16))


def test_llm_pruner_hidden_scores_are_the_summed_first_order_salience_of_every_tensor_a_channel_spans() -> None:
    scores, model, windows = _hidden_scores("llm-pruner", {"num_samples": 2, "seq_len": 16})
    loss = model(windows, labels=windows, use_cache=False).loss
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    expected = torch.zeros(48, dtype=torch.float64)
    for (name, p), g in zip(params.items(), grads):
        if g is None or "q_norm" in name or "k_norm" in name:
            continue
        s = (p.detach() * g).abs().double()
        if p.dim() == 1:  # norms and the output biases span the stream; q/k/v/gate/up biases do not
            if "norm" in name or name.endswith(("o_proj.bias", "down_proj.bias")):
                expected += s
        elif name.endswith(("o_proj.weight", "down_proj.weight")):  # write the stream: output rows
            expected += s.sum(1)
        elif p.dim() == 2:  # read the stream: embedding, lm_head, q/k/v/gate/up input columns
            expected += s.sum(0)
    torch.testing.assert_close(scores.double(), expected, rtol=1e-4, atol=1e-6)


def test_magnitude_hidden_scores_are_the_per_parameter_norm_of_the_weights_a_channel_spans() -> None:
    scores, model, _ = _hidden_scores("magnitude", {"norm": "l1"})
    total, count = torch.zeros(48, dtype=torch.float64), 0
    for name, p in model.named_parameters():
        if p.dim() != 2:
            continue
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            total, count = total + p.detach().abs().double().sum(1), count + p.shape[1]
        else:
            total, count = total + p.detach().abs().double().sum(0), count + p.shape[0]
    torch.testing.assert_close(scores.double(), total / count, rtol=1e-5, atol=1e-7)
