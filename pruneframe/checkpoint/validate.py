"""Checks on a checkpoint folder before anything is loaded from it.

:func:`validate_checkpoint` compares what a folder's ``config.json`` and ``pruning.json`` declare with
what its safetensors files hold, reading only the files' headers: the model class is built from the
config on the ``meta`` device (no memory), and every tensor name and shape it expects must be in the
files, with no extras. A mismatch raises :class:`CheckpointError` naming the file, the layer and the
tensor, before a single weight is read, so a tampered or truncated folder never loads partially.

:func:`is_checkpoint_folder` says whether a folder is a pruneframe checkpoint and
:func:`check_replaceable` refuses to let a checkpoint replace anything else.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pruneframe.util.io import read_small_text

__all__ = [
    "PER_LAYER_WIDTHS",
    "REPORT_FILE",
    "WIDTHS_FIELD",
    "CheckpointError",
    "is_checkpoint_folder",
    "check_replaceable",
    "header_shapes",
    "expected_shapes",
    "validate_checkpoint",
]

#: The record every pruneframe checkpoint carries (written last into the folder, before it is renamed into place).
REPORT_FILE = "pruning.json"
#: The config field holding the per-layer widths (``pruning.json`` repeats it as ``layers``).
WIDTHS_FIELD = "pruned_layers"
_WEIGHTS = "model.safetensors"
_INDEX = "model.safetensors.index.json"
_MAX_LISTED = 6

Shapes = dict[str, tuple[int, ...]]


class CheckpointError(ValueError):
    """A checkpoint folder whose files are missing, unreadable or disagree with each other."""


def is_checkpoint_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding a pruneframe checkpoint's ``config.json`` and ``pruning.json``."""
    folder = Path(path)
    return (folder / "config.json").is_file() and (folder / REPORT_FILE).is_file()


def _is_empty(path: Path) -> bool:
    return (path.is_dir() and not any(path.iterdir())) or (path.is_file() and path.stat().st_size == 0)


def check_replaceable(path: str | Path) -> None:
    """Raise ``FileExistsError`` when writing a checkpoint to ``path`` would destroy anything but a checkpoint.

    A missing path, an empty folder and an existing pruneframe checkpoint may be replaced; any other
    file or folder may not (it is the user's own data).
    """
    target = Path(path)
    if not target.exists() and not target.is_symlink():
        return
    if _is_empty(target) or is_checkpoint_folder(target):
        return
    what = "a file" if not target.is_dir() else "a folder that is not a pruneframe checkpoint"
    raise FileExistsError(f"{str(target)!r} is {what}; refusing to replace it (choose another output path)")


def _where(name: str) -> str:
    """``layer 3: model.layers.3.mlp.up_proj.weight`` (or just the name outside the decoder layers)."""
    match = re.search(r"(?:^|\.)layers\.(\d+)\.", name)
    return f"layer {match.group(1)}: {name}" if match else name


def _read_header(file: Path) -> Shapes:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{file}: not a readable safetensors file ({exc}); truncated or corrupt?") from exc


def header_shapes(folder: str | Path) -> tuple[Shapes, dict[str, str]]:
    """Every tensor's shape from the folder's safetensors headers, and the file each tensor is in.

    Reads ``model.safetensors``, or the shards named by ``model.safetensors.index.json``; raises
    :class:`CheckpointError` when a file is missing, unreadable, or a tensor is not where the index says.
    """
    folder = Path(folder)
    index_file = folder / _INDEX
    if index_file.is_file():
        try:
            weight_map = json.loads(index_file.read_text(encoding="utf-8"))["weight_map"]
            files = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{index_file}: not a safetensors index with a 'weight_map' ({exc})") from exc
    elif (folder / _WEIGHTS).is_file():
        weight_map, files = None, [_WEIGHTS]
    else:
        raise CheckpointError(f"{folder}: no weights ({_WEIGHTS} or {_INDEX} is missing)")
    shapes: Shapes = {}
    origin: dict[str, str] = {}
    for name in files:
        file = folder / name
        if not file.is_file():
            raise CheckpointError(f"{folder}: weight file {name!r} named by {_INDEX} is missing")
        for key, shape in _read_header(file).items():
            if key in shapes:
                raise CheckpointError(f"{folder}: tensor {_where(key)} is stored twice ({origin[key]} and {name})")
            shapes[key], origin[key] = shape, name
    for key, name in (weight_map or {}).items():
        if origin.get(key) != name:
            raise CheckpointError(f"{index_file}: tensor {_where(key)} should be in {name} but {'is in ' + origin[key] if key in origin else 'is in no file'}")
    return shapes, origin


def expected_shapes(model_cls: type[nn.Module], config: Any) -> tuple[Shapes, int]:
    """The tensors a model built from ``config`` saves (tied duplicates once) and its parameter count.

    The model is built on the ``meta`` device, so nothing is allocated whatever its size.
    """
    try:
        with torch.device("meta"):
            model = model_cls(config)
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise CheckpointError(f"config.json cannot build {model_cls.__name__}: {type(exc).__name__}: {exc}") from exc
    seen: set[int] = set()
    shapes: Shapes = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            continue  # a tied weight is saved once
        seen.add(id(tensor))
        shapes[name] = tuple(tensor.shape)
    return shapes, sum(p.numel() for p in model.parameters())


