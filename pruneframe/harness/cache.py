"""Run cache: a finished run is stored as JSON with the key of everything that shaped it.

A run is reused when its JSON exists, parses, finished, and carries the same key; anything else
(missing, half-written by an older version, other settings) is recomputed. Because every run file is
written atomically when the run ends, an interrupted comparison resumes at the first unfinished run.

The key is a SHA-256 over: the model's identity (spec, resolved location, config.json hash, weight
file names + sizes + mtimes, or the hub id), the dtype and device, the method name + validated config
dump + the digest of the method's whole package, the budget, the seed, the calibration stream's
fingerprint and size, the evaluation protocol (each evaluator's validated settings, its data
fingerprints and its package's digest), and :func:`code_identity`: the digest of every ``.py`` file of
the ``pruneframe`` package, the versions of pruneframe, torch, transformers and lm-eval, and the results
schema version. An edit anywhere in that code (a comment included) recomputes every run.

Package digests are computed once per process and cached (:func:`clear_digests` forgets them).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import inspect
import json
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from pruneframe.models import resolve_model_path

__all__ = [
    "SCHEMA_VERSION",
    "sha256_file",
    "source_hash",
    "package_root",
    "tree_digest",
    "package_digest",
    "clear_digests",
    "model_identity",
    "code_identity",
    "cache_key",
    "load_cached",
]

#: Bumped whenever the layout of a run's JSON changes, so older files are recomputed.
SCHEMA_VERSION = 2
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
#: Distributions whose versions shape a run's numbers (the import machinery, the models, the zero-shot harness).
_VERSIONED = ("pruneframe", "torch", "transformers", "lm_eval")


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_hash(obj: Any) -> str:
    """First 16 hex digits of the SHA-256 of the file defining ``obj`` (``"unknown"`` when it has none)."""
    try:
        return sha256_file(inspect.getfile(obj))[:16]
    except (TypeError, OSError):
        return "unknown"


def model_identity(spec: str) -> dict[str, Any]:
    """What identifies the model weights: the resolved folder's config hash and weight-file stats, or the hub id.

    Weight files are fingerprinted by name, size and modification time (hashing 500 MB per run start
    would cost more than it saves); rebuilding or replacing the weights changes the key.
    """
    resolved = resolve_model_path(spec)
    identity: dict[str, Any] = {"spec": spec, "kind": resolved.kind, "location": resolved.location}
    folder = Path(resolved.location)
    if resolved.kind == "hub" or not folder.is_dir():
        return identity
    stats = sorted(
        (p.name, p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.iterdir()
        if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES)
    )
    identity["config_sha256"] = sha256_file(folder / "config.json")[:16] if (folder / "config.json").is_file() else None
    identity["weights_fingerprint"] = hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:16]
    return identity


def package_root(package: str) -> Path | None:
    """The folder (or, for a one-file module, the file) holding top-level ``package``; None when it has none."""
    module = sys.modules.get(package)
    spec = getattr(module, "__spec__", None) if module is not None else importlib.util.find_spec(package)
    if spec is None:
        return None
    locations = list(spec.submodule_search_locations or [])
    if locations:
        return Path(locations[0])
    return Path(spec.origin) if spec.origin and spec.origin not in ("built-in", "frozen") else None


@functools.lru_cache(maxsize=None)
def tree_digest(root: Path) -> str:
    """First 16 hex digits of a SHA-256 over every ``.py`` file under ``root`` (or of ``root`` itself).

    Files are visited in sorted order of their path relative to ``root``; each contributes its relative
    path and its bytes, so adding, removing, renaming or editing any file changes the digest.
    """
    root = Path(root)
    files = [root] if root.is_file() else sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix())
    digest = hashlib.sha256()
    for file in files:
        name = file.name if file == root else file.relative_to(root).as_posix()
        digest.update(name.encode("utf-8") + b"\0")
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()[:16]


def package_digest(obj: Any) -> str:
    """The :func:`tree_digest` of the top-level package defining ``obj`` (a class, a module name or a module).

    For a method plugin that is its whole plugin package (every file of it, not only the one holding
    the class); ``"unknown"`` when the package has no files (e.g. defined in ``__main__``, a REPL).
    """
    if isinstance(obj, str):
        name = obj
    else:
        name = obj.__name__ if inspect.ismodule(obj) else getattr(obj, "__module__", None) or ""
    top = name.split(".")[0]
    if not top or top == "__main__":
        return source_hash(obj) if not isinstance(obj, str) else "unknown"
    root = package_root(top)
    return tree_digest(root) if root is not None and root.exists() else "unknown"


def clear_digests() -> None:
    """Forget the cached package digests (the next key reads the files again)."""
    tree_digest.cache_clear()


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def code_identity() -> dict[str, Any]:
    """What code a run was produced with: the ``pruneframe`` source digest, the versions that shape results, the schema."""
    return {
        "source": package_digest("pruneframe"),
        "versions": {name: _version(name) for name in _VERSIONED},
        "schema": SCHEMA_VERSION,
    }


def cache_key(fields: dict[str, Any]) -> str:
    """Hex SHA-256 of ``fields`` serialised canonically (sorted keys)."""
    payload = json.dumps(fields, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def load_cached(path: Path, key: str) -> dict[str, Any] | None:
    """The finished run stored at ``path`` when its key is ``key``; ``None`` when it must be (re)computed."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or record.get("cache_key") != key or record.get("status") != "ok":
        return None
    return record
