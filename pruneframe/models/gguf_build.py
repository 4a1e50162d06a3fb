"""Turn a GGUF file into an ordinary Hugging Face folder (float32 safetensors, config, tokenizer).

transformers de-quantizes a GGUF file to float32 on load, but the loaded model keeps a GGUF
``quantization_config`` that blocks ``save_pretrained``. :func:`build_plain_folder` copies the weights
into a fresh model built from the config without that entry, checks that the copy gives identical
logits, saves the folder atomically, reloads it and checks the logits once more. The embedded models
(:mod:`pruneframe.models.smollm2`, :mod:`pruneframe.models.gemma3`) are built this way.
"""

from __future__ import annotations

import copy
import importlib.metadata
from pathlib import Path
from typing import Any

import torch

from pruneframe.util.io import atomic_dir, write_json_atomic

__all__ = ["BUILD_RECORD", "is_built", "installed_version", "build_plain_folder"]

#: The file a finished build leaves in its folder (what was built, from what, and what was checked).
BUILD_RECORD = "pruneframe_build.json"


def is_built(path: Path) -> bool:
    """Whether ``path`` holds a finished build (its record and its config)."""
    return (path / BUILD_RECORD).is_file() and (path / "config.json").is_file()


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution`` (the wheel a model came from), or None."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _probe_ids(vocab_size: int) -> torch.Tensor:
    return torch.randint(0, vocab_size, (1, 24), generator=torch.Generator().manual_seed(0))


@torch.inference_mode()
def _logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, use_cache=False).logits


def _check_same(label: str, reference: torch.Tensor, other: torch.Tensor, what: str) -> None:
    if not torch.equal(reference, other):
        diff = (reference - other).abs().max().item()
        raise RuntimeError(f"{label} build: {what} changed the logits (max abs diff {diff:.3g})")


def _without_quantization(model: Any, name: str, label: str) -> Any:
    """A plain float32 copy of a GGUF-loaded model, with no ``quantization_config`` attached."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.name_or_path = name
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(model.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"{label} rebuild: missing {missing}, unexpected {unexpected}")
    fresh.tie_weights()
    return fresh.eval()


def build_plain_folder(gguf: Path, target: Path, *, name: str, label: str, record: dict[str, Any], overwrite: bool) -> Path:
    """Build the plain float32 folder ``target`` from the GGUF file ``gguf``; return ``target``.

    Args:
        gguf: the GGUF file (its folder is what transformers loads from).
        target: the folder to create (atomically: written beside it, then renamed into place).
        name: the model's name, stored as the config's ``name_or_path``.
        label: how errors name the model (``"SmolLM2"``).
        record: what the build record says of the source (wheel, version, licence, ...).
        overwrite: replace an existing ``target``.

    Raises:
        RuntimeError: the rebuilt or reloaded model does not reproduce the GGUF model's logits.
        FileExistsError: ``target`` exists and ``overwrite`` is False.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    ids = _probe_ids(loaded.config.vocab_size)
    reference = _logits(loaded, ids)
    model = _without_quantization(loaded, name, label)
    del loaded
    _check_same(label, reference, _logits(model, ids), "removing the quantization config")
    with atomic_dir(target, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        reloaded = AutoModelForCausalLM.from_pretrained(str(tmp), dtype=torch.float32).eval()
        _check_same(label, reference, _logits(reloaded, ids), "saving and reloading")
        write_json_atomic(
            tmp / BUILD_RECORD,
            {
                "name": name,
                "gguf_file": gguf.name,
                **record,
                "dtype": "float32",
                "checked": "save/reload reproduces the GGUF model's logits exactly",
            },
        )
    return target
