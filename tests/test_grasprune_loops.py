"""GRASPrune's loops resume from saved state and shard across torch.distributed ranks."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
import pytest
import torch
from tiny import on_ranks, tiny_model, tokens

import pruneframe
import pruneframe_grasprune.training as training
from pruneframe.toolkit.distributed import all_reduce_sum_, shard_rows, shard_weight, world
from pruneframe.toolkit.resume import StaleCheckpointError

FAST = dict(num_sequences=4, seq_len=12, epochs=2, rescale_sequences=2, lr=0.2)
GATE_STEPS = FAST["epochs"] * FAST["num_sequences"]


def _prune(config: dict, **kwargs) -> pruneframe.PruneResult:
    return pruneframe.prune(tiny_model(), "grasprune", 0.5, calibration=tokens(6, 12), config={**FAST, **config}, progress=False, **kwargs)


def _same(a: pruneframe.PruneResult, b: pruneframe.PruneResult) -> None:
    assert torch.equal(a.scores, b.scores)
    assert torch.equal(a.mask, b.mask)
    assert torch.equal(a.recalibration.scales, b.recalibration.scales)
    for stage in ("gates", "rescale"):
        sa, sb = a.report.method_stats[stage], b.report.method_stats[stage]
        assert sa["steps"] == sb["steps"] and sa["last_loss"] == sb["last_loss"]
    assert a.report.method_stats["gates"]["kept_cost_per_step"] == b.report.method_stats["gates"]["kept_cost_per_step"]


class _Interrupt(Exception):
    pass


def _count_losses(monkeypatch, stop_at: int | None = None) -> list[int]:
    """Count calls of the training loss; raise on call number ``stop_at`` (1-based)."""
    calls: list[int] = []
    original = training.causal_lm_loss

    def loss(*args, **kwargs):
        calls.append(1)
        if stop_at is not None and len(calls) == stop_at:
            raise _Interrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "causal_lm_loss", loss)
    return calls


@pytest.mark.parametrize(
    ("stop_at", "extra"),
    [(GATE_STEPS // 2 + 1, {}), (GATE_STEPS + 2, {"rescale_outputs": True}), (3, {"optimizer": "block-adam"})],
    ids=["in-gates", "in-scales", "block-adam"],
)
def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, stop_at: int, extra: dict) -> None:
    reference = _prune(extra)
    config = {**extra, "checkpoint_dir": str(tmp_path), "checkpoint_every": 1}
    with monkeypatch.context() as m:
        _count_losses(m, stop_at=stop_at)
        with pytest.raises(_Interrupt):
            _prune(config)
    calls = _count_losses(monkeypatch)
    resumed = _prune(config)
    # only the steps after the last saved one run again
    assert len(calls) == GATE_STEPS + FAST["rescale_sequences"] - (stop_at - 1)
    _same(resumed, reference)


def test_finished_run_reruns_from_its_checkpoints_without_training(tmp_path, monkeypatch) -> None:
    config = {"checkpoint_dir": str(tmp_path), "checkpoint_every": 3}
    first = _prune(config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grasprune-gates.pt", "grasprune-scales.pt"]
    calls = _count_losses(monkeypatch)
    again = _prune(config)
    assert calls == []
    _same(again, first)


def test_checkpoint_of_another_run_is_refused(tmp_path) -> None:
    _prune({"checkpoint_dir": str(tmp_path)})
    with pytest.raises(StaleCheckpointError, match=r"grasprune-gates\.pt.*different run.*config"):
        _prune({"checkpoint_dir": str(tmp_path), "lr": 0.1})
    with pytest.raises(StaleCheckpointError, match=r"different run.*windows"):
        pruneframe.prune(tiny_model(), "grasprune", 0.5, calibration=tokens(6, 12, seed=5), config={**FAST, "checkpoint_dir": str(tmp_path)}, progress=False)


def _grasprune_on_rank(config: dict) -> dict:
    """GRASPrune on the tiny model in this rank, with the rows each loss call saw."""
    rows: list[int] = []
    original = training.causal_lm_loss

    def loss(model, input_ids, *args, **kwargs):
        rows.append(input_ids.shape[0])
        return original(model, input_ids, *args, **kwargs)

    training.causal_lm_loss = loss
    result = _prune(config)
    stats = result.report.method_stats
    return {
        "scores": result.scores,
        "mask": result.mask,
        "scales": result.recalibration.scales,
        "kept": stats["gates"]["kept_cost_per_step"],
        "budget": result.report.budget_prunable_params,
        "losses": [stats["gates"]["first_loss"], stats["gates"]["last_loss"]],
        "rows": rows,
    }


@pytest.mark.ranks
@pytest.mark.parametrize("batch_size", [1, 2])
def test_two_ranks_compute_the_single_process_result(tmp_path, batch_size: int) -> None:
    config = {"batch_size": batch_size}
    single = _prune(config)
    ranks = on_ranks(2, tmp_path, _grasprune_on_rank, config)
    for got in ranks:
        # every rank holds the same gates; every mask meets the budget
        assert torch.equal(got["scores"], ranks[0]["scores"]) and torch.equal(got["mask"], ranks[0]["mask"])
        assert all(cost <= got["budget"] for cost in got["kept"])
    # each rank ran the loss on its round-robin share of every batch only
    steps = GATE_STEPS // batch_size + FAST["rescale_sequences"] // batch_size
    assert [sum(r["rows"]) for r in ranks] == ([steps, 0] if batch_size == 1 else [steps, steps])
    assert all(n == 1 for r in ranks for n in r["rows"])
    got = ranks[0]
    assert torch.equal(got["mask"], single.mask)
    assert got["kept"] == single.report.method_stats["gates"]["kept_cost_per_step"]
    if batch_size == 1:
        # one row per step: rank 0 computes it all, rank 1 contributes zeros; identical to one process
        assert torch.equal(got["scores"], single.scores) and torch.equal(got["scales"], single.recalibration.scales)
    else:
        # each rank takes one row; the global mean is summed across ranks (another rounding order)
        torch.testing.assert_close(got["scores"], single.scores, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(got["scales"], single.recalibration.scales, rtol=1e-4, atol=1e-6)
    stats = single.report.method_stats["gates"]
    torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor([stats["first_loss"], stats["last_loss"]]), rtol=1e-5, atol=1e-6)


@settings(max_examples=100, deadline=None)
@given(n=st.integers(0, 40), world_size=st.integers(1, 8))
def test_shards_partition_the_rows_and_weights_sum_to_one(n: int, world_size: int) -> None:
    rows = torch.arange(n)
    shards = [shard_rows(rows, r, world_size) for r in range(world_size)]
    assert sorted(torch.cat(shards).tolist()) == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    if n:
        assert sum(shard_weight(len(s), n) for s in shards) == pytest.approx(1.0)


def test_single_process_world() -> None:
    assert world() == (0, 1)
    t = torch.ones(3)
    all_reduce_sum_([t])  # nothing to sum with
    assert torch.equal(t, torch.ones(3))
    with pytest.raises(ValueError, match="rank 2 outside world size 2"):
        shard_rows(torch.arange(4), 2, 2)
