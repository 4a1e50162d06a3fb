"""``export_gguf``: a dense or pruned model (loaded, or a spec ``load_model`` resolves) to one GGUF file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from pruneframe.export.plan import GGUFPlan, plan_export
from pruneframe.export.writer import check_gguf_replaceable, write_gguf

__all__ = ["ExportResult", "export_gguf", "GGUF_DTYPES"]

#: The export types ``--dtype`` takes.
GGUF_DTYPES: tuple[str, ...] = ("f32", "f16", "bf16", "q8_0", "q4_0")


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_gguf` wrote: the file, the plan it followed and its size in bytes."""

    path: Path
    plan: GGUFPlan
    bytes: int


def export_gguf(
    model: nn.Module | str | Path,
    out: str | Path,
    dtype: str = "f16",
    tokenizer: Any = None,
    overwrite: bool = False,
    name: str | None = None,
    pad_ffn_to: int | None = None,
) -> ExportResult:
    """Write ``model`` as a GGUF file llama.cpp runs; returns an :class:`ExportResult`.

    Args:
        model: a loaded Hugging Face causal LM (dense or pruned), or anything
            :func:`pruneframe.models.load_model` takes (an embedded name, a folder, a pruned checkpoint).
        out: the ``.gguf`` file to write (beside it first, then renamed into place).
        dtype: ``f32``, ``f16``, ``bf16``, ``q8_0`` or ``q4_0`` (token embedding and output layer in ``q8_0``).
        tokenizer: the model's fast tokenizer (loaded with the model when ``model`` is a spec).
        overwrite: replace a GGUF file pruneframe wrote earlier at ``out``.
        name: ``general.name`` in the file (default: the spec, or the model's ``name_or_path``).
        pad_ffn_to: zero-pad every FFN width to a multiple of this (exact; default 32, 1 for none; see :func:`plan_export`).

    Raises:
        pruneframe.export.ExportRefused: llama.cpp cannot express the model (names what and why).
        FileExistsError: ``out`` holds something pruneframe did not write, or a GGUF file it wrote
            and ``overwrite`` is false.
    """
    if dtype not in GGUF_DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(GGUF_DTYPES)}")
    target = check_gguf_replaceable(out, overwrite)
    if isinstance(model, (str, Path)):
        from pruneframe.models import load_model

        spec = str(model)
        model, loaded_tokenizer = load_model(spec, dtype="float32", device="cpu")
        tokenizer = tokenizer or loaded_tokenizer
        name = name or spec
    if tokenizer is None:
        raise ValueError("export_gguf: a tokenizer is needed (llama.cpp files carry their vocabulary)")
    plan = plan_export(model, dtype, pad_ffn_to)
    label = name or str(getattr(model.config, "name_or_path", "") or type(model).__name__)
    path = write_gguf(target, model, tokenizer, plan, dtype, label)
    return ExportResult(path, plan, path.stat().st_size)
