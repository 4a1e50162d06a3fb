"""``slimgpt``: grouped OBS removal with weight updates, layer by layer, at a pruning ratio rising with depth.

The OBS math (:mod:`pruneframe.toolkit.obs`) is property-tested against a direct least-squares solve;
the method is held to the plugin checks, the exact budget, its schedule and exact folds and reloads.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM

import pruneframe
from pruneframe import load_pruned
from pruneframe.architectures import discover
from pruneframe.cli import main
from pruneframe.pipeline.budget import check_mask
from pruneframe.pipeline.host import PluginHost
from pruneframe.pipeline.session import PruneSession
from pruneframe.pipeline.units import UnitKind, UnitSet
from pruneframe.testing import FAMILIES, check_method, tiny_model, tokens
from pruneframe.toolkit.gates import gated
from pruneframe.toolkit.obs import compensate, damped_inverse, damping_strength, dynamic_group_sizes, greedy_removal, group_errors
from pruneframe_baselines.slimgpt import SlimGPTConfig, ratio_shape, schedule_scores

FAST = {"num_windows": 4, "seq_len": 16, "batch_size": 2}
CALIB = tokens(8, 32, seed=2)


# ----------------------------------------------------------------------------- the OBS math


def _problem(seed: int, out: int, n: int, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight and correlated inputs (rows), float64."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, n, generator=g, dtype=torch.float64)
    x = torch.randn(samples, n, generator=g, dtype=torch.float64) @ torch.randn(n, n, generator=g, dtype=torch.float64)
    return w, x


def _removed(seed: int, n: int, drop: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))[: min(drop, n - 1)]


@settings(deadline=None, max_examples=60)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 12), drop=st.integers(1, 11), damping=st.floats(1e-4, 1.0), samples=st.integers(1, 40))
def test_the_grouped_obs_update_is_the_ridge_least_squares_solution_over_the_kept_columns(seed: int, n: int, drop: int, damping: float, samples: int) -> None:
    w, x = _problem(seed, out=4, n=n, samples=samples)
    gram = x.T @ x
    removed = _removed(seed, n, drop)
    keep = torch.ones(n, dtype=torch.bool)
    keep[removed] = False
    updated = compensate(w, damped_inverse(gram, damping), removed)
    # min ||X W^T - X_k V^T||^2 + lam ||V - W_k||^2, solved directly as one stacked least-squares problem
    lam = damping_strength(gram, damping)
    a = torch.cat([x[:, keep], lam**0.5 * torch.eye(int(keep.sum()), dtype=torch.float64)])
    b = torch.cat([x @ w.T, lam**0.5 * w[:, keep].T])
    direct = torch.linalg.lstsq(a, b, driver="gelsd").solution.T
    torch.testing.assert_close(updated[:, keep], direct, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(updated[:, removed], w[:, removed], rtol=0, atol=0)
    # removing with the update never leaves a larger output error on the inputs than removing without it
    with_update = (x @ w.T - x[:, keep] @ updated[:, keep].T).square().sum()
    without = (x @ w.T - x[:, keep] @ w[:, keep].T).square().sum()
    assert float(with_update) <= float(without) * (1 + 1e-9) + 1e-9


@settings(deadline=None, max_examples=40)
@given(seed=st.integers(0, 10_000), units=st.integers(2, 6), per_unit=st.integers(1, 3), damping=st.floats(1e-3, 0.5), data=st.data())
def test_greedy_steps_end_where_the_one_shot_update_of_their_union_does_and_errors_are_the_objective(
    seed: int, units: int, per_unit: int, damping: float, data: st.DataObject
) -> None:
    n = units * per_unit
    w, x = _problem(seed, out=3, n=n, samples=2 * n)
    gram = x.T @ x
    hinv = damped_inverse(gram, damping)
    columns = torch.arange(n).view(units, per_unit)
    steps = data.draw(st.lists(st.integers(1, 2), min_size=1, max_size=units - 1).filter(lambda s: sum(s) < units))
    greedy = greedy_removal(w, hinv, columns, steps)
    assert greedy.order.numel() == sum(steps) and len(set(greedy.order.tolist())) == sum(steps)
    removed_cols = columns[torch.sort(greedy.order).values].flatten()
    once = compensate(w, hinv, removed_cols)
    kept = torch.ones(n, dtype=torch.bool)
    kept[removed_cols] = False
    torch.testing.assert_close(greedy.weight[:, kept], once[:, kept], rtol=1e-7, atol=1e-9)
    assert bool((greedy.weight[:, ~kept] == 0).all())
    # a unit's grouped error is the damped objective tr(dW (H + lam I) dW^T) of its removal with the update
    damped = gram + damping_strength(gram, damping) * torch.eye(n, dtype=torch.float64)
    errors = group_errors(w, hinv, columns, torch.ones(units, dtype=torch.bool))
    for u in range(units):
        delta = w - compensate(w, hinv, columns[u])
        delta[:, columns[u]] = w[:, columns[u]]
        torch.testing.assert_close(errors[u], torch.trace(delta @ damped @ delta.T), rtol=1e-7, atol=1e-9)
    # the first unit removed was the one of least error
    assert float(errors[greedy.order[0]]) == float(errors.min())


def test_dynamic_group_sizes_follow_the_official_rule() -> None:
    assert dynamic_group_sizes(2202) == [845, 166] + [64] * 18 + [39]
    assert dynamic_group_sizes(5000) == [1024, 866, 177] + [64] * 45 + [53]
    for count in (0, 1, 63, 64, 700, 5000):
        sizes = dynamic_group_sizes(count)
        assert sum(sizes) == count and all(1 <= s <= 1024 for s in sizes)
        assert all(s >= 64 for s in sizes[:-1])
    assert dynamic_group_sizes(10, smallest=3, largest=4) == [3, 3, 3, 1]
    assert dynamic_group_sizes(1300, smallest=8, largest=256) == [256] + [8] * 130 + [4]
    with pytest.raises(ValueError):
        dynamic_group_sizes(5, smallest=4, largest=3)


def test_a_dead_input_column_is_filled_and_the_inverse_stays_finite() -> None:
    w, x = _problem(0, out=3, n=5, samples=20)
    x[:, 2] = 0
    hinv = damped_inverse(x.T @ x, 0.01)
    assert bool(torch.isfinite(hinv).all())
    out = compensate(w, hinv, torch.tensor([2]))
    torch.testing.assert_close(out[:, [0, 1, 3, 4]], w[:, [0, 1, 3, 4]])  # a dead column is uncorrelated: nothing moves


# ----------------------------------------------------------------------------- the schedule


def test_the_log_schedule_rises_from_first_to_last() -> None:
    shape = ratio_shape(32, "log", 0.2)
    assert float(shape[0]) == pytest.approx(0.2) and float(shape[-1]) == pytest.approx(1.0)
    assert bool((shape[1:] > shape[:-1]).all())
    # the official code's r_l = 0.06 + 0.24 ln(1 + l) / ln(32) is 0.3 times this shape
    official = 0.06 + (0.3 - 0.06) * torch.log1p(torch.arange(32, dtype=torch.float64)) / torch.log(torch.tensor(32.0, dtype=torch.float64))
    torch.testing.assert_close(0.3 * shape, official)
    torch.testing.assert_close(ratio_shape(5, "linear", 0.5), torch.tensor([0.5, 0.625, 0.75, 0.875, 1.0], dtype=torch.float64))
    assert bool((ratio_shape(4, "uniform", 0.2) == 1).all()) and ratio_shape(1, "log", 0.2).tolist() == [1.0]


def _removed_counts(units: UnitSet, mask: torch.Tensor, kind: UnitKind) -> list[int]:
    return [int((~mask[units.slice(i, kind)]).sum()) for i in range(units.num_layers)]


def _within_one_unit_of_a_common_level(removed: list[int], sizes: list[int], shape: torch.Tensor) -> bool:
    """Whether some level ``c`` puts every group's removed count within one unit of ``c * shape_l * n_l``
    (groups at their minimum of one kept unit only bound ``c`` from below)."""
    low = max((r - 1) / (float(s) * n) for r, n, s in zip(removed, sizes, shape, strict=True))
    free = [(r + 1) / (float(s) * n) for r, n, s in zip(removed, sizes, shape, strict=True) if r < n - 1]
    return low <= min(free, default=float("inf"))


@pytest.mark.parametrize("keep", [0.35, 0.6, 0.85])
def test_pruning_grows_with_depth_as_the_schedule_says_and_the_budget_is_met_exactly(keep: float) -> None:
    model = tiny_model("qwen2", num_hidden_layers=6, intermediate_size=48)
    result = pruneframe.prune(model, "slimgpt", keep, calibration=CALIB, config=FAST, progress=False)
    units, mask = result.units, result.mask
    made = PluginHost.create().method("slimgpt", FAST)
    check_mask(mask, units, result.report.budget_prunable_params, made.minimum(units), None, "none", None)
    shape = ratio_shape(units.num_layers, "log", SlimGPTConfig().first_to_last)
    for kind in (UnitKind.FFN, UnitKind.KV):
        removed = _removed_counts(units, mask, kind)
        sizes = [units.slice(i, kind).stop - units.slice(i, kind).start for i in range(units.num_layers)]
        assert removed == sorted(removed), f"{kind.name}: removed per layer {removed} does not grow with depth"
        assert _within_one_unit_of_a_common_level(removed, sizes, shape), f"{kind.name}: {removed} off the schedule {shape.tolist()}"
    # the counts are the schedule's own projection's: the OBS pass only chose which units go
    planned = PruneSession(model, "slimgpt", keep, FAST).project(schedule_scores(units, shape))
    for kind in (UnitKind.FFN, UnitKind.KV):
        assert _removed_counts(units, planned, kind) == _removed_counts(units, mask, kind)
    stats = result.report.method_stats["slimgpt"]
    assert stats["compensation"] == "from the scoring pass" and stats["removed_ffn_channels"] == _removed_counts(units, mask, UnitKind.FFN)


@pytest.mark.parametrize("keep", [0.4, 0.5, 0.65])
def test_with_equal_slots_in_every_layer_the_final_mask_is_still_the_obs_passs(keep: float) -> None:
    """A uniform schedule gives every layer the same slots; the projector must still keep what the OBS pass kept."""
    model = tiny_model("llama-gqa", num_hidden_layers=4)
    result = pruneframe.prune(model, "slimgpt", keep, calibration=CALIB, config={**FAST, "schedule": "uniform"}, progress=False)
    assert result.report.method_stats["slimgpt"]["compensation"] == "from the scoring pass"


@pytest.mark.parametrize("family", FAMILIES)
def test_passes_the_plugin_checks(family: str, tmp_path: Path) -> None:
    check_method("slimgpt", family, tmp_path, config=FAST)


# ----------------------------------------------------------------------------- compensation and the fold


def _last_hidden(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state


def test_the_compensated_model_is_closer_to_dense_on_the_calibration_tokens_than_the_bare_mask() -> None:
    model = tiny_model("llama-gqa")
    result = pruneframe.prune(model, "slimgpt", 0.6, calibration=CALIB, config=FAST, progress=False)
    ids = CALIB.reshape(-1)[: 4 * 16].view(4, 16)
    dense = _last_hidden(model, ids)
    with gated(model, result.units, result.mask):
        bare = (_last_hidden(model, ids) - dense).square().sum()
    compensated = (_last_hidden(result.model, ids) - dense).square().sum()
    assert float(compensated) < float(bare)


@pytest.mark.parametrize("family", ["llama-gqa", "gemma3"])
def test_a_mask_from_precomputed_scores_gets_the_same_compensation_recomputed(family: str) -> None:
    model = tiny_model(family)
    first = pruneframe.prune(model, "slimgpt", 0.6, calibration=CALIB, config=FAST, progress=False)
    again = pruneframe.prune(model, "slimgpt", 0.6, calibration=CALIB, config=FAST, progress=False, scores=first.scores)
    assert torch.equal(again.mask, first.mask)
    assert again.report.method_stats["slimgpt"]["compensation"] == "recomputed for the mask"
    for a, b in zip(first.recalibration.o_proj + first.recalibration.down_proj, again.recalibration.o_proj + again.recalibration.down_proj, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_keeping_every_unit_changes_no_weight() -> None:
    model = tiny_model("qwen2")
    result = pruneframe.prune(model, "slimgpt", 1.0, calibration=CALIB, config=FAST, progress=False)
    assert bool(result.mask.all())
    dense = model.state_dict()
    for name, value in result.model.state_dict().items():
        assert torch.equal(value, dense[name]), name


def test_uniform_widths_fold_reload_exactly_and_load_as_the_family(tmp_path: Path) -> None:
    model = tiny_model("llama-gqa")
    units = discover(model)
    # one KV group of two and 24 FFN channels of 40 in every layer, at the same ratio per layer
    channel, group = int(units.cost[units.slice(0, UnitKind.FFN)][0]), int(units.cost[units.slice(0, UnitKind.KV)][0])
    budget = units.nonprunable_params + units.num_layers * (24 * channel + group)
    config = {**FAST, "schedule": "uniform", "scope": "uniform"}
    result = pruneframe.prune(model, "slimgpt", budget, calibration=CALIB, config=config, budget_kind="params", progress=False)
    assert [w["ffn_channels"] for w in units.widths(result.mask)] == [24] * units.num_layers
    assert [w["kv_groups"] for w in units.widths(result.mask)] == [1] * units.num_layers
    ids = tokens(2, 12, seed=7)
    with torch.no_grad(), gated(model, result.units, result.mask, result.recalibration):
        reference = model(ids).logits
    with torch.no_grad():
        folded = result.model(ids).logits
    torch.testing.assert_close(folded, reference, rtol=0, atol=1e-5)
    saved = result.save(tmp_path / "ckpt")
    plain = AutoModelForCausalLM.from_pretrained(saved, trust_remote_code=False).eval()
    assert type(plain) is type(model)
    reloaded, _ = load_pruned(saved)
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, folded, rtol=0, atol=1e-5)
        torch.testing.assert_close(reloaded(ids).logits, folded, rtol=0, atol=1e-5)


def test_streaming_one_layer_at_a_time_gives_the_same_prune() -> None:
    model = tiny_model("llama-gqa")
    whole = pruneframe.prune(model, "slimgpt", 0.6, calibration=CALIB, config=FAST, progress=False)
    streamed = pruneframe.prune(model, "slimgpt", 0.6, calibration=CALIB, config={**FAST, "offload": "cpu", "compute_device": "cpu"}, progress=False)
    assert torch.equal(whole.mask, streamed.mask)
    for a, b in zip(whole.recalibration.down_proj, streamed.recalibration.down_proj, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- registration and settings


def test_slimgpt_is_listed_and_its_settings_are_typed(capsys: pytest.CaptureFixture[str]) -> None:
    methods = PluginHost.create().methods()
    assert methods["slimgpt"].__module__ == "pruneframe_baselines.slimgpt" and methods["slimgpt"].summary
    assert main(["plugins"]) == 0 and "slimgpt" in capsys.readouterr().out
    with pytest.raises(ValueError, match="ffn_group_max"):
        SlimGPTConfig(ffn_group_min=64, ffn_group_max=8)
    with pytest.raises(ValueError, match="extra"):
        SlimGPTConfig(percdamp=0.01)
    with pytest.raises(ValueError):
        SlimGPTConfig(damping=0)
