"""One resolver for every text source: local files and folders, named corpora, the hub, ``embedded``.

``resolve_text(source, split)`` returns a :class:`TextSource`. Accepted ``source`` values:

- a local file (``.txt``, ``.jsonl`` with a ``"text"`` field, WikiText ``.raw``/``.tokens``) or a folder of
  such files (concatenated in sorted name order; when some file names mention the split, e.g.
  ``wiki.test.raw``, only those are used, so a folder never mixes calibration and test text);
- ``wikitext-2``, ``ptb``, ``c4``: first looked up under ``$PRUNEFRAME_DATA_DIR``, then on the hub;
- ``moby-dick``: ``<data dir>/literature/moby_dick.txt``, cut at a chapter heading into two disjoint halves
  (see :func:`moby_dick_part`), local only;
- ``hf:owner/name[:config]``: any ``datasets`` id (column ``text``, else the only string column);
- ``embedded``: the standard library's documentation topics (see :mod:`pruneframe.data.embedded`),
  available offline everywhere, split into disjoint ``calibration`` and ``test`` parts;
- ``embedded-code`` and ``embedded-papers``: the standard library's own modules and the benchmark papers'
  abstracts shipped in the installed ``lm_eval`` (see :mod:`pruneframe.data.installed`), also offline
  everywhere and split the same way, in two more domains.

When nothing works a :class:`DataSourceError` lists every path and name tried and how to provide the data.

Every source carries a **domain** tag: the folder a named corpus lives in (``wikitext-2``, ``ptb``, ``c4``,
``literature``), ``embedded`` (documentation prose), ``code`` (``embedded-code``), ``research``
(``embedded-papers``), ``hf:owner/name``, or for any other local path its folder
(``folder:/abs/path``). A local file inside ``<data dir>/<corpus folder>`` gets that corpus's tag, so
``<data dir>/wikitext-2/wiki.valid.tokens`` passed as a path is in the same domain as ``wikitext-2``.
Two sources share a domain exactly when their tags are equal.

The pieces every source shares are their own modules: :mod:`~pruneframe.data.text_source` (what a
source is), :mod:`~pruneframe.data.local_files` (reading files and folders),
:mod:`~pruneframe.data.moby_dick` (its halves) and :mod:`~pruneframe.data.disjoint` (the overlap check).
"""

from __future__ import annotations

import functools
import os
import socket
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pruneframe.data.disjoint import check_disjoint
from pruneframe.data.embedded import embedded_origin, embedded_text
from pruneframe.data.installed import code_halves, code_origin, paper_halves, paper_origin
from pruneframe.data.local_files import TEXT_SUFFIXES, folder_files, read_text_file
from pruneframe.data.moby_dick import moby_dick_part
from pruneframe.data.text_source import DataSourceError, TextSource, make_source
from pruneframe.util.paths import user_path

__all__ = [
    "DataSourceError",
    "TextSource",
    "resolve_text",
    "data_dir",
    "hub_reachable",
    "check_disjoint",
    "moby_dick_part",
    "eval_source_catalog",
    "EMBEDDED_SOURCES",
    "TEXT_SUFFIXES",
]


_HOW_TO = (
    "To provide the data: set PRUNEFRAME_DATA_DIR to a folder that holds it, pass a local file or "
    "folder path, or go online so the hub dataset can be downloaded (with it already in the Hugging Face "
    "cache, HF_DATASETS_OFFLINE=1 reads it offline; use 'embedded' for a corpus that needs neither)."
)


# ----------------------------------------------------------------------------- local files


def data_dir() -> Path | None:
    """The shared data folder: ``$PRUNEFRAME_DATA_DIR``, else ``../shared/data`` beside the checkout.

    Returns None when the variable is unset and the default folder does not exist.
    """
    env = os.environ.get("PRUNEFRAME_DATA_DIR")
    if env:
        return user_path(env)
    default = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return default if default.is_dir() else None


def _local_domain(path: Path) -> str:
    """The domain of a local file or folder: a named corpus's folder under the data dir, else ``folder:<abs>``."""
    folder = path.resolve() if path.is_dir() else path.resolve().parent
    root = data_dir()
    if root is not None and folder.parent == root.resolve() and folder.name in {n.folder for n in _NAMED.values()}:
        return folder.name
    return f"folder:{folder}"


