"""Run cache: a finished run is stored as JSON with the key of everything that shaped it.

A run is reused when its JSON exists, parses, finished, and carries the same key; anything else
(missing, half-written by an older version, other settings) is recomputed. Because every run file is
written atomically when the run ends, an interrupted comparison resumes at the first unfinished run.

The key is a SHA-256 over: the model's identity (spec, resolved location, config.json hash, weight
file names + content digests, or the hub id), the dtype and device, the method name + validated config
dump + the digest of the method's whole package, the budget, the seed, the calibration stream's
fingerprint and size, the evaluation protocol (each evaluator's validated settings, its data
fingerprints and its package's digest), the stage implementations (the plugin handling the model's
architecture and, for score, project, recalibrate and fold, every plugin implementing the stage, in the
order they are tried, each with its package's digest: see
:meth:`~pruneframe.pipeline.host.PluginHost.stage_candidates`), and :func:`code_identity`: the digest of every
``.py`` file of the ``pruneframe`` package, the versions of pruneframe, torch, transformers and lm-eval,
and the results schema version. An edit anywhere in that code (a comment included), or installing,
removing or editing a plugin that overrides a stage or handles the architecture, recomputes the runs.

Package digests (:mod:`pruneframe.util.digests`) are computed once per process and cached
(:func:`clear_digests` forgets them).
The model's identity is :mod:`pruneframe.models.identity`'s (:func:`model_identity`, re-exported here).
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any

from pruneframe.util.digests import clear_digests, package_digest, package_root, sha256_file, source_hash, tree_digest
from pruneframe.models.identity import model_identity, weights_digest

__all__ = [
    "SCHEMA_VERSION",
    "sha256_file",
    "source_hash",
    "package_root",
    "tree_digest",
    "package_digest",
    "clear_digests",
    "model_identity",
    "weights_digest",
    "code_identity",
    "cache_key",
    "load_cached",
]

#: Bumped whenever the layout of a run's JSON changes, so older files are recomputed.
SCHEMA_VERSION = 3
#: Distributions whose versions shape a run's numbers (the import machinery, the models, the zero-shot harness).
_VERSIONED = ("pruneframe", "torch", "transformers", "lm_eval")


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
