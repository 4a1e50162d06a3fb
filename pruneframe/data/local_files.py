"""Local text files and folders: which files a folder holds for a split, and their text.

A file is read whole (``.jsonl``: the ``"text"`` field of every row, joined by blank lines); a folder
gives the files whose names mention the split, else those naming no split (see :func:`folder_files`).
"""

from __future__ import annotations

from pathlib import Path

from pruneframe.data.jsonl import iter_jsonl
from pruneframe.data.text_source import DataSourceError

__all__ = ["TEXT_SUFFIXES", "folder_files", "read_text_file"]


#: File name endings read as text.
TEXT_SUFFIXES: tuple[str, ...] = (".txt", ".jsonl", ".raw", ".tokens")


def _read_jsonl(path: Path) -> str:
    texts: list[str] = []
    for lineno, row in iter_jsonl(path, error=DataSourceError):
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise DataSourceError(f"{path}:{lineno}: expected an object with a string 'text' field")
        texts.append(row["text"])
    return "\n\n".join(texts)


def read_text_file(path: Path) -> str:
    """The text of a local file whose name ends in one of :data:`TEXT_SUFFIXES`."""
    if path.suffix == ".jsonl":
        return _read_jsonl(path)
    if path.suffix not in TEXT_SUFFIXES:
        raise DataSourceError(f"text source {str(path)!r}: unsupported file type {path.suffix!r}; expected one of {TEXT_SUFFIXES}")
    return path.read_text(encoding="utf-8")


_SPLIT_WORDS: dict[str, tuple[str, ...]] = {
    "test": ("test",),
    "validation": ("valid", "validation", "val", "dev"),
    "train": ("train",),
    "calibration": ("calibration", "calib", "valid", "validation", "val", "dev", "train"),
}
_ALL_SPLIT_WORDS = frozenset(w for words in _SPLIT_WORDS.values() for w in words)


def _name_words(path: Path) -> set[str]:
    return set(path.name.lower().replace("-", ".").replace("_", ".").split("."))


def folder_files(folder: Path, split: str) -> list[Path]:
    """Files of ``folder`` for ``split``: those whose names mention it, else those naming no split."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in TEXT_SUFFIXES)
    words = set(_SPLIT_WORDS.get(split, (split,)))
    mentioning = [p for p in files if _name_words(p) & words]
    if mentioning:
        return mentioning
    neutral = [p for p in files if not _name_words(p) & _ALL_SPLIT_WORDS]
    if neutral:
        return neutral
    if files:
        raise DataSourceError(
            f"text source {str(folder)!r}: no file for split {split!r} among {[p.name for p in files]} "
            "(file names mention other splits; pass the file itself or choose another split)"
        )
    return []
