"""What identifies a model's weights: its spec, where it resolved, its config's hash and its weight files' digests.

A run's cache key, a recovery's teacher outputs and a prune's report all carry this identity, so
weights rebuilt byte for byte keep it and any other bytes change it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pruneframe.models.resolver import resolve_model_path
from pruneframe.models.smollm2 import cache_root
from pruneframe.util.digests import sha256_file
from pruneframe.util.io import read_small_text, write_json_atomic

__all__ = ["model_identity", "weights_digest"]

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


def model_identity(spec: str) -> dict[str, Any]:
    """What identifies the model weights: the resolved folder's config hash and weight-file stats, or the hub id.

    Weight files are fingerprinted by name and content (:func:`weights_digest`, read once per file
    version), so weights rebuilt byte for byte keep the key and any other bytes change it.
    """
    resolved = resolve_model_path(spec)
    identity: dict[str, Any] = {"spec": spec, "kind": resolved.kind, "location": resolved.location}
    folder = Path(resolved.location)
    if resolved.kind == "hub" or not folder.is_dir():
        return identity
    stats = sorted((p.name, weights_digest(p)) for p in folder.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES))
    identity["config_sha256"] = sha256_file(folder / "config.json")[:16] if (folder / "config.json").is_file() else None
    identity["weights_fingerprint"] = hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:16]
    return identity


def _digest_memo() -> Path:
    return cache_root() / "weight-digests.json"


def weights_digest(path: Path) -> str:
    """The SHA-256 of a weight file's bytes, remembered per (resolved path, size, mtime) in ``$PRUNEFRAME_CACHE``.

    The first call on a file version reads it whole (as loading it does); later calls read one small
    JSON file. A memo that cannot be read or written only costs the hash again.
    """
    info = path.stat()
    key = str(path.resolve())
    stamp = [info.st_size, info.st_mtime_ns]
    memo_path = _digest_memo()
    try:
        memo = json.loads(read_small_text(memo_path))
    except (OSError, ValueError, RecursionError):  # absent, unreadable or not JSON: start afresh
        memo = {}
    memo = memo if isinstance(memo, dict) else {}
    entry = memo.get(key)
    if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = sha256_file(path)
    memo = {k: v for k, v in memo.items() if Path(k).exists()}  # files gone (temporary folders) are forgotten
    memo[key] = {"stamp": stamp, "sha256": digest}
    try:
        write_json_atomic(memo_path, memo)
    except OSError:  # a read-only cache folder: the digest is still right, only not remembered
        pass
    return digest
