"""The recovery stage: shape kept exactly, LoRA merged exactly, distillation healing toward the teacher,
the shared token stream, the top-k KL, resuming, and bad input named."""

from __future__ import annotations

import math

import pytest
import torch

import pruneframe
from pruneframe.recovery import (
    RecoveryDataError,
    TeacherTargets,
    compute_teacher,
    make_stream,
    recover,
    top_k_kl,
)
from pruneframe.recovery.adapters import LoraSettings, merge_lora, with_lora
from pruneframe.recovery.loop import lr_factor
from pruneframe.toolkit.resume import StaleCheckpointError
from pruneframe.testing import tiny_model, tokens


def _pruned(seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A tiny dense model and its magnitude-pruned copy at keep 0.5."""
    dense = tiny_model("llama-gqa", seed=seed)
    pruned = pruneframe.prune(dense, "magnitude", 0.5, progress=False).model
    return dense, pruned


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _text(n: int = 4096, seed: int = 1) -> torch.Tensor:
    """Learnable token ids: mostly ``next = current + 7 (mod 97)``, with a seeded 10% of random tokens."""
    ids = (torch.arange(n) * 7) % 97
    noise = tokens(1, n, seed=seed).flatten()
    keep = torch.rand(n, generator=torch.Generator().manual_seed(seed)) < 0.9
    return torch.where(keep, ids, noise)


def test_stream_is_the_same_for_every_model_and_fingerprinted() -> None:
    ids = _text()
    a, b = make_stream(ids, 32, 640, seed=3), make_stream(ids.clone(), 32, 640, seed=3)
    assert a.sequences.shape == (20, 32)
    assert torch.equal(a.sequences, b.sequences) and a.fingerprint == b.fingerprint
    assert make_stream(ids, 32, 640, seed=4).fingerprint != a.fingerprint
    # every sequence is a whole, aligned window of the text
    windows = {tuple(w.tolist()) for w in ids[: (len(ids) // 32) * 32].view(-1, 32)}
    assert all(tuple(row.tolist()) in windows for row in a.sequences)


def test_token_budget_larger_than_the_text_is_refused_by_name() -> None:
    with pytest.raises(RecoveryDataError, match=r"recovery tokens 8,192 .* exceeds my text, which holds 4,096 tokens"):
        make_stream(_text(4096), 32, 8192, seed=0, name="my text")
    with pytest.raises(RecoveryDataError, match="less than one sequence"):
        make_stream(_text(), 32, 16, seed=0)


def test_top_k_kl_is_the_full_kl_when_k_covers_the_vocabulary_and_a_lower_bound_otherwise() -> None:
    torch.manual_seed(0)
    teacher, student = torch.randn(2, 5, 11) * 2, torch.randn(2, 5, 11) * 2
    full = torch.nn.functional.kl_div(student.log_softmax(-1), teacher.log_softmax(-1), log_target=True, reduction="none").sum(-1).mean()
    lse = teacher.logsumexp(-1)
    top = teacher.topk(11, dim=-1)
    assert torch.allclose(top_k_kl(student, top.values, top.indices, lse), full, atol=1e-5)
    top3 = teacher.topk(3, dim=-1)
    partial = top_k_kl(student, top3.values, top3.indices, lse)
    assert 0 <= float(partial) <= float(full) + 1e-6
    assert float(top_k_kl(teacher, top3.values, top3.indices, lse)) == pytest.approx(0.0, abs=1e-5)


def test_lr_schedule_warms_up_then_decays_to_zero() -> None:
    factors = [lr_factor(s, 20, 0.1, "cosine") for s in range(20)]
    assert factors[0] < factors[1] < factors[2] == 1.0
    assert factors[-1] < 0.05 and all(a >= b for a, b in zip(factors[2:], factors[3:]))
    assert [lr_factor(s, 10, 0.0, "constant") for s in range(10)] == [1.0] * 10


def test_lora_merge_gives_the_adapted_logits_and_the_exact_parameter_count() -> None:
    _, pruned = _pruned()
    count = _params(pruned)
    ids = tokens(2, 16)
    with torch.no_grad():
        unadapted = pruned(input_ids=ids).logits
    wrapped = with_lora(pruned, LoraSettings(rank=4))
    with torch.no_grad():  # non-zero adapters, so the merge has something to add
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    with torch.no_grad():
        adapted = wrapped(input_ids=ids).logits
    merged = merge_lora(wrapped)
    with torch.no_grad():
        plain = merged(input_ids=ids).logits
    assert _params(merged) == count
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert (adapted - plain).abs().max().item() <= 1e-5
    assert (adapted - unadapted).abs().max() > 1e-3  # the adapters did change the output


def _objective(model: torch.nn.Module, name: str, stream, teacher) -> float:
    """The recovery's own loss over the whole stream: next-token loss (lora) or top-k KL to the teacher (distill)."""
    with torch.no_grad():
        if name == "lora":
            return float(model(input_ids=stream.sequences, labels=stream.sequences).loss)
        logits = model(input_ids=stream.sequences).logits
        return float(top_k_kl(logits, teacher.values, teacher.indices, teacher.lse))


@pytest.mark.parametrize(
    "name, config",
    [
        ("lora", {"tokens": 512, "seq_len": 32, "batch_size": 4, "lr": 1e-2, "lora": {"rank": 4}}),
        ("distill", {"tokens": 512, "seq_len": 32, "batch_size": 4, "lr": 3e-3}),
        ("distill", {"tokens": 512, "seq_len": 32, "batch_size": 4, "adapter": "lora", "lr": 1e-2, "hidden_weight": 0.5}),
    ],
)
def test_recovery_keeps_the_shape_and_lowers_its_loss(name: str, config: dict) -> None:
    dense, pruned = _pruned()
    stream = make_stream(_text(), 32, 512, seed=0)
    teacher = compute_teacher(dense, stream, top_k=64, hidden=True, progress=False)
    widths = {n: tuple(p.shape) for n, p in pruned.named_parameters()}
    count = _params(pruned)
    before = {n: p.detach().clone() for n, p in pruned.named_parameters()}
    start = _objective(pruned, name, stream, teacher)
    result = recover(pruned, name, stream, config=config, teacher=teacher, progress=False)
    assert {n: tuple(p.shape) for n, p in result.model.named_parameters()} == widths
    assert _params(result.model) == count == result.record.params
    assert result.record.tokens == 512 and result.record.steps == 4 and result.record.sequences == 16
    assert result.record.data["stream_sha256"] == stream.fingerprint
    assert _objective(result.model, name, stream, teacher) < start
    changed = [n for n, p in result.model.named_parameters() if not torch.equal(p, before[n])]
    assert changed, "recovery changed no weight"
    assert not any("embed_tokens" in n for n in changed)  # embeddings stay frozen by default
    assert not any(p.requires_grad for p in result.model.parameters())


def test_distillation_moves_the_student_toward_the_teacher() -> None:
    dense, pruned = _pruned()
    held_out = make_stream(_text(seed=9), 32, 256, seed=0)
    teacher = compute_teacher(dense, held_out, top_k=97, progress=False)

    def kl(model: torch.nn.Module) -> float:
        with torch.no_grad():
            logits = model(input_ids=held_out.sequences).logits
        return float(top_k_kl(logits, teacher.values, teacher.indices, teacher.lse))

    start = kl(pruned)
    healed = recover(pruned, "distill", _text(8192), config={"tokens": 4096, "seq_len": 32, "batch_size": 8, "lr": 3e-3}, teacher=dense, progress=False).model
    assert kl(healed) < 0.8 * start


def test_none_changes_nothing() -> None:
    dense, pruned = _pruned()
    state = {n: p.clone() for n, p in pruned.state_dict().items()}
    result = recover(pruned, "none", None, progress=False)
    assert result.record.tokens == 0 and result.record.steps == 0
    assert all(torch.equal(state[n], p) for n, p in result.model.state_dict().items())


def test_bf16_model_trains_through_fp32_masters() -> None:
    dense, pruned = _pruned()
    dense, pruned = dense.to(torch.bfloat16), pruned.to(torch.bfloat16)
    # a learning rate so small that a bf16 update would round to nothing; the fp32 master still accumulates it
    result = recover(pruned, "distill", _text(), config={"tokens": 512, "seq_len": 32, "lr": 3e-3}, teacher=dense, progress=False)
    assert all(p.dtype == torch.bfloat16 for p in result.model.parameters())
    assert math.isfinite(result.record.loss_last)


def test_teacher_outputs_must_match_the_stream() -> None:
    dense, pruned = _pruned()
    stream = make_stream(_text(), 32, 512, seed=0)
    other = make_stream(_text(), 32, 512, seed=1)
    targets = compute_teacher(dense, other, top_k=8, progress=False)
    with pytest.raises(ValueError, match="computed on another recovery stream"):
        recover(pruned, "distill", stream, config={"top_k": 8}, teacher=targets, progress=False)
    with pytest.raises(ValueError, match="needs a teacher"):
        recover(pruned, "distill", stream, progress=False)


def test_teacher_targets_round_trip(tmp_path) -> None:
    dense, _ = _pruned()
    stream = make_stream(_text(), 32, 256, seed=0)
    targets = compute_teacher(dense, stream, top_k=5, hidden=True, progress=False)
    loaded = TeacherTargets.load(targets.save(tmp_path / "t.pt"))
    assert torch.equal(loaded.values, targets.values) and torch.equal(loaded.hidden, targets.hidden)
    assert loaded.stamp == targets.stamp and loaded.values.shape == (8, 32, 5)


def test_unknown_lora_target_is_named() -> None:
    _, pruned = _pruned()
    with pytest.raises(ValueError, match=r"target_modules \['qkv'\] are not linear layers"):
        recover(pruned, "lora", _text(), config={"lora": {"target_modules": ["qkv"]}}, progress=False)


def test_unknown_recovery_suggests_names() -> None:
    _, pruned = _pruned()
    with pytest.raises(KeyError, match="did you mean 'distill'"):
        recover(pruned, "distil", _text(), progress=False)


def test_resumes_after_the_last_saved_step(tmp_path, monkeypatch) -> None:
    dense, _ = _pruned()
    config = {"tokens": 1024, "seq_len": 32, "batch_size": 4, "lr": 3e-3, "checkpoint_every": 3}
    whole = recover(_pruned()[1], "distill", _text(), config=config, teacher=dense, progress=False)
    import pruneframe.recovery.loop as loop

    original, calls = loop.sharded_backward, {"n": 0}

    def interrupted_at_step_7(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    resumable = {**config, "checkpoint_dir": str(tmp_path)}
    model = _pruned()[1]
    monkeypatch.setattr(loop, "sharded_backward", interrupted_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        recover(model, "distill", _text(), config=resumable, teacher=dense, progress=False)
    monkeypatch.setattr(loop, "sharded_backward", original)
    resumed = recover(model, "distill", _text(), config=resumable, teacher=dense, progress=False)
    assert calls["n"] == 7 and resumed.record.steps == 8
    assert resumed.record.loss_last == pytest.approx(whole.record.loss_last, rel=1e-5)
    for (name, a), (_, b) in zip(resumed.model.named_parameters(), whole.model.named_parameters()):
        assert torch.allclose(a, b, atol=1e-6), name
    with pytest.raises(StaleCheckpointError, match="different run"):
        recover(_pruned()[1], "distill", _text(), config={**resumable, "lr": 1e-3}, teacher=dense, progress=False)


def _recover_on_this_rank(seed: int) -> dict:
    """Distillation of the same pruned model on this rank; the healed weights."""
    dense, pruned = _pruned(seed)
    result = recover(pruned, "distill", _text(), config={"tokens": 512, "seq_len": 32, "batch_size": 4, "lr": 3e-3}, teacher=dense, progress=False)
    return {n: p.detach().clone() for n, p in result.model.named_parameters()} | {"_loss": result.record.loss_last}


@pytest.mark.ranks
def test_two_ranks_train_to_the_single_process_weights(tmp_path) -> None:
    from tiny import on_ranks

    single = _recover_on_this_rank(0)
    ranks = on_ranks(2, tmp_path, _recover_on_this_rank, 0)
    for weights in ranks:
        assert weights["_loss"] == pytest.approx(single["_loss"], rel=1e-4)
        for name, value in single.items():
            if name != "_loss":
                assert torch.allclose(weights[name], value, atol=1e-5), name
    assert all(torch.equal(ranks[0][n], ranks[1][n]) for n in single if n != "_loss")
