"""*Moby-Dick*'s two disjoint halves: the development part and the test part."""

from __future__ import annotations

import re

from pruneframe.data.text_source import DataSourceError

__all__ = ["moby_dick_part"]

_CHAPTER = re.compile(r"^CHAPTER \d+\b", re.MULTILINE)


def moby_dick_part(text: str, split: str) -> str:
    """One of the two disjoint halves of *Moby-Dick*: ``validation`` (before the cut) or ``test`` (from it on).

    The cut is the ``CHAPTER n`` heading nearest to the middle of the text (chapter 67 of 135 in the
    Gutenberg text), so no sentence is shared: the front matter and first half are the development part
    (``validation``, also what ``calibration`` reads), the second half and the epilogue are ``test``.

    Raises:
        DataSourceError: the text has no ``CHAPTER`` headings, or ``split`` is neither part.
    """
    starts = [m.start() for m in _CHAPTER.finditer(text)]
    if not starts:
        raise DataSourceError("moby-dick: no 'CHAPTER n' headings found; is this the Gutenberg text of Moby-Dick?")
    cut = min(starts, key=lambda start: abs(start - len(text) // 2))
    if split == "validation":
        return text[:cut]
    if split == "test":
        return text[cut:]
    raise DataSourceError(f"moby-dick: unknown part {split!r}; expected 'validation' or 'test'")
