"""Checkpoints: a folder any tool can load, and no pickles.

Layout written by :func:`save`::

    model.safetensors            weights (sharded files + index for large models)
    config.json                  see below
    modeling_pruneframe.py       only when layers differ: the code the folder declares (torch + transformers only)
    pruning.json                 the prune's typed report (method, budget, achieved cost, time, memory,
                                 software versions) plus the saved widths: a ``CheckpointReport``
    tokenizer files              when a tokenizer is given

When every layer keeps the same widths (and no output bias was added), ``config.json`` is a plain
config of the original family (``model_type`` llama, qwen2, gemma3_text, phi3, ...) with the new
widths: ``AutoModelForCausalLM.from_pretrained(path)`` loads it without ``trust_remote_code``.
Otherwise it is the original config plus ``pruned_layers`` (per-layer widths) and an ``auto_map`` to
the shipped modeling code, and ``from_pretrained(path, trust_remote_code=True)`` loads it (lm-eval
and other tools included). The family's architecture adapter decides both forms.
:func:`load_pruned` loads either form from the package's own copy of the modeling code (it never
imports code from the folder).
"""

from __future__ import annotations

import json
import platform
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from pruneframe._io import atomic_dir, write_json_atomic
from pruneframe.architectures import ArchitectureAdapter, LayerWidths, adapter_for
from pruneframe.checkpoint import modeling_pruneframe
from pruneframe.checkpoint.modeling_pruneframe import FAMILIES
from pruneframe.checkpoint.validate import PER_LAYER_WIDTHS, CheckpointError, check_replaceable, validate_checkpoint
from pruneframe.prune_report import CheckpointReport, PruneReport

__all__ = [
    "save", "load_pruned", "CheckpointError", "per_layer_config", "read_report", "read_report_json", "software_versions",
    "MODELING_FILE", "REPORT_FILE",
]

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


def per_layer_config(config: dict[str, Any], widths: list[LayerWidths]) -> dict[str, dict[str, int]]:
    """transformers' ``per_layer_config`` for ``widths``: per layer (index as a string), the widths that differ from ``config``'s."""
    out: dict[str, dict[str, int]] = {}
    for w in widths:
        entry = w.to_config()
        diff = {key: entry[key] for key in PER_LAYER_WIDTHS if entry[key] != config.get(key)}
        if diff:
            out[str(w.index)] = diff
    return out


def _checkpoint_config(
    model: nn.Module, adapter: ArchitectureAdapter | None = None
) -> tuple[dict[str, Any], list[LayerWidths], bool]:
    """``(config.json content, per-layer widths, whether it is a plain config of the original family)``.

    A plain config is written when the family's own class, built from it, has exactly the saved
    widths: every layer alike (the adapter's :meth:`~ArchitectureAdapter.plain_config`), or uneven
    layers in transformers' ``per_layer_config`` form for a family whose modeling code honours it.
    """
    adapter = adapter or adapter_for(model)
    arch = adapter.architecture_of(model)
    widths = adapter.layer_widths(model)
    cfg = model.config.to_dict()
    for key in ("quantization_config", "auto_map", "pruned_layers", "per_layer_config", "allow_global_per_layer_attribute_access"):
        cfg.pop(key, None)
    cfg["architectures"] = [arch]
    uniform = bool(widths) and all(w.same_shape(widths[0]) for w in widths)
    layered = per_layer_config(cfg, widths)
    plain = adapter.plain_config(cfg, widths[0]) if uniform else {**cfg, "per_layer_config": layered}
    if plain is not None:
        family = adapter.family_class(model)
        plain["model_type"] = family.config_class.model_type
        if _builds_widths(adapter, family, plain, widths):
            return plain, widths, True
    config_name, model_name = adapter.checkpoint_classes(model)
    config_cls = getattr(modeling_pruneframe, config_name)
    cfg["model_type"] = config_cls.model_type
    cfg["architectures"] = [model_name]
    cfg["auto_map"] = {
        "AutoConfig": f"modeling_pruneframe.{config_name}",
        "AutoModelForCausalLM": f"modeling_pruneframe.{model_name}",
    }
    cfg["pruned_layers"] = [w.to_config() for w in widths]
    if layered:
        # the same widths in transformers' own per-layer form (read by its caches, among others); the
        # family's modeling code builds every layer at the global widths, which the shipped code then resizes
        cfg["per_layer_config"] = layered
        cfg["allow_global_per_layer_attribute_access"] = True
    return cfg, widths, False


def _builds_widths(adapter: ArchitectureAdapter, family: type[nn.Module], config: dict[str, Any], widths: list[LayerWidths]) -> bool:
    """Whether the family's own class, built from ``config`` (on the meta device: no memory), has exactly ``widths``."""
    try:
        with torch.device("meta"):
            probe = family(family.config_class.from_dict(config))
        return adapter.layer_widths(probe) == widths
    except Exception:  # a config the family cannot build has no plain form
        return False


