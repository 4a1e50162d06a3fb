"""Hidden channels on every family's tiny model: sites, costs against real counts, fold, reload, semantics."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from pruneframe.architectures import adapter_for
from pruneframe.architectures.base import count_parameters
from pruneframe.architectures.hidden import fold_hidden, hidden_cost_model, hidden_refusal, hidden_sites, norm_correction, norm_names
from pruneframe.testing import FAMILIES, tiny_model

KEPT = 24  # of the tiny models' 48 channels; a multiple of every tiny family's head count, as transformers' configs require


def _keep(d: int, kept: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    keep = torch.zeros(d, dtype=torch.bool)
    keep[torch.randperm(d, generator=g)[:kept]] = True
    return keep


def _refused(family: str) -> bool:
    model = tiny_model(family)
    return hidden_refusal(adapter_for(model), model) is not None


#: Families whose hidden dimension folds; the others are refused by name (test_a_refused_family_says_why).
FOLDABLE = [f for f in FAMILIES if not _refused(f)]


def _foldable(family: str) -> tuple[torch.nn.Module, object]:
    model = tiny_model(family)
    return model, adapter_for(model)


@pytest.mark.parametrize("family", FOLDABLE)
def test_the_cost_model_counts_the_folded_model_exactly(family: str) -> None:
    model, adapter = _foldable(family)
    costs = hidden_cost_model(adapter, model)
    assert costs.dense_total == count_parameters(model)
    fold_hidden(adapter, model, _keep(48, KEPT))
    assert count_parameters(model) == costs.total(KEPT, torch.ones(len(costs), dtype=torch.bool))
    assert model.config.hidden_size == KEPT
    assert all(site.tensor.shape[site.dim] == KEPT for site in hidden_sites(adapter, model))


@pytest.mark.parametrize("family", FOLDABLE)
def test_fold_then_reload_gives_the_folded_models_logits(family: str, tmp_path: Path) -> None:
    model, adapter = _foldable(family)
    fold_hidden(adapter, model, _keep(48, KEPT, seed=1), dict.fromkeys(norm_names(adapter, model), 1.3))
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=1e-5)
    assert type(reloaded) is type(model) and reloaded.config.hidden_size == KEPT


@pytest.mark.parametrize("family", FOLDABLE)
def test_a_stream_that_never_uses_the_dropped_channels_computes_the_same_function_after_the_fold(family: str) -> None:
    """Zero every weight that writes a dropped channel: the dense model and the folded one agree.

    The norms see zeros on the dropped channels, so with a negligible epsilon the folded norm needs
    the factor ``sqrt(d / d')`` (``norm_correction`` with all energy on the kept channels).
    """
    model, adapter = _foldable(family)
    keep = _keep(48, KEPT, seed=2)
    with torch.no_grad():
        for site in hidden_sites(adapter, model):
            if site.role in ("embedding", "output", "output_bias"):
                site.tensor.index_fill_(site.dim, (~keep).nonzero().flatten(), 0.0)
        for module in model.modules():
            for attr in ("variance_epsilon", "eps"):
                if isinstance(getattr(module, attr, None), float):
                    setattr(module, attr, 1e-12)
    energy = keep.double()
    factor = norm_correction(energy, keep)
    assert factor == pytest.approx((48 / KEPT) ** 0.5)
    folded = copy.deepcopy(model)
    fold_hidden(adapter, folded, keep, dict.fromkeys(norm_names(adapter, folded), factor))
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(folded(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-4)


def test_every_family_folds_and_an_embedding_scale_that_is_not_sqrt_hidden_is_refused() -> None:
    assert FOLDABLE == list(FAMILIES)
    model = tiny_model("gemma3")
    model.get_input_embeddings().embed_scale.fill_(3.0)
    with pytest.raises(NotImplementedError, match="cannot cut the hidden dimension.*scaled by 3, not sqrt"):
        fold_hidden(adapter_for(model), model, _keep(48, KEPT))
    # sqrt(hidden_size) rounded to bf16, as a model loaded in bf16 holds it, is that scale
    rounded = tiny_model("gemma3").to(torch.bfloat16)
    assert float(rounded.get_input_embeddings().embed_scale) != float(rounded.config.hidden_size) ** 0.5
    assert hidden_refusal(adapter_for(rounded), rounded) is None


def test_bad_masks_are_refused() -> None:
    model = tiny_model("llama-gqa")
    with pytest.raises(ValueError, match="48 entries and at least one kept channel"):
        fold_hidden(adapter_for(model), model, torch.zeros(48, dtype=torch.bool))
    with pytest.raises(ValueError, match="48 entries"):
        fold_hidden(adapter_for(model), model, torch.ones(47, dtype=torch.bool))
    with pytest.raises(ValueError, match="not norms on the hidden dimension.*model.layers.0.mlp"):
        fold_hidden(adapter_for(model), model, torch.ones(48, dtype=torch.bool), {"model.layers.0.mlp": 2.0})
