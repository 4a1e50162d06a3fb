"""Split a set of documents into two disjoint halves: ``calibration`` and ``test``.

Documents are dealt whole, largest first, to whichever half holds fewer characters, so each half is
made of complete documents and the two are of roughly equal size. Documents of one corpus often share
text (a licence quoted by two packages, a helper copied between two modules), so a paragraph of the
``test`` half is then dropped when it shares any run of :data:`SHINGLE_WORDS` consecutive words with the
``calibration`` half. No passage long enough to hold that many words appears in both halves, which is
what :func:`pruneframe.data.sources.check_disjoint` verifies with 200-character passages.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["SPLITS", "SHINGLE_WORDS", "Halves", "split_halves"]

#: The two halves, in dealing order (a tie goes to ``calibration``).
SPLITS: tuple[str, str] = ("calibration", "test")
#: Consecutive words two halves may not share.
SHINGLE_WORDS = 12


@dataclass(frozen=True)
class Halves:
    """The two halves of a corpus.

    Attributes:
        keys: per half, the sorted keys of the documents dealt to it.
        text: per half, its documents in key order joined by blank lines (``test`` without the dropped
            paragraphs).
        dropped: how many ``test`` paragraphs were dropped for sharing words with ``calibration``.
    """

    keys: dict[str, tuple[str, ...]]
    text: dict[str, str]
    dropped: int


def _shingles(words: list[str]) -> Iterable[int]:
    for i in range(len(words) - SHINGLE_WORDS + 1):
        yield hash(tuple(words[i : i + SHINGLE_WORDS]))


def split_halves(documents: Mapping[str, str], paragraph_sep: str = "\n\n") -> Halves:
    """Deal ``documents`` (key -> text) into two disjoint halves; see the module docstring.

    ``paragraph_sep`` is the separator that cuts a ``test`` document into the paragraphs that may be
    dropped. The result depends only on the documents' keys and texts.
    """
    size = {split: 0 for split in SPLITS}
    parts: dict[str, list[str]] = {split: [] for split in SPLITS}
    for key in sorted(documents, key=lambda k: (-len(documents[k]), k)):
        side = min(SPLITS, key=lambda s: (size[s], SPLITS.index(s)))
        parts[side].append(key)
        size[side] += len(documents[key])
    keys = {split: tuple(sorted(found)) for split, found in parts.items()}
    calibration = "\n\n".join(documents[k].strip("\n") for k in keys["calibration"])
    seen = set(_shingles(calibration.split()))
    kept_docs: list[str] = []
    dropped = 0
    for key in keys["test"]:
        kept = []
        for para in documents[key].strip("\n").split(paragraph_sep):
            if any(s in seen for s in _shingles(para.split())):
                dropped += 1
            else:
                kept.append(para)
        if any(p.strip() for p in kept):
            kept_docs.append(paragraph_sep.join(kept).strip("\n"))
    return Halves(keys=keys, text={"calibration": calibration, "test": "\n\n".join(kept_docs)}, dropped=dropped)