def save(path: str | Path, model: nn.Module, report: PruneReport | dict[str, Any] | None = None, tokenizer: Any = None) -> Path:
    """Write ``model`` (a folded model) as a loadable checkpoint folder, atomically.

    ``report`` is the prune's :class:`~pruneframe.prune_report.PruneReport` (stored as a
    :class:`~pruneframe.prune_report.CheckpointReport` with the saved widths), or for a model folded
    by hand any JSON-ready dict. The folder appears complete or not at all; an existing checkpoint (or
    empty folder) at ``path`` is replaced, anything else there raises ``FileExistsError`` before
    anything is written.
    """
    path = Path(path)
    check_replaceable(path)
    config, widths, plain = _checkpoint_config(model)
    stored = {"layers": [w.to_config() for w in widths], "config_form": "plain" if plain else "pruneframe",
              "parameters": sum(p.numel() for p in model.parameters())}
    if isinstance(report, PruneReport):
        fields = {**report.model_dump(), **stored, "software": report.software or software_versions()}
        record: dict[str, Any] = CheckpointReport.model_validate(fields).model_dump(mode="json")
    else:
        record = {"software": software_versions(), **(report or {}), **stored}
    with atomic_dir(path, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (tmp / "generation_config.json").unlink(missing_ok=True)
        if not plain:
            shutil.copyfile(MODELING_FILE, tmp / MODELING_FILE.name)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_json_atomic(tmp / REPORT_FILE, record)
    return path


def read_report_json(path: str | Path) -> dict[str, Any]:
    """The ``pruning.json`` of a checkpoint folder, as stored."""
    file = Path(path) / REPORT_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{path} is not a pruneframe checkpoint (no {REPORT_FILE})")
    return json.loads(file.read_text())


def read_report(path: str | Path) -> CheckpointReport:
    """The typed ``pruning.json`` of a checkpoint folder written from a prune.

    Raises:
        FileNotFoundError: the folder has no ``pruning.json``.
        ValueError: the file is not a prune's report (a model folded by hand, or an older pruneframe);
            :func:`read_report_json` still reads it.
    """
    data = read_report_json(path)
    try:
        return CheckpointReport.model_validate(data)
    except ValidationError as exc:
        fields = ", ".join(sorted({str(e["loc"][0]) for e in exc.errors() if e["loc"]}))
        raise ValueError(f"{Path(path) / REPORT_FILE} is not a prune's report (fields: {fields})") from None


def load_pruned(
    path: str | Path,
    dtype: torch.dtype | str | None = None,
    with_tokenizer: bool = True,
    device: str | torch.device | None = None,
) -> tuple[nn.Module, Any]:
    """Load a checkpoint written by :func:`save`; returns ``(model, tokenizer or None)``.

    Uses the package's own modeling classes; no code from the folder is executed. The folder is checked
    first (:func:`~pruneframe.checkpoint.validate.validate_checkpoint`): files that disagree raise
    :class:`CheckpointError` before any weight is read. ``dtype`` (a torch dtype, its name, or
    ``"auto"`` for the stored one) and ``device`` place the weights as they are read (``None``: the
    stored dtype, the CPU).
    """
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} has no config.json; not a checkpoint folder")
    model_type = json.loads(config_file.read_text()).get("model_type", "")
    by_type = {cfg.model_type: (cfg, mdl) for cfg, mdl in FAMILIES.values()}
    plain_types = {cfg.model_type.removeprefix("pruneframe_") for cfg, _ in FAMILIES.values()}
    kwargs: dict[str, Any] = {}
    if dtype is not None:
        kwargs["dtype"] = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
    if device is not None and torch.device(device).type != "cpu":
        kwargs["device_map"] = {"": str(device)}
    if model_type in by_type:
        config_cls, model_cls = by_type[model_type]
        config = config_cls.from_pretrained(path)
        validate_checkpoint(path, model_cls, config)
        model = model_cls.from_pretrained(path, config=config, **kwargs).eval()
    elif model_type in plain_types:
        from transformers import AutoConfig, AutoModelForCausalLM
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        validate_checkpoint(path, MODEL_FOR_CAUSAL_LM_MAPPING[type(config)], config)
        model = AutoModelForCausalLM.from_pretrained(path, config=config, trust_remote_code=False, **kwargs).eval()
    else:
        expected = sorted(by_type) + sorted(plain_types)
        raise ValueError(f"{path}: model_type {model_type!r} is not a pruneframe checkpoint; expected one of {expected}")
    tokenizer = None
    if with_tokenizer and any(path.glob("tokenizer*")):
        from transformers import AutoTokenizer

        # never consult the folder's auto_map: loading must not run (or ask to run) its code
        tokenizer = AutoTokenizer.from_pretrained(path, config=config, trust_remote_code=False)
    return model, tokenizer
