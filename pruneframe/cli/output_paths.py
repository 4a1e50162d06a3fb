"""Where a command writes: the path checked before any work starts, and a failed write named in one line.

:func:`check_output_path` refuses, before anything is created, an output path that could never be
written: a name no file system holds or that is not UTF-8, a dangling symbolic link, a device, pipe or
socket, a path under a regular file, and a folder where nothing can be created (read-only, no
permission, ``/proc``). It
tries the folder the first new entry would go into by creating and removing an empty folder there,
the one check that holds for every user (``root`` included) and every kind of file system.

:func:`writing` names the cause when the disk refuses the output while it is written (full, over quota,
read-only): :class:`OutputError`, which the command line prints in one line (exit 1). Every writer
builds its output beside the destination and renames it into place, so the previous output is intact.

:func:`folder_lock` holds an output folder for one writer at a time: a second comparison into the same
folder is refused by name instead of interleaving its records with the first one's.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pruneframe.settings.errors import InputError
from pruneframe.util.paths import name_problem, user_path

__all__ = ["OutputError", "DISK_ERRNOS", "check_output_path", "writing", "folder_lock"]

#: The ``errno`` values by which a file system refuses to take more data: full, over quota, file too large, read-only.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


class OutputError(Exception):
    """The output could not be written (a full disk, a read-only file system); the command line prints it and exits with 1."""


def _existing_folder(start: Path, shown: str) -> Path:
    """The nearest folder at or above ``start`` that exists; a regular file on the way is refused."""
    current = start
    while True:
        try:
            mode = os.stat(current).st_mode
        except (FileNotFoundError, NotADirectoryError):
            if current.parent == current:
                raise InputError(f"{shown}: none of its folders exists") from None
            current = current.parent
            continue
        except OSError as exc:
            raise InputError(f"{shown}: {str(current)!r}: {exc.strerror or exc}") from None
        if not stat.S_ISDIR(mode):
            raise InputError(f"{shown}: {str(current)!r} is a file, not a folder")
        return current


def _try_creating_in(folder: Path, shown: str) -> None:
    """Create and remove an empty folder in ``folder``; refuse ``shown`` naming why the system would not."""
    try:
        probe = tempfile.mkdtemp(prefix=".pruneframe-probe-", dir=folder)
    except OSError as exc:
        raise InputError(f"{shown}: nothing can be written in {str(folder)!r} ({exc.strerror or exc})") from None
    os.rmdir(probe)


def check_output_path(text: str | os.PathLike[str], flag: str, kind: Literal["folder", "file"]) -> Path:
    """``text`` as the path a ``kind`` is written to, or :class:`InputError` naming ``flag`` and the path.

    Nothing is created (the probe folder is removed at once). Whether an existing output may be
    replaced is the caller's question (:func:`pruneframe.cli.common.guard_output`).
    """
    shown = f"{flag} {os.fspath(text)!r}"
    problem = name_problem(text)
    if problem is not None:
        raise InputError(f"{shown}: {problem}")
    try:
        os.fspath(text).encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8, as Python decodes them from the command line
        raise InputError(f"{shown}: the name is not UTF-8 text, which the libraries that write models and tokenizers need") from None
    target = user_path(text)
    try:
        mode: int | None = os.lstat(target).st_mode
    except (FileNotFoundError, NotADirectoryError):
        mode = None
    except OSError as exc:
        raise InputError(f"{shown}: {exc.strerror or exc}") from None
    if mode is not None and stat.S_ISLNK(mode):
        try:
            mode = os.stat(target).st_mode
        except OSError:
            raise InputError(f"{shown} is a symbolic link to nothing; remove it or choose another path") from None
    if mode is not None and not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        raise InputError(f"{shown} is neither a regular file nor a folder (a device, pipe or socket); expected a {kind}")
    folder = _existing_folder(target if mode is None else target.parent, shown)
    _try_creating_in(folder, shown)
    if mode is not None and stat.S_ISDIR(mode) and kind == "folder":
        _try_creating_in(target, shown)  # a results folder is written into as well
    return target


#: How a Rust library (safetensors) prints the operating system's error inside its own exception.
_RUST_OS_ERROR = re.compile(r"\bOs \{ code: (\d+)")


def _disk_errno(exc: BaseException) -> int | None:
    """The disk ``errno`` behind ``exc`` (an ``OSError``, or safetensors' error carrying one), else ``None``."""
    if isinstance(exc, OSError):
        return exc.errno if exc.errno in DISK_ERRNOS else None
    found = _RUST_OS_ERROR.search(str(exc))
    code = int(found.group(1)) if found else None
    return code if code in DISK_ERRNOS else None


@contextmanager
def writing(path: str | os.PathLike[str], flag: str = "--out") -> Iterator[None]:
    """Inside the block the output ``path`` is written: the disk refusing it raises :class:`OutputError` naming why.

    Only the refusals of a full, over-quota or read-only file system are translated; any other error
    propagates unchanged.
    """
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, SafetensorError) as exc:
        code = _disk_errno(exc)
        if code is None:
            raise
        raise OutputError(f"{flag} {os.fspath(path)!r}: could not be written ({os.strerror(code)})") from exc


@contextmanager
def folder_lock(folder: Path, flag: str = "--out") -> Iterator[Path]:
    """Create ``folder`` when missing and hold an exclusive lock on it for the block; yields the folder.

    Another process holding it raises :class:`InputError` naming the folder (nothing waits). The lock
    (``flock`` on the folder itself, no lock file) ends with the block or the process; where the
    platform has no ``flock`` the block runs unlocked.
    """
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        folder.mkdir(parents=True, exist_ok=True)
        yield folder
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"{flag} {str(folder)!r} is being written by another pruneframe process; wait for it to finish or choose another {flag}") from None
        yield folder
    finally:
        os.close(fd)
