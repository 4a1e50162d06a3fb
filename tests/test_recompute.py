"""Activation recomputation: the same gradients, fewer saved activations, the model restored."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_model, tokens

from pruneframe.architectures import adapter_for
from pruneframe.pipeline.host import PluginHost
from pruneframe.toolkit.recompute import recompute_decoder_layers
from pruneframe.testing import FAMILIES


def _loss_and_saved_bytes(model: torch.nn.Module, ids: torch.Tensor, recompute: bool) -> tuple[torch.Tensor, int, list]:
    """Loss, the bytes autograd saved for the backward pass during the forward, and the weight gradients."""
    saved = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    weights = [p for p in model.parameters() if p.dim() == 2]
    with recompute_decoder_layers(model, recompute), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    grads = torch.autograd.grad(loss, weights)
    return loss.detach(), saved[0], grads


@pytest.mark.parametrize("family", FAMILIES)
def test_recomputed_backward_gives_the_same_gradients_and_saves_less(family: str) -> None:
    model = tiny_model(family, num_hidden_layers=3)
    ids = tokens(2, 24, seed=1)
    loss, plain_bytes, plain = _loss_and_saved_bytes(model, ids, recompute=False)
    loss_r, recomputed_bytes, recomputed = _loss_and_saved_bytes(model, ids, recompute=True)
    assert torch.equal(loss, loss_r)
    for a, b in zip(plain, recomputed):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert recomputed_bytes < plain_bytes / 2  # only each layer's inputs (and the head's) are kept
    assert all("forward" not in vars(layer) for layer in adapter_for(model).decoder_layers(model))


def test_disabled_recompute_changes_nothing_and_no_grad_passes_run_plain() -> None:
    model = tiny_model("llama-gqa", num_hidden_layers=2)
    layers = adapter_for(model).decoder_layers(model)
    with recompute_decoder_layers(model, enabled=False):
        assert all("forward" not in vars(layer) for layer in layers)
    ids = tokens(1, 12)
    with torch.no_grad():
        want = model(ids).logits
        with recompute_decoder_layers(model):
            assert all("forward" in vars(layer) for layer in layers)
            got = model(ids).logits
    assert torch.equal(want, got)


@pytest.mark.parametrize("family", FAMILIES)
def test_llm_pruner_scores_do_not_depend_on_recompute(family: str) -> None:
    from pruneframe.testing import check_scores

    config = {"num_samples": 4, "seq_len": 16}
    on = check_scores("llm-pruner", family, {**config, "recompute": True})
    off = check_scores("llm-pruner", family, {**config, "recompute": False})
    torch.testing.assert_close(on, off, rtol=1e-5, atol=1e-6 * float(off.abs().max()))
    assert PluginHost.create().method("llm-pruner").config.recompute is True


@pytest.mark.parametrize("family", ["llama-gqa", "gemma3"])
def test_grasprune_with_recompute_learns_the_same_scores(family: str) -> None:
    from pruneframe.testing import check_scores

    config = {"num_sequences": 4, "seq_len": 16, "epochs": 2, "rescale_sequences": 2}
    on = check_scores("grasprune", family, {**config, "recompute": True})
    off = check_scores("grasprune", family, {**config, "recompute": False})
    torch.testing.assert_close(on, off, rtol=1e-5, atol=1e-6)
