"""Digests of source code: which code produced a result.

:func:`package_digest` hashes every ``.py`` file of the top-level package that defines an object (a
class, an instance, a module or a module name). The run cache keys on it (pruneframe itself, each
method's plugin package, each evaluator's) and every :class:`~pruneframe.pipeline.prune_report.PruneReport`
records it for each plugin that carried out a stage. Digests are computed once per process and cached
(:func:`clear_digests` forgets them).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

__all__ = ["sha256_file", "source_hash", "package_root", "tree_digest", "package_digest", "top_package", "clear_digests"]


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


def top_package(obj: Any) -> str:
    """The top-level package defining ``obj`` (a class, an instance, a module or a dotted module name)."""
    if isinstance(obj, str):
        name = obj
    else:
        name = obj.__name__ if inspect.ismodule(obj) else getattr(obj, "__module__", None) or ""
    return name.split(".")[0]


def package_digest(obj: Any) -> str:
    """The :func:`tree_digest` of the top-level package defining ``obj`` (see :func:`top_package`).

    For a method plugin that is its whole plugin package (every file of it, not only the one holding
    the class); for code in ``__main__`` the hash of its file; ``"unknown"`` without files (a REPL).
    """
    top = top_package(obj)
    if not top or top == "__main__":  # no package: the file defining it, if any
        if isinstance(obj, str):
            return "unknown"
        return source_hash(obj if inspect.ismodule(obj) or inspect.isclass(obj) else type(obj))
    root = package_root(top)
    return tree_digest(root) if root is not None and root.exists() else "unknown"


def clear_digests() -> None:
    """Forget the cached package digests (the next digest reads the files again)."""
    tree_digest.cache_clear()
