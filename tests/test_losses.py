"""The memory-lean LM loss equals the plain one, in value and in gradient."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_model, tokens

from pruneframe.toolkit.losses import linear_cross_entropy
from pruneframe.testing import FAMILIES


@pytest.fixture(params=[None, 4], ids=["one-matmul", "vocab-blocks"])
def vocab_block(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run a test with the logits in one matmul and in vocabulary slices of 4 rows (the last one short)."""
    import pruneframe.toolkit.losses

    if request.param is not None:
        monkeypatch.setattr(pruneframe.toolkit.losses, "_VOCAB_BLOCK", request.param)


def test_logits_in_vocabulary_blocks_equal_one_matmul() -> None:
    from pruneframe.toolkit.losses import _VOCAB_BLOCK, _logits

    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(9, 16, generator=g)
    weight = torch.randn(2 * _VOCAB_BLOCK + 5, 16, generator=g)
    torch.testing.assert_close(_logits(hidden, weight), hidden @ weight.T, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(_logits(hidden[:3], weight[:7]), hidden[:3] @ weight[:7].T, atol=0, rtol=0)


@pytest.mark.usefixtures("vocab_block")
@pytest.mark.parametrize("chunk", [None, 1, 3, 7, 64])
def test_linear_cross_entropy_matches_cross_entropy(chunk: int | None) -> None:
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(13, 8, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(21, 8, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 21, (13,), generator=g)
    want = torch.nn.functional.cross_entropy(hidden @ weight.T, targets)
    (want_grad,) = torch.autograd.grad(3.0 * want, hidden)
    got = linear_cross_entropy(hidden, weight, targets, chunk_tokens=chunk)
    (got_grad,) = torch.autograd.grad(3.0 * got, hidden)
    torch.testing.assert_close(got.to(want.dtype), want, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got_grad, want_grad, atol=1e-10, rtol=1e-10)


def test_linear_cross_entropy_rejects_trainable_weight_and_bad_shapes() -> None:
    with pytest.raises(ValueError, match="freeze"):
        linear_cross_entropy(torch.randn(3, 4), torch.randn(5, 4, requires_grad=True), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="expected hidden"):
        linear_cross_entropy(torch.randn(3, 4), torch.randn(5, 6), torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("family", FAMILIES)
def test_causal_lm_loss_on_frozen_model_matches_hf_loss_and_gate_gradient(family: str) -> None:
    from pruneframe.architectures import discover
    from pruneframe.toolkit.gates import UnitGates
    from pruneframe.toolkit.losses import causal_lm_loss
    from pruneframe_grasprune.training import frozen

    model = tiny_model(family)
    units = discover(model)
    ids = tokens(1, 16)
    scores = torch.linspace(-1, 1, len(units)).requires_grad_(True)
    results = []
    with frozen(model), UnitGates(model, units) as gates:
        for lean in (False, True):
            gates.set(torch.sigmoid(scores))
            if lean:
                loss = causal_lm_loss(model, ids)
            else:
                loss = model(input_ids=ids, labels=ids).loss
            (grad,) = torch.autograd.grad(loss, scores)
            results.append((loss.detach(), grad))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[1][1], results[0][1], atol=1e-6, rtol=1e-4)


@pytest.mark.usefixtures("vocab_block")
@pytest.mark.parametrize("chunk", [None, 1, 4, 64])
def test_linear_kl_divergence_matches_kl_div(chunk: int | None) -> None:
    from pruneframe.toolkit.losses import linear_kl_divergence

    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(11, 6, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(11, 6, generator=g, dtype=torch.float64)
    weight = 2 * torch.randn(17, 6, generator=g, dtype=torch.float64)
    log_s = torch.log_softmax(hidden @ weight.T, dim=-1)
    log_t = torch.log_softmax(teacher @ weight.T, dim=-1)
    want = torch.nn.functional.kl_div(log_s, log_t, log_target=True, reduction="batchmean")
    (want_grad,) = torch.autograd.grad(2.0 * want, hidden)
    got = linear_kl_divergence(hidden, teacher, weight, chunk_tokens=chunk)
    (got_grad,) = torch.autograd.grad(2.0 * got, hidden)
    torch.testing.assert_close(got.to(want.dtype), want, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(got_grad, want_grad, atol=1e-10, rtol=1e-10)
    assert float(linear_kl_divergence(teacher, teacher, weight)) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="do not match"):
        linear_kl_divergence(hidden, teacher[:3], weight)


def test_causal_lm_loss_leaves_soft_capped_logits_to_the_model() -> None:
    from pruneframe.toolkit.losses import causal_lm_loss, lean_head

    model = tiny_model("gemma3", final_logit_softcapping=5.0)
    for p in model.parameters():
        p.requires_grad_(False)
    ids = tokens(2, 12)
    assert lean_head(model) is None  # the lean path would skip the tanh cap
    want = model(input_ids=ids, labels=ids).loss
    torch.testing.assert_close(causal_lm_loss(model, ids), want)
    model.config.final_logit_softcapping = None
    assert lean_head(model) is model.get_output_embeddings()
    torch.testing.assert_close(causal_lm_loss(model, ids), model(input_ids=ids, labels=ids).loss, atol=1e-5, rtol=1e-5)