def _from_local(name: str, path: Path, split: str) -> TextSource:
    domain = _local_domain(path)
    if path.is_file():
        return make_source(name, str(path.resolve()), "file", read_text_file(path), domain)
    files = folder_files(path, split)
    if not files:
        raise DataSourceError(f"text source {name!r}: folder {str(path)!r} holds no files ending in {', '.join(TEXT_SUFFIXES)}")
    text = "\n\n".join(read_text_file(p) for p in files)
    origin = str(path.resolve()) + " [" + ", ".join(p.name for p in files) + "]"
    return make_source(name, origin, split, text, domain)


# ----------------------------------------------------------------------------- the hub


@functools.lru_cache(maxsize=1)
def _probe_hub(endpoint: str, timeout_s: float) -> str | None:
    parsed = urllib.parse.urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return f"{host}:{port} unreachable ({exc})"


def _offline_env() -> bool:
    return any(
        os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"} for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def hub_reachable(timeout_s: float = 3.0) -> tuple[bool, str]:
    """Whether the Hugging Face hub can be contacted, probed once per process with a short timeout.

    Returns ``(True, "")`` when reachable or when an offline variable (``HF_HUB_OFFLINE`` etc.) is set,
    in which case the libraries answer from their local cache; otherwise ``(False, reason)``. This keeps
    an offline machine from waiting through the hub clients' retries.
    """
    if _offline_env():
        return True, ""
    reason = _probe_hub(os.environ.get("HF_ENDPOINT", "https://huggingface.co"), timeout_s)
    return (reason is None), (reason or "")


def _text_column(dataset: Any, hub_id: str) -> str:
    columns = dict(dataset.features)
    for preferred in ("text", "sentence", "content"):
        if preferred in columns:
            return preferred
    strings = [c for c, f in columns.items() if getattr(f, "dtype", None) == "string"]
    if len(strings) == 1:
        return strings[0]
    raise DataSourceError(f"hub dataset {hub_id!r}: no 'text' column and no single string column in {list(columns)}")


def _from_hub(path: str, config: str | None, split: str, *, data_files: dict[str, str] | None = None, max_rows: int | None = None) -> tuple[str, str]:
    """Load ``path``/``config`` from the hub and join its text column with blank lines.

    Returns ``(text, origin)``. Raises ``ConnectionError``-like exceptions when unreachable.
    """
    ok, reason = hub_reachable()
    if not ok:
        raise ConnectionError(reason)
    import datasets  # imported lazily: heavy

    kwargs: dict[str, Any] = {"split": split}
    if data_files is not None:
        kwargs["data_files"] = data_files
    dataset = datasets.load_dataset(path, config, **kwargs)
    if max_rows is not None:
        dataset = dataset.select(range(min(max_rows, len(dataset))))
    column = _text_column(dataset, path)
    origin = f"hf:{path}" + (f":{config}" if config else "") + (f" {data_files[split]}" if data_files else "")
    if max_rows is not None:
        origin += f" (first {max_rows} rows)"
    return "\n\n".join(dataset[column]), origin


# ----------------------------------------------------------------------------- named corpora


@dataclass(frozen=True)
class _Named:
    """A named corpus: split aliases, local file candidates and a hub recipe."""

    folder: str
    splits: dict[str, str]  # user split -> canonical split
    local: dict[str, tuple[str, ...]]  # canonical split -> file names under $PRUNEFRAME_DATA_DIR/folder
    hub: Callable[[str], tuple[str, str]]  # canonical split -> (text, origin)
    hub_label: Callable[[str], str]
    part: Callable[[str, str], str] | None = None  # (whole local file text, canonical split) -> that split's text


_C4_FILES = {
    "validation": "en/c4-validation.00000-of-00008.json.gz",
    "train": "en/c4-train.00000-of-01024.json.gz",
}
_C4_ROWS = 5000
_STD_SPLITS = {
    "test": "test",
    "validation": "validation",
    "valid": "validation",
    "calibration": "validation",
    "train": "train",
}

_NAMED: dict[str, _Named] = {
    "wikitext-2": _Named(
        folder="wikitext-2",
        splits=_STD_SPLITS,
        local={
            "test": ("wiki.test.raw", "wiki.test.tokens"),
            "validation": ("wiki.valid.tokens", "wiki.valid.raw"),
            "train": ("wiki.train.raw", "wiki.train.tokens"),
        },
        hub=lambda split: _from_hub("wikitext", "wikitext-2-raw-v1", split),
        hub_label=lambda split: f"hub dataset wikitext/wikitext-2-raw-v1 split {split!r}",
    ),
    "ptb": _Named(
        folder="ptb",
        splits=_STD_SPLITS,
        local={
            "test": ("ptb.test.txt",),
            "validation": ("ptb.valid.txt",),
            "train": ("ptb.train.txt",),
        },
        hub=lambda split: _from_hub("ptb-text-only/ptb_text_only", "penn_treebank", split),
        hub_label=lambda split: f"hub dataset ptb-text-only/ptb_text_only/penn_treebank split {split!r}",
    ),
    "c4": _Named(
        folder="c4",
        splits={"test": "validation", "validation": "validation", "valid": "validation", "calibration": "train", "train": "train"},
        local={
            "validation": ("c4-validation.jsonl", "validation.jsonl"),
            "train": ("c4-train.jsonl", "train.jsonl"),
        },
        hub=lambda split: _from_hub("allenai/c4", None, split, data_files={split: _C4_FILES[split]}, max_rows=_C4_ROWS),
        hub_label=lambda split: f"hub dataset allenai/c4 file {_C4_FILES[split]} (first {_C4_ROWS} rows)",
    ),
}
_NAMED["moby-dick"] = _Named(
    folder="literature",
    splits={"test": "test", "validation": "validation", "valid": "validation", "dev": "validation", "calibration": "validation"},
    local={"test": ("moby_dick.txt",), "validation": ("moby_dick.txt",)},
    hub=lambda split: _no_hub("moby-dick"),
    hub_label=lambda split: "the hub (moby-dick is read from the data folder only)",
    part=lambda text, split: moby_dick_part(text, split),
)
_ALIASES = {"wikitext2": "wikitext-2", "wikitext": "wikitext-2", "wikitext-2-raw-v1": "wikitext-2", "c4-en": "c4"}


def _no_hub(name: str) -> tuple[str, str]:
    raise DataSourceError(f"{name} has no hub recipe")


@dataclass(frozen=True)
class _Embedded:
    """A corpus every install has: its text per canonical split, where it comes from, its domain tag."""

    text: Callable[[str], str]
    origin: Callable[[], str]
    domain: str


#: The corpora available offline everywhere, by source name, in report order.
EMBEDDED_SOURCES: dict[str, _Embedded] = {
    "embedded": _Embedded(embedded_text, embedded_origin, "embedded"),
    "embedded-code": _Embedded(lambda split: code_halves().text[split], code_origin, "code"),
    "embedded-papers": _Embedded(lambda split: paper_halves().text[split], paper_origin, "research"),
}

_EMBEDDED_SPLITS = {
    "test": "test",
    "calibration": "calibration",
    "calib": "calibration",
    "train": "calibration",
    "validation": "calibration",
    "valid": "calibration",
}


def _error(source: str, split: str, tried: list[str]) -> DataSourceError:
    lines = "\n".join(f"  - {item}" for item in tried)
    return DataSourceError(f"could not resolve text source {source!r} (split {split!r}). Tried:\n{lines}\n{_HOW_TO}")


def _split_for(source: str, split: str, table: dict[str, str]) -> str:
    if split not in table:
        raise DataSourceError(f"text source {source!r}: unknown split {split!r}; expected one of {sorted(table)}")
    return table[split]


def _resolve_named(source: str, key: str, split: str, tried: list[str]) -> TextSource:
    named = _NAMED[key]
    canonical = _split_for(source, split, named.splits)
    root = data_dir()
    via = "PRUNEFRAME_DATA_DIR" if os.environ.get("PRUNEFRAME_DATA_DIR") else "default data dir"
    if root is None:
        tried.append("$PRUNEFRAME_DATA_DIR (unset; default ../shared/data beside the checkout does not exist)")
    else:
        for file_name in named.local.get(canonical, ()):
            candidate = root / named.folder / file_name
            if candidate.is_file():
                text = read_text_file(candidate)
                if named.part is not None:
                    text = named.part(text, canonical)
                return make_source(source, str(candidate.resolve()), canonical, text, named.folder)
            tried.append(f"{candidate} (not found; {via})")
    try:
        text, origin = named.hub(canonical)
    except Exception as exc:  # noqa: BLE001 - any hub failure becomes a listed attempt
        tried.append(f"{named.hub_label(canonical)} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
        raise _error(source, split, tried) from exc
    return make_source(source, origin, canonical, text, named.folder)


def _resolve_hf(source: str, split: str, tried: list[str]) -> TextSource:
    spec = source[len("hf:") :]
    path, _, config = spec.partition(":")
    if not path:
        raise DataSourceError(f"text source {source!r}: expected 'hf:owner/name[:config]'")
    canonical = {"calibration": "train", "valid": "validation"}.get(split, split)
    try:
        text, origin = _from_hub(path, config or None, canonical)
    except DataSourceError:
        raise
    except Exception as exc:  # noqa: BLE001
        first = str(exc).splitlines()[0] if str(exc) else ""
        tried.append(f"hub dataset {spec!r} split {canonical!r} ({type(exc).__name__}: {first})")
        raise _error(source, split, tried) from exc
    return make_source(source, origin, canonical, text, f"hf:{path}")


def resolve_text(source: str, split: str = "test") -> TextSource:
    """Resolve ``source`` (a path, ``wikitext-2``, ``ptb``, ``c4``, ``moby-dick``, ``hf:id[:config]``, ``embedded``,
    ``embedded-code`` or ``embedded-papers``).

    ``split`` selects the part: ``test``, ``validation``, ``train`` or ``calibration`` (for named corpora
    ``calibration`` means ``validation``, for ``c4`` it means ``train``, for the ``embedded`` corpora and
    ``moby-dick`` it is the half that ``test`` never reads). A single local file is used whole and reported with split ``"file"``.

    Raises:
        DataSourceError: nothing matched; the message lists every path and name tried.
    """
    tried: list[str] = []
    key = source.strip()
    lowered = key.lower()
    if lowered in EMBEDDED_SOURCES:
        corpus = EMBEDDED_SOURCES[lowered]
        canonical = _split_for(source, split, _EMBEDDED_SPLITS)
        try:
            text = corpus.text(canonical)
        except (OSError, UnicodeError) as exc:
            raise DataSourceError(f"text source {source!r}: {exc}") from exc
        return make_source(source, corpus.origin(), canonical, text, corpus.domain)
    if lowered.startswith("hf:"):
        return _resolve_hf(key, split, tried)
    path = user_path(key)
    if path.exists():
        return _from_local(source, path, split)
    tried.append(f"local path {str(path.resolve())!r} (not found)")
    named = _ALIASES.get(lowered, lowered)
    if named in _NAMED:
        return _resolve_named(source, named, split, tried)
    known = ", ".join([*_NAMED, *EMBEDDED_SOURCES, "hf:owner/name[:config]"])
    tried.append(f"named corpora ({known}): {source!r} is none of them")
    raise _error(source, split, tried)


# ----------------------------------------------------------------------------- default evaluation sources

#: Named evaluation corpora read from the data folder when their test file is there, in report order.
_LOCAL_EVAL_CORPORA: tuple[str, ...] = ("wikitext-2", "moby-dick")
#: Hub corpora added when the hub answers (and no offline variable is set).
_HUB_EVAL_CORPORA: tuple[str, ...] = ("c4", "ptb")


def eval_source_catalog(online: bool | None = None) -> list[str]:
    """The perplexity sources available here, each read with split ``test``, in report order.

    Offline: ``wikitext-2`` and ``moby-dick`` when their files are under the data folder, and ``embedded``
    (always). When the data folder supplies fewer than two sources, the other corpora every install has
    join (:data:`EMBEDDED_SOURCES`: ``embedded-code``, ``embedded-papers``), so a machine with no data folder
    and no hub still evaluates three domains. Online (``online=None`` probes :func:`hub_reachable`; an
    offline variable such as ``HF_HUB_OFFLINE`` counts as offline here) also ``c4`` (validation) and
    ``ptb`` (test), unless the data folder already holds them.
    """
    root = data_dir()
    found = []
    for name in (*_LOCAL_EVAL_CORPORA, *_HUB_EVAL_CORPORA):
        named = _NAMED[name]
        canonical = named.splits["test"]
        if root is not None and any((root / named.folder / f).is_file() for f in named.local.get(canonical, ())):
            found.append(name)
    found += list(EMBEDDED_SOURCES) if len(found) < 2 else ["embedded"]
    if online is None:
        online = not _offline_env() and hub_reachable()[0]
    if online:
        found += [name for name in _HUB_EVAL_CORPORA if name not in found]
    return found
