"""``--config FILE``: a YAML or JSON settings file read safely, and its shape checked by the settings model.

The file is read whole only when it is a regular file of at most
:data:`~pruneframe.util.io.SMALL_FILE_LIMIT` bytes of UTF-8 text; a YAML error is reported in one line
with its position. :func:`file_shape` derives from a settings model the model that checks the types of
the file's values (a list where a list belongs, a mapping where a mapping belongs) before they are
merged with the flags; the settings model itself then checks the merged values. A perplexity protocol
named by a flag replaces the file's own protocol settings (:func:`protocol_flag_over_file`).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from pruneframe.settings.errors import InputError, explain
from pruneframe.settings.fields import normalise_methods
from pruneframe.util.io import read_small_text
from pruneframe.util.paths import name_problem, user_path

__all__ = ["MAX_VALUES", "read_config_file", "file_shape", "check_file_shape", "protocol_flag_over_file"]

#: The most values (scalars, lists and mappings, counted with YAML aliases expanded) a settings file may hold.
MAX_VALUES = 100_000


def _yaml_message(exc: Exception) -> str:
    """A YAML error in one line: what was being read, the problem and where."""
    mark = getattr(exc, "problem_mark", None)
    parts = [getattr(exc, "context", None), getattr(exc, "problem", None)]
    text = ", ".join(str(p) for p in parts if p) or str(exc)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return " ".join(text.split()) + where


def _too_many_values(data: Any, limit: int) -> bool:
    """Whether ``data`` holds more than ``limit`` values, shared (aliased) values counted at each use."""
    pending, seen = [data], 0
    while pending:
        value = pending.pop()
        seen += 1
        if seen > limit:
            return True
        if isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, (list, tuple, set)):
            pending.extend(value)
    return False


def read_config_file(path: Path) -> dict[str, Any]:
    """The mapping in a YAML or JSON file (YAML is a superset of JSON, so one parser reads both).

    Raises:
        InputError: naming the file: unreadable, not a small regular UTF-8 file, not YAML, nested too
            deeply, too many values, or not a mapping.
    """
    import yaml

    shown = f"config file {str(path)!r}"
    problem = name_problem(path)
    if problem is not None:
        raise InputError(f"{shown}: {problem}")
    try:
        text = read_small_text(user_path(path))
    except OSError as exc:
        raise InputError(f"{shown}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise InputError(f"config file {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(f"{shown}: not valid YAML/JSON: {_yaml_message(exc)}") from exc
    except RecursionError:
        raise InputError(f"{shown}: nested too deeply to be a settings file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{shown}: expected a mapping at the top level, got {type(data).__name__}")
    if _too_many_values(data, MAX_VALUES):
        raise InputError(f"{shown}: more than {MAX_VALUES:,} values (YAML aliases expanded); a settings file needs far fewer")
    return normalise_methods(data)


@functools.cache
def file_shape(model: type[BaseModel]) -> type[BaseModel]:
    """A model with ``model``'s fields, each optional and without the checks across fields: the shape of a settings file.

    It has the settings model's name, so its errors read as the settings model's.
    """
    fields: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        annotation = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
        fields[name] = (annotation | None, None)
    return create_model(model.__name__, __config__=ConfigDict(extra="forbid"), **fields)


def check_file_shape(data: dict[str, Any], model: type[BaseModel], path: Path) -> None:
    """Raise :class:`InputError` naming ``path`` when a value of the file's ``data`` has the wrong type for ``model``."""
    try:
        file_shape(model).model_validate(data)
    except ValidationError as exc:
        raise InputError(f"{explain(exc)} (from {path})") from exc


_PROTOCOL_FIXED = ("sources", "data", "split", "seq_len", "num_windows")
_SOURCE_KEYS = ("sources", "data", "split")


def protocol_flag_over_file(file_settings: dict[str, Any], flag_settings: dict[str, Any]) -> dict[str, Any]:
    """``file_settings`` without the perplexity settings that the flags replace as a whole.

    A ``--protocol`` flag names a whole perplexity protocol (sources, window length and count), so the
    file's own values of those settings are dropped rather than reported as conflicting with it; flags
    given next to ``--protocol`` still apply (and are checked against it). ``--eval-data`` replaces the
    file's sources (given as ``sources`` or as the one-source ``data``/``split`` shorthand).
    """
    flagged = (flag_settings.get("evaluation") or {}).get("perplexity") or {}
    file_ppl = (file_settings.get("evaluation") or {}).get("perplexity")
    if not isinstance(file_ppl, dict):
        return file_settings
    dropped = _PROTOCOL_FIXED if "protocol" in flagged else _SOURCE_KEYS if "sources" in flagged else ()
    kept = {k: v for k, v in file_ppl.items() if k not in dropped}
    return {**file_settings, "evaluation": {**file_settings["evaluation"], "perplexity": kept}}