def _differences(expected: Shapes, found: Shapes, origin: dict[str, str], source: str) -> list[str]:
    problems = [f"{_where(k)} has shape {found[k]} in {origin[k]}, {source} implies {expected[k]}" for k in expected if k in found and found[k] != expected[k]]
    problems += [f"{_where(k)} ({source} implies shape {expected[k]}) is missing from the weights" for k in expected if k not in found]
    problems += [f"{_where(k)} in {origin[k]} is not part of the model {source} describes" for k in found if k not in expected]
    return problems


def _fail(folder: Path, what: str, problems: list[str]) -> None:
    listed = problems[:_MAX_LISTED]
    more = f"; and {len(problems) - len(listed)} more" if len(problems) > len(listed) else ""
    raise CheckpointError(f"{folder}: {what}: " + "; ".join(listed) + more)


def _read_report(folder: Path) -> dict[str, Any] | None:
    file = folder / REPORT_FILE
    if not file.is_file():
        return None
    try:
        report = json.loads(read_small_text(file))
    except (OSError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{file}: not valid JSON ({exc})") from exc
    if not isinstance(report, dict):
        raise CheckpointError(f"{file}: expected a JSON object, got {type(report).__name__}")
    return report


def _check_report(folder: Path, report: dict[str, Any], model_cls: type[nn.Module], config: Any, found: Shapes, origin: dict[str, str], params: int) -> None:
    """``pruning.json`` must describe the same model: the same widths per layer and parameter count."""
    declared = getattr(config, WIDTHS_FIELD, None)
    layers = report.get("layers")
    if layers is not None and declared is not None and layers != declared:
        if not isinstance(layers, list) or len(layers) != len(declared):
            count = len(layers) if isinstance(layers, list) else type(layers).__name__
            raise CheckpointError(f"{folder / REPORT_FILE}: 'layers' has {count} entries, config.json's {WIDTHS_FIELD} {len(declared)}")
        recorded, _ = expected_shapes(model_cls, _with_widths(config, layers))
        problems = _differences(recorded, found, origin, f"{REPORT_FILE} 'layers'")
        for i, (ours, theirs) in enumerate(zip(layers, declared)):
            if ours != theirs and not any(p.startswith(f"layer {i}:") for p in problems):
                problems.append(f"layer {i}: {REPORT_FILE} records {ours}, config.json {theirs}")
        _fail(folder, f"{REPORT_FILE} disagrees with the weights", problems)
    recorded_params = report.get("parameters")
    if recorded_params is not None and recorded_params != params:
        raise CheckpointError(f"{folder}: {REPORT_FILE} records {recorded_params:,} parameters, the weights hold {params:,}")


#: the widths transformers' ``per_layer_config`` states, as named in each ``pruned_layers`` entry
PER_LAYER_WIDTHS = ("intermediate_size", "num_attention_heads", "num_key_value_heads")


def _check_per_layer_config(folder: Path, config: Any) -> None:
    """transformers' ``per_layer_config`` (read by its caches, among others) must state the widths the weights have."""
    declared = getattr(config, WIDTHS_FIELD, None)
    if not declared or not getattr(config, "is_heterogeneous", False):
        return
    views = config.per_layer_config
    problems = [
        f"layer {i}: per_layer_config gives {key} {getattr(view, key)}, {WIDTHS_FIELD} {widths.get(key)}"
        for i, (view, widths) in enumerate(zip(views, declared))
        for key in PER_LAYER_WIDTHS
        if getattr(view, key) != widths.get(key)
    ]
    if len(views) != len(declared):
        problems.append(f"per_layer_config describes {len(views)} layers, {WIDTHS_FIELD} {len(declared)}")
    if problems:
        _fail(folder, f"config.json's per_layer_config disagrees with its {WIDTHS_FIELD}", problems)


def _with_widths(config: Any, layers: list[Any]) -> Any:
    other = config.__class__.from_dict(config.to_dict())
    setattr(other, WIDTHS_FIELD, layers)
    return other


def validate_checkpoint(folder: str | Path, model_cls: type[nn.Module], config: Any) -> None:
    """Raise :class:`CheckpointError` unless the folder's weights are exactly what ``config`` and ``pruning.json`` describe.

    Checks, from headers only: the weight files exist and parse (a truncated file fails here), every
    tensor ``model_cls(config)`` has is present with its shape, none is extra, transformers'
    ``per_layer_config`` (when present) states the same widths, and ``pruning.json`` (when present)
    records the same per-layer widths and parameter count.
    """
    folder = Path(folder)
    found, origin = header_shapes(folder)
    expected, params = expected_shapes(model_cls, config)
    problems = _differences(expected, found, origin, "config.json")
    if problems:
        _fail(folder, "the weights do not match config.json", problems)
    _check_per_layer_config(folder, config)
    report = _read_report(folder)
    if report is not None:
        _check_report(folder, report, model_cls, config, found, origin, params)
