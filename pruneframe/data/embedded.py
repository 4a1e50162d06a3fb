"""The embedded corpus: English text that ships with every CPython, usable with no network.

The corpus is the documentation topics of the standard library's ``pydoc_data.topics`` (the text
``help("assert")`` prints). Several topics quote whole sections of others, so a naive split by topic
would leak text between calibration and test. Topics that share any paragraph are first merged into
connected groups; groups are then dealt, largest first, to whichever side is lighter. The result is two
disjoint parts of roughly equal size (no 200-character passage of one appears in the other), and the
same on every machine with the same Python version (the fingerprint of a :class:`TextSource` records it).
"""

from __future__ import annotations

import functools
import sys

__all__ = ["EMBEDDED_SPLITS", "embedded_topics", "embedded_text", "embedded_origin"]

#: The two disjoint parts of the embedded corpus.
EMBEDDED_SPLITS: tuple[str, str] = ("calibration", "test")

_MIN_SHARED_PARAGRAPH = 60  # paragraphs shorter than this ("See also: ...") do not link topics


def _topics() -> dict[str, str]:
    from pydoc_data import topics  # standard library, always present

    return dict(topics.topics)


def _linked_groups(topics: dict[str, str]) -> list[list[str]]:
    """Union topics that share a paragraph of at least ``_MIN_SHARED_PARAGRAPH`` characters."""
    parent = {key: key for key in topics}

    def find(key: str) -> str:
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    owner: dict[str, str] = {}
    for key in sorted(topics):
        for para in topics[key].split("\n\n"):
            para = para.strip()
            if len(para) < _MIN_SHARED_PARAGRAPH:
                continue
            if para in owner:
                parent[find(key)] = find(owner[para])
            else:
                owner[para] = key
    groups: dict[str, list[str]] = {}
    for key in sorted(topics):
        groups.setdefault(find(key), []).append(key)
    return list(groups.values())


@functools.lru_cache(maxsize=1)
def _assignment() -> dict[str, tuple[str, ...]]:
    topics = _topics()
    groups = _linked_groups(topics)
    size = {split: 0 for split in EMBEDDED_SPLITS}
    parts: dict[str, list[str]] = {split: [] for split in EMBEDDED_SPLITS}
    for group in sorted(groups, key=lambda g: (-sum(len(topics[k]) for k in g), g[0])):
        side = min(EMBEDDED_SPLITS, key=lambda s: (size[s], EMBEDDED_SPLITS.index(s)))
        parts[side].extend(group)
        size[side] += sum(len(topics[k]) for k in group)
    return {split: tuple(sorted(keys)) for split, keys in parts.items()}


def _check_split(split: str) -> str:
    if split not in EMBEDDED_SPLITS:
        raise ValueError(f"embedded corpus: unknown split {split!r}; expected one of {EMBEDDED_SPLITS}")
    return split


def embedded_topics(split: str) -> tuple[str, ...]:
    """The sorted ``pydoc_data.topics`` keys that make up ``split`` (``calibration`` or ``test``)."""
    return _assignment()[_check_split(split)]


@functools.lru_cache(maxsize=2)
def embedded_text(split: str) -> str:
    """The text of one part of the embedded corpus: its topics in key order, joined by blank lines."""
    topics = _topics()
    return "\n\n".join(topics[key].strip("\n") for key in embedded_topics(split))


def embedded_origin() -> str:
    """A short description of where the embedded text comes from (for protocol stamping)."""
    return f"pydoc_data.topics (Python {sys.version_info.major}.{sys.version_info.minor})"
