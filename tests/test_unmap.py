"""Weights loaded on the CPU live in the process's own memory, not in a mapping of their file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pruneframe.models import load_model
from pruneframe.models.unmap import file_mappings, own_weights
from tiny import tiny_model, tiny_tokenizer


def _mapped(model: torch.nn.Module) -> list[str]:
    spans = file_mappings()
    return [name for name, p in model.named_parameters() if any(start <= p.data_ptr() < end for start, end, _ in spans)]


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process's mappings (Linux)")
def test_loaded_weights_leave_the_file_mapping_with_the_same_values(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = tiny_model("qwen2")  # tied embeddings: one tensor serves two modules
    model.save_pretrained(tmp_path)
    tiny_tokenizer("t").save_pretrained(tmp_path)
    mapped = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    assert _mapped(mapped)  # transformers hands out views of the mapped file
    moved = own_weights(mapped)
    assert moved == sum(p.numel() * p.element_size() for p in mapped.parameters()) and not _mapped(mapped)
    assert own_weights(mapped) == 0  # nothing left to move
    loaded, _ = load_model(str(tmp_path), "float32", "cpu")
    assert not _mapped(loaded) and loaded.lm_head.weight is loaded.model.embed_tokens.weight
    ids = torch.arange(20)[None] % 97
    with torch.no_grad():
        expected = model(ids).logits
        torch.testing.assert_close(mapped(ids).logits, expected, rtol=0, atol=0)
        torch.testing.assert_close(loaded(ids).logits, expected, rtol=0, atol=0)
