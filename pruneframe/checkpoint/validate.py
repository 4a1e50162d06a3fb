"""Checks on a checkpoint folder before anything is loaded from it.

:func:`is_checkpoint_folder` says whether a folder is a pruneframe checkpoint and
:func:`check_replaceable` refuses to let a checkpoint replace anything else.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["REPORT_FILE", "is_checkpoint_folder", "check_replaceable"]

#: The record every pruneframe checkpoint carries (written last into the folder, before it is renamed into place).
REPORT_FILE = "pruning.json"


def is_checkpoint_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding a pruneframe checkpoint's ``config.json`` and ``pruning.json``."""
    folder = Path(path)
    return (folder / "config.json").is_file() and (folder / REPORT_FILE).is_file()


def _is_empty(path: Path) -> bool:
    return (path.is_dir() and not any(path.iterdir())) or (path.is_file() and path.stat().st_size == 0)


def check_replaceable(path: str | Path) -> None:
    """Raise ``FileExistsError`` when writing a checkpoint to ``path`` would destroy anything but a checkpoint.

    A missing path, an empty folder and an existing pruneframe checkpoint may be replaced; any other
    file or folder may not (it is the user's own data).
    """
    target = Path(path)
    if not target.exists() and not target.is_symlink():
        return
    if _is_empty(target) or is_checkpoint_folder(target):
        return
    what = "a file" if not target.is_dir() else "a folder that is not a pruneframe checkpoint"
    raise FileExistsError(f"{str(target)!r} is {what}; refusing to replace it (choose another output path)")
