"""Checkpoints: a folder any tool can load, and no pickles.

Layout written by :func:`save`::

    model.safetensors            weights (sharded files + index for large models)
    config.json                  the original config + ``pruned_layers`` (per-layer widths) + auto_map
    modeling_pruneframe.py       the only code the folder declares (torch + transformers only)
    pruning.json                 method, budget, achieved cost, widths, software versions
    tokenizer files              when a tokenizer is given

:func:`load_pruned` rebuilds the model from the package's own copy of the modeling code (it never
imports code from the folder); ``AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)``
uses the copy in the folder, so lm-eval and other tools can load it too.
"""

from __future__ import annotations

import json
import platform
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pruneframe._io import atomic_dir, write_json_atomic
from pruneframe.architectures.llama import _base_architecture
from pruneframe.checkpoint.modeling_pruneframe import FAMILIES
from pruneframe.checkpoint.validate import check_replaceable
from pruneframe.fold import layer_widths

__all__ = ["save", "load_pruned", "read_report", "software_versions", "MODELING_FILE", "REPORT_FILE"]

MODELING_FILE = Path(__file__).with_name("modeling_pruneframe.py")
REPORT_FILE = "pruning.json"


def software_versions() -> dict[str, str]:
    """Versions of the packages that shape a checkpoint's numbers."""
    out = {"python": platform.python_version()}
    for name in ("pruneframe", "torch", "transformers", "safetensors"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out


def _pruned_config(model: nn.Module) -> dict[str, Any]:
    arch = _base_architecture(model)
    if arch is None:
        raise NotImplementedError(f"cannot save {type(model).__name__}: supported: {', '.join(FAMILIES)}")
    config_cls, model_cls = FAMILIES[arch]
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg.pop("auto_map", None)
    cfg["model_type"] = config_cls.model_type
    cfg["architectures"] = [model_cls.__name__]
    cfg["auto_map"] = {
        "AutoConfig": f"modeling_pruneframe.{config_cls.__name__}",
        "AutoModelForCausalLM": f"modeling_pruneframe.{model_cls.__name__}",
    }
    cfg["pruned_layers"] = layer_widths(model)
    return cfg


def save(path: str | Path, model: nn.Module, report: dict[str, Any] | None = None, tokenizer: Any = None) -> Path:
    """Write ``model`` (a folded model) as a loadable checkpoint folder, atomically.

    The folder appears complete or not at all; an existing checkpoint (or empty folder) at ``path`` is
    replaced, anything else there raises ``FileExistsError`` before anything is written.
    """
    path = Path(path)
    check_replaceable(path)
    config = _pruned_config(model)
    with atomic_dir(path, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (tmp / "generation_config.json").unlink(missing_ok=True)
        shutil.copyfile(MODELING_FILE, tmp / MODELING_FILE.name)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        full = dict(report or {})
        full.setdefault("software", software_versions())
        full["layers"] = config["pruned_layers"]
        full["parameters"] = sum(p.numel() for p in model.parameters())
        write_json_atomic(tmp / REPORT_FILE, full)
    return path


def read_report(path: str | Path) -> dict[str, Any]:
    """The ``pruning.json`` of a checkpoint folder."""
    file = Path(path) / REPORT_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{path} is not a pruneframe checkpoint (no {REPORT_FILE})")
    return json.loads(file.read_text())


def load_pruned(path: str | Path, dtype: torch.dtype | str | None = None, with_tokenizer: bool = True) -> tuple[nn.Module, Any]:
    """Load a checkpoint written by :func:`save`; returns ``(model, tokenizer or None)``.

    Uses the package's own modeling classes; no code from the folder is executed.
    """
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} has no config.json; not a checkpoint folder")
    model_type = json.loads(config_file.read_text()).get("model_type", "")
    by_type = {cfg.model_type: (cfg, mdl) for cfg, mdl in FAMILIES.values()}
    if model_type not in by_type:
        raise ValueError(f"{path}: model_type {model_type!r} is not a pruneframe checkpoint; expected one of {sorted(by_type)}")
    config_cls, model_cls = by_type[model_type]
    config = config_cls.from_pretrained(path)
    kwargs: dict[str, Any] = {"config": config}
    if dtype is not None:
        kwargs["dtype"] = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    model = model_cls.from_pretrained(path, **kwargs).eval()
    tokenizer = None
    if with_tokenizer and any(path.glob("tokenizer*")):
        from transformers import AutoTokenizer

        # never consult the folder's auto_map: loading must not run (or ask to run) its code
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    return model, tokenizer
