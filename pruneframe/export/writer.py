"""Write a GGUF file: the plan's metadata, the tokenizer and the tensors in the chosen type, atomically.

The file is written beside its destination and renamed into place, so an interrupted export leaves the
previous file or none; an existing file is replaced only when pruneframe wrote it (its metadata carries
:data:`OWNER_KEY`) and ``overwrite`` is given. Tensor data is aligned to 4096 bytes
(``general.alignment``): with GGUF's default 32 bytes, llama.cpp's decode speed depends on where each
tensor falls within a page.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from torch import nn

from pruneframe.architectures.gguf import global_rope
from pruneframe.util.io import _umask
from pruneframe.export.plan import GGUFPlan
from pruneframe.export.tensors import gguf_tensors
from pruneframe.export.vocab import add_vocab

__all__ = ["OWNER_KEY", "ALIGNMENT", "is_pruneframe_gguf", "check_gguf_replaceable", "write_gguf"]

#: Metadata key that marks a GGUF file written by pruneframe (value: the source it was exported from).
OWNER_KEY = "pruneframe.exported_from"
#: Byte alignment of tensor data in the files pruneframe writes.
ALIGNMENT = 4096

_FILE_TYPES = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
}
_QUANTIZED = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}
#: Tensors a 4-bit file keeps in 8 bits: the token embedding and the output layer, which llama.cpp's own
#: 4-bit presets keep at higher precision too (its ``q6_K``, which cannot be produced without llama.cpp's tools).
_EIGHT_BIT_IN_4BIT = ("token_embd.weight", "output.weight")


def is_pruneframe_gguf(path: str | Path) -> bool:
    """Whether ``path`` is a readable GGUF file whose metadata says pruneframe wrote it."""
    try:
        return OWNER_KEY in gguf.GGUFReader(str(path)).fields
    except Exception:  # not a GGUF file, or a truncated one
        return False


def check_gguf_replaceable(path: str | Path, overwrite: bool) -> Path:
    """Refuse an output path that holds anything but an empty file or (with ``overwrite``) a GGUF file pruneframe wrote.

    Raises ``FileExistsError`` naming the path; returns the path.
    """
    target = Path(path).expanduser()
    if not target.exists() and not target.is_symlink():
        return target
    if target.is_file() and target.stat().st_size == 0:
        return target
    if target.is_dir() or not is_pruneframe_gguf(target):
        what = "a folder" if target.is_dir() else "a file pruneframe did not write"
        raise FileExistsError(f"--out {str(target)!r} is {what}; refusing to replace it (choose another path)")
    if not overwrite:
        raise FileExistsError(f"--out {str(target)!r} is a GGUF file pruneframe wrote; pass --overwrite to replace it")
    return target


@contextmanager
def _sibling(target: Path) -> Iterator[Path]:
    """A temporary file beside ``target`` that replaces it when the block succeeds (and is removed otherwise)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _typed(name: str, array: np.ndarray, dtype: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """The tensor ``name`` in the file's type.

    1-D tensors (norms, biases) stay f32; a quantized matrix whose rows are not whole 32-weight blocks
    stays f16; in a ``q4_0`` file the token embedding and output layer are ``q8_0``.
    """
    if array.ndim == 1 or dtype == "f32":
        return array.astype(np.float32), gguf.GGMLQuantizationType.F32
    if dtype == "f16" or (dtype in _QUANTIZED and array.shape[-1] % 32):
        return array.astype(np.float16), gguf.GGMLQuantizationType.F16
    if dtype == "bf16":
        kind = gguf.GGMLQuantizationType.BF16
    else:
        kind = _QUANTIZED["q8_0" if dtype == "q4_0" and name in _EIGHT_BIT_IN_4BIT else dtype]
    return gguf.quants.quantize(array, kind), kind


def _rope_theta(config: Any) -> float:
    theta = global_rope(config).get("rope_theta")
    return float(theta if theta is not None else getattr(config, "rope_theta", 10000.0))


def _header(writer: gguf.GGUFWriter, model: nn.Module, plan: GGUFPlan, dtype: str, name: str) -> None:
    config = model.config
    hd = plan.head_dim
    writer.add_name(name)
    writer.add_custom_alignment(ALIGNMENT)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(len(plan.layers))
    ffn = [lp.ffn for lp in plan.layers]
    heads = [lp.q_heads for lp in plan.layers]
    kv = [lp.kv_heads for lp in plan.layers]
    layout = plan.layout
    per_layer = layout.per_layer_widths
    writer.add_feed_forward_length(ffn if per_layer else ffn[0])
    writer.add_head_count(heads if per_layer else heads[0])
    writer.add_head_count_kv(kv if per_layer else kv[0])
    writer.add_key_length(hd)
    writer.add_value_length(hd)
    writer.add_rope_dimension_count(hd)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(int(config.vocab_size))
    if layout.metadata is not None:
        layout.metadata(writer, config)
    writer.add_file_type(int(_FILE_TYPES[dtype]))
    if dtype in _QUANTIZED:
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_string(OWNER_KEY, name)


def write_gguf(out: str | Path, model: nn.Module, tokenizer: Any, plan: GGUFPlan, dtype: str, name: str) -> Path:
    """Write ``model`` as a GGUF file at ``out`` following ``plan``; returns the path.

    ``tokenizer`` (a transformers fast tokenizer) is carried with its special tokens and chat
    template. The caller checks that ``out`` may be replaced (:func:`check_gguf_replaceable`).
    """
    target = Path(out).expanduser()
    with _sibling(target) as tmp:
        writer = gguf.GGUFWriter(tmp, plan.arch)
        _header(writer, model, plan, dtype, name)
        add_vocab(writer, tokenizer, int(model.config.vocab_size))
        for tensor_name, array in gguf_tensors(model, plan):
            data, kind = _typed(tensor_name, array, dtype)
            writer.add_tensor(tensor_name, data, raw_dtype=kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return target
