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
Otherwise it is the original config plus ``pruned_layers`` (per-layer widths), ``pruned_family``
(the module and name of the family's own model class) and an ``auto_map`` to the shipped modeling
code: :mod:`pruneframe.checkpoint.modeling_pruneframe`, which names no family, followed by the lines
that derive this family's pruned classes (:func:`modeling_source`). ``from_pretrained(path,
trust_remote_code=True)`` loads it (lm-eval and other tools included). The family's architecture
adapter and its own transformers classes decide both forms, so a family a plugin registers saves and
loads like a built-in one. :func:`load_pruned` loads either form of every registered family from the
package's own copy of the modeling code (it never imports code from the folder).
"""

from __future__ import annotations

import importlib
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import ValidationError
from torch import nn

from pruneframe.util.io import atomic_dir, read_small_text, write_json_atomic
from pruneframe.architectures import ArchitectureAdapter, LayerWidths, adapter_for, adapter_for_class
from pruneframe.checkpoint.modeling_pruneframe import MODEL_TYPE_PREFIX, SHORTCUT_FIELD, pruned_classes
from pruneframe.checkpoint.validate import PER_LAYER_WIDTHS, CheckpointError, check_replaceable, validate_checkpoint
from pruneframe.pipeline.plugin_errors import UnsupportedModelError
from pruneframe.pipeline.prune_report import CheckpointReport, PruneReport

if TYPE_CHECKING:
    from pruneframe.pipeline.host import PluginHost

__all__ = [
    "save",
    "load_pruned",
    "CheckpointError",
    "per_layer_config",
    "read_report",
    "read_report_json",
    "software_versions",
    "MODELING_FILE",
    "REPORT_FILE",
    "FAMILY_FIELD",
    "modeling_source",
]

MODELING_FILE = Path(__file__).with_name("modeling_pruneframe.py")
REPORT_FILE = "pruning.json"
#: The config field naming the family's own model class (``module.ClassName``) in a checkpoint with uneven layers.
FAMILY_FIELD = "pruned_family"


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


def _class_path(cls: type) -> str:
    """``module.ClassName`` of ``cls``; raises ``ValueError`` when that path does not import back to ``cls``."""
    path = f"{cls.__module__}.{cls.__qualname__}"
    try:
        found = getattr(importlib.import_module(cls.__module__), cls.__qualname__, None)
    except ImportError:
        found = None
    if found is not cls:
        raise ValueError(
            f"the family class {cls.__qualname__} is not importable as {path}; a checkpoint with "
            f"uneven layers names its family's class, so define it at a module's top level"
        )
    return path


def modeling_source(family: type[nn.Module]) -> str:
    """The ``modeling_pruneframe.py`` of a checkpoint of ``family`` (the family's own model class).

    The package's family-neutral modeling code, then an import of ``family`` and the two classes
    :func:`~pruneframe.checkpoint.modeling_pruneframe.pruned_classes` derives from it, under the
    names the checkpoint's ``auto_map`` gives.
    """
    config_cls, model_cls = pruned_classes(family)
    module, _, name = _class_path(family).rpartition(".")
    return MODELING_FILE.read_text() + (
        "\n\n# The family this checkpoint was pruned from (written by pruneframe.checkpoint.save).\n"
        f"from {module} import {name} as _Family  # noqa: E402\n\n"
        f"{config_cls.__name__}, {model_cls.__name__} = pruned_classes(_Family)\n"
    )


def _checkpoint_config(model: nn.Module, adapter: ArchitectureAdapter | None = None) -> tuple[dict[str, Any], list[LayerWidths], bool]:
    """``(config.json content, per-layer widths, whether it is a plain config of the original family)``.

    A plain config is written when the family's own class, built from it, has exactly the saved
    widths and the model carries no residual shortcuts: every layer alike (the adapter's :meth:`~ArchitectureAdapter.plain_config`), or uneven
    layers in transformers' ``per_layer_config`` form for a family whose modeling code honours it.
    """
    adapter = adapter or adapter_for(model)
    arch = adapter.architecture_of(model)
    widths = adapter.layer_widths(model)
    cfg = model.config.to_dict()
    for key in ("quantization_config", "auto_map", "pruned_layers", FAMILY_FIELD, "per_layer_config", "allow_global_per_layer_attribute_access"):
        cfg.pop(key, None)
    cfg["architectures"] = [arch]
    uniform = bool(widths) and all(w.same_shape(widths[0]) for w in widths)
    layered = per_layer_config(cfg, widths)
    plain = adapter.plain_config(cfg, widths[0]) if uniform else {**cfg, "per_layer_config": layered}
    family = adapter.family_class(model)
    if plain is not None and not cfg.get(SHORTCUT_FIELD):  # no family's own class holds residual shortcuts
        plain["model_type"] = family.config_class.model_type
        if _builds_widths(adapter, family, plain, widths):
            return plain, widths, True
    config_cls, model_cls = pruned_classes(family)
    cfg["model_type"] = config_cls.model_type
    cfg["architectures"] = [model_cls.__name__]
    cfg["auto_map"] = {
        "AutoConfig": f"modeling_pruneframe.{config_cls.__name__}",
        "AutoModelForCausalLM": f"modeling_pruneframe.{model_cls.__name__}",
    }
    cfg[FAMILY_FIELD] = _class_path(family)
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


def save(
    path: str | Path,
    model: nn.Module,
    report: PruneReport | dict[str, Any] | None = None,
    tokenizer: Any = None,
    adapter: ArchitectureAdapter | None = None,
) -> Path:
    """Write ``model`` (a folded model) as a loadable checkpoint folder, atomically.

    ``report`` is the prune's :class:`~pruneframe.pipeline.prune_report.PruneReport` (stored as a
    :class:`~pruneframe.pipeline.prune_report.CheckpointReport` with the saved widths), or for a model folded
    by hand any JSON-ready dict. ``adapter`` is the model's architecture adapter (default: the
    installed one that handles it, :func:`~pruneframe.architectures.adapter_for`). The folder appears
    complete or not at all; an existing checkpoint (or empty folder) at ``path`` is replaced, anything
    else there raises ``FileExistsError`` before anything is written.
    """
    path = Path(path)
    check_replaceable(path)
    adapter = adapter or adapter_for(model)
    config, widths, plain = _checkpoint_config(model, adapter)
    modeling = None if plain else modeling_source(adapter.family_class(model))
    stored = {
        "layers": [w.to_config() for w in widths],
        "config_form": "plain" if plain else "pruneframe",
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    if isinstance(report, PruneReport):
        fields = {**report.model_dump(), **stored, "software": report.software or software_versions()}
        record: dict[str, Any] = CheckpointReport.model_validate(fields).model_dump(mode="json")
    else:
        record = {"software": software_versions(), **(report or {}), **stored}
    with atomic_dir(path, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (tmp / "generation_config.json").unlink(missing_ok=True)
        if modeling is not None:
            (tmp / MODELING_FILE.name).write_text(modeling)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_json_atomic(tmp / REPORT_FILE, record)
    return path


def read_report_json(path: str | Path) -> dict[str, Any]:
    """The ``pruning.json`` of a checkpoint folder, as stored."""
    file = Path(path) / REPORT_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{path} is not a pruneframe checkpoint (no {REPORT_FILE})")
    return json.loads(read_small_text(file))


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


def _supported(name: str, host: "PluginHost | None") -> None:
    """Raise :class:`~pruneframe.pipeline.plugin_errors.UnsupportedModelError` when no registered adapter handles the model class ``name``."""
    try:
        adapter_for_class(name, host)
    except UnsupportedModelError:
        raise
    except NotImplementedError as exc:  # adapter_for_class's way of saying that no adapter handles it
        raise UnsupportedModelError(str(exc)) from exc


def _family_class(path: Path, config: dict[str, Any], host: "PluginHost | None") -> type[nn.Module]:
    """The family model class a pruned checkpoint's config names, once a registered adapter handles it.

    ``pruned_family`` names it (``module.ClassName``); a checkpoint written before that field existed
    is found from its ``model_type`` among transformers' causal LMs. The module is imported only
    after an adapter is found for the class name, and must hold a transformers model class.
    """
    from transformers import PreTrainedModel

    model_type = str(config.get("model_type", ""))
    ref = config.get(FAMILY_FIELD)
    if ref is None:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

        base = model_type.removeprefix(MODEL_TYPE_PREFIX)
        try:
            family = MODEL_FOR_CAUSAL_LM_MAPPING[CONFIG_MAPPING[base]]
        except KeyError:
            raise ValueError(f"{path}: config.json has no {FAMILY_FIELD!r} and transformers has no causal LM of model_type {base!r}") from None
        ref = f"{family.__module__}.{family.__name__}"
    if not isinstance(ref, str) or "." not in ref:
        raise CheckpointError(f"{path / 'config.json'}: {FAMILY_FIELD!r} must be 'module.ClassName', got {ref!r}")
    module, _, name = ref.rpartition(".")
    _supported(name, host)  # a family no registered adapter handles is refused before anything is imported
    try:
        family = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise CheckpointError(f"{path / 'config.json'}: {FAMILY_FIELD} {ref!r} cannot be imported ({exc})") from exc
    if not (isinstance(family, type) and issubclass(family, PreTrainedModel)):
        raise CheckpointError(f"{path / 'config.json'}: {FAMILY_FIELD} {ref!r} is not a transformers model class")
    return family


def load_pruned(
    path: str | Path,
    dtype: torch.dtype | str | None = None,
    with_tokenizer: bool = True,
    device: str | torch.device | None = None,
    host: "PluginHost | None" = None,
) -> tuple[nn.Module, Any]:
    """Load a checkpoint written by :func:`save`; returns ``(model, tokenizer or None)``.

    Uses the package's own modeling classes; no code from the folder is executed. The folder is checked
    first (:func:`~pruneframe.checkpoint.validate.validate_checkpoint`): files that disagree raise
    :class:`CheckpointError` before any weight is read. ``dtype`` (a torch dtype, its name, or
    ``"auto"`` for the stored one) and ``device`` place the weights as they are read (``None``: the
    stored dtype, the CPU). Every family an installed plugin (or ``host``) registers an adapter for
    loads; any other raises ``NotImplementedError`` naming the supported ones.
    """
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} has no config.json; not a checkpoint folder")
    stored = json.loads(read_small_text(config_file))
    if not isinstance(stored, dict):
        raise CheckpointError(f"{config_file}: holds a JSON {type(stored).__name__}, not an object")
    model_type = str(stored.get("model_type", ""))
    kwargs: dict[str, Any] = {}
    if dtype is not None:
        kwargs["dtype"] = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
    if device is not None and torch.device(device).type != "cpu":
        kwargs["device_map"] = {"": str(device)}
    if model_type.startswith(MODEL_TYPE_PREFIX):
        config_cls, model_cls = pruned_classes(_family_class(path, stored, host))
        if config_cls.model_type != model_type:
            raise CheckpointError(f"{config_file}: model_type {model_type!r}, but its family's pruned config is {config_cls.model_type!r}")
        config = config_cls.from_pretrained(path)
    else:
        from transformers import AutoConfig
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

        try:
            config = AutoConfig.from_pretrained(path, trust_remote_code=False)
            model_cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
        except (KeyError, ValueError):
            raise ValueError(f"{path}: model_type {model_type!r} is neither a pruneframe checkpoint's nor a causal LM transformers knows") from None
        _supported(model_cls.__name__, host)
    validate_checkpoint(path, model_cls, config)
    model = model_cls.from_pretrained(path, config=config, **kwargs).eval()
    tokenizer = None
    if with_tokenizer and any(path.glob("tokenizer*")):
        from transformers import AutoTokenizer

        # never consult the folder's auto_map: loading must not run (or ask to run) its code
        tokenizer = AutoTokenizer.from_pretrained(path, config=config, trust_remote_code=False)
    return model, tokenizer
