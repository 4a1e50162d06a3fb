"""A causal LM's vocabulary sliced to kept tokens: the logits on renumbered ids are the original logits at the kept columns."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from tiny import FAMILIES, plain_llama, tiny_model
from transformers import AutoModelForCausalLM
from workspace_files import bpe_tokenizer, random_text

from pruneframe.vocabulary import VocabularyBudgetError, closure, project_vocabulary, read_bpe, row_cost, slice_vocabulary, trim_tokenizer, trim_vocabulary
from pruneframe.vocabulary.slicing import SPECIAL_ID_FIELDS


def _special_ids(model) -> set[int]:
    found: set[int] = set()
    for config in (model.config, model.generation_config):
        for field in SPECIAL_ID_FIELDS:
            value = getattr(config, field, None)
            found.update([] if value is None else [value] if isinstance(value, int) else value)
    return found


def _kept_ids(model, fraction: float = 0.6, seed: int = 0) -> torch.Tensor:
    size = model.get_input_embeddings().num_embeddings
    keep = torch.rand(size, generator=torch.Generator().manual_seed(seed)) < fraction
    keep[list(_special_ids(model))] = True
    return keep.nonzero().flatten()


@pytest.mark.parametrize("family", FAMILIES)
def test_sliced_logits_are_the_kept_columns_exactly(family: str, tmp_path: Path) -> None:
    model = tiny_model(family)
    old_ids = _kept_ids(model)
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    cost = row_cost(model)
    assert cost == model.config.hidden_size * (1 if tied else 2)
    ids = old_ids[torch.randint(0, old_ids.numel(), (2, 12), generator=torch.Generator().manual_seed(1))]
    with torch.no_grad():
        want = model(input_ids=ids).logits[..., old_ids]
    sliced = slice_vocabulary(copy.deepcopy(model), old_ids)
    new_ids = torch.searchsorted(old_ids, ids)
    with torch.no_grad():
        got = sliced(input_ids=new_ids).logits
    assert torch.equal(got, want)
    size = old_ids.numel()
    assert sliced.config.vocab_size == size == sliced.get_input_embeddings().num_embeddings == sliced.get_output_embeddings().out_features
    assert (sliced.get_output_embeddings().weight is sliced.get_input_embeddings().weight) == tied
    assert sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in sliced.parameters()) == cost * (model.config.vocab_size - size)
    for config, before in ((sliced.config, model.config), (sliced.generation_config, model.generation_config)):
        for field in SPECIAL_ID_FIELDS:
            old = getattr(before, field, None)
            if isinstance(old, int):
                assert old_ids[getattr(config, field)] == old
    padding = model.get_input_embeddings().padding_idx
    if padding is not None:
        assert old_ids[sliced.get_input_embeddings().padding_idx] == padding
    sliced.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=new_ids).logits, got)


def test_a_dropped_special_token_or_bad_ids_are_refused_and_nothing_changes() -> None:
    model = tiny_model("llama-gqa")
    eos = model.config.eos_token_id
    old_ids = torch.tensor([i for i in range(model.config.vocab_size) if i != eos])
    weight = model.get_input_embeddings().weight
    with pytest.raises(ValueError, match=f"eos_token_id {eos} is not a kept token"):
        slice_vocabulary(model, old_ids)
    assert model.get_input_embeddings().weight is weight and model.config.vocab_size == 97
    for bad, message in [(torch.tensor([0, 0, 1, 2]), "repeats"), (torch.tensor([0, 97]), "lie in 0..96"), (torch.tensor([0.0]), "int64")]:
        with pytest.raises(ValueError, match=message):
            slice_vocabulary(model, bad)


def test_padding_index_of_a_dropped_token_is_cleared() -> None:
    model = tiny_model("phi3")
    model.config.pad_token_id = None
    model.generation_config.pad_token_id = None
    old_ids = torch.arange(1, 97)
    assert model.get_input_embeddings().padding_idx == 0
    slice_vocabulary(model, old_ids)
    assert model.get_input_embeddings().padding_idx is None


def test_a_trimmed_tokenizer_and_its_sliced_model_score_kept_text_as_before() -> None:
    tokenizer = bpe_tokenizer()
    model = plain_llama(vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=0, pad_token_id=None)
    vocab = read_bpe(tokenizer)
    text = random_text(12, 200)
    ids = tokenizer(text, add_special_tokens=False).input_ids
    scores = torch.bincount(torch.tensor(ids), minlength=len(vocab)).double()
    needed = int(closure(vocab.forced | (scores > 0), vocab.merges).sum())
    assert needed < len(vocab)
    budget = needed * row_cost(model)  # exactly what the text's tokens need: the scored ones go first
    keep = project_vocabulary(scores, torch.full((len(vocab),), row_cost(model)), vocab.merges, budget, vocab.forced)
    trimmed = trim_tokenizer(tokenizer, keep, vocab)
    sliced = slice_vocabulary(copy.deepcopy(model), trimmed.old_ids)
    assert sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in sliced.parameters()) >= (len(vocab) * row_cost(model) - budget)
    old = torch.tensor([ids[:64]])
    assert bool(keep[old].all())
    new = torch.tensor([trimmed.tokenizer(tokenizer.decode(old[0]), add_special_tokens=False).input_ids])
    assert torch.equal(new, trimmed.remap(old))
    with torch.no_grad():
        assert torch.equal(sliced(input_ids=new).logits, model(input_ids=old).logits[..., trimmed.old_ids])


def test_trim_vocabulary_drops_padding_rows_and_keeps_the_config_ids() -> None:
    tokenizer = bpe_tokenizer()
    model = plain_llama(bos_token_id=1, eos_token_id=0, pad_token_id=299)  # 320 rows for 300 tokens
    old = torch.tensor([tokenizer(random_text(13, 200), add_special_tokens=False).input_ids[:48]])
    scores = torch.bincount(old.flatten(), minlength=len(tokenizer)).double()
    vocab = read_bpe(tokenizer, keep=[0, 1, 299])
    needed = int(closure(vocab.forced | (scores > 0), vocab.merges).sum())
    assert needed < len(tokenizer)
    cost = row_cost(model)
    with pytest.raises(VocabularyBudgetError, match="over the budget"):
        trim_vocabulary(copy.deepcopy(model), tokenizer, scores, 100 * cost)
    result = trim_vocabulary(copy.deepcopy(model), tokenizer, scores, needed * cost + cost // 2)
    assert result.cost == needed * cost and result.model.config.vocab_size == needed == len(result.trimmed.tokenizer)
    assert bool(result.keep[[0, 1, 299]].all()) and result.model.config.pad_token_id == needed - 1
    assert bool(result.keep[old].all())
    with torch.no_grad():
        assert torch.equal(result.model(input_ids=result.trimmed.remap(old)).logits, model(input_ids=old).logits[..., result.trimmed.old_ids])
