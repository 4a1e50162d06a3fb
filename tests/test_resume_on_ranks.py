"""GRASPrune interrupted under two torch.distributed ranks resumes, on two ranks, to the uninterrupted result."""

from __future__ import annotations

import pytest
import torch
from tiny import on_ranks, tiny_model, tokens

import pruneframe
import pruneframe_grasprune.training as training

FAST = dict(num_sequences=4, seq_len=12, epochs=2, rescale_sequences=2, lr=0.2, batch_size=2)
#: Optimizer steps: each rank takes one row of every batch of two, so it calls the loss once per step.
STEPS = FAST["epochs"] * FAST["num_sequences"] // 2 + FAST["rescale_sequences"] // 2


class Interrupt(Exception):
    """Stands for a crash (or a pre-empted job) at one training step, on every rank at once."""


def grasprune_interrupted_at(config: dict, stop_at: int | None) -> dict:
    """GRASPrune on this rank, raising :class:`Interrupt` on loss call ``stop_at`` (1-based); the result or the stop."""
    calls: list[int] = []
    original = training.causal_lm_loss

    def loss(*args, **kwargs):
        calls.append(1)
        if len(calls) == stop_at:
            raise Interrupt
        return original(*args, **kwargs)

    training.causal_lm_loss = loss
    try:
        result = pruneframe.prune(tiny_model(), "grasprune", 0.5, calibration=tokens(6, 12), config={**FAST, **config}, progress=False)
    except Interrupt:
        return {"stopped_at": len(calls)}
    finally:
        training.causal_lm_loss = original
    return {"scores": result.scores, "mask": result.mask, "scales": result.recalibration.scales, "calls": len(calls)}


def reference_stop_and_resume(state_dir: str, stop_at: int) -> list[dict]:
    """On this rank: an uninterrupted run, a run stopped at loss call ``stop_at``, and its resumption."""
    state = {"checkpoint_dir": state_dir, "checkpoint_every": 1}
    return [grasprune_interrupted_at({}, None), grasprune_interrupted_at(state, stop_at), grasprune_interrupted_at(state, None)]


@pytest.mark.ranks
def test_interrupted_two_rank_run_resumes_to_the_uninterrupted_result(tmp_path) -> None:
    stop_at = 3
    ranks = on_ranks(2, tmp_path, reference_stop_and_resume, str(tmp_path / "state"), stop_at)
    for reference, stopped, resumed in ranks:
        assert stopped == {"stopped_at": stop_at} and reference["calls"] == STEPS
        assert resumed["calls"] == STEPS - (stop_at - 1)  # only the steps after the last saved one ran again
        assert torch.equal(resumed["scores"], reference["scores"]) and torch.equal(resumed["mask"], reference["mask"])
        assert torch.equal(resumed["scales"], reference["scales"])
    assert torch.equal(ranks[0][2]["scores"], ranks[1][2]["scores"])
