"""Atomic file and directory writes: readers never see a half-written result."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["SMALL_FILE_LIMIT", "read_small_text", "write_bytes_atomic", "write_text_atomic", "write_json_atomic", "replace_marked_section", "atomic_dir"]


def _umask() -> int:
    """The process umask, read without changing it where the platform allows."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: The most a file that should be small (a settings file, a results or run record) may hold: 64 MiB.
SMALL_FILE_LIMIT = 64 * 2**20


def read_small_text(path: str | os.PathLike[str], limit: int = SMALL_FILE_LIMIT) -> str:
    """The UTF-8 text of ``path``, a regular file of at most ``limit`` bytes, read without waiting on a pipe.

    Raises:
        ValueError: ``path`` is a folder, a device (``/dev/zero``), a pipe or a socket, holds more than
            ``limit`` bytes, or is not UTF-8; the message names the path.
        OSError: it cannot be opened (missing, no permission, a name too long).
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            what = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a device, pipe or socket)"
            raise ValueError(f"{os.fspath(path)!r} is {what}")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{os.fspath(path)!r} holds more than {limit:,} bytes, more than such a file ever needs")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{os.fspath(path)!r} is not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x})") from None


def write_bytes_atomic(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(handle)`` on a temporary sibling file, then ``os.replace`` it onto ``path``.

    The parent directory is created when missing; on any error ``path`` is left untouched.
    Returns the final path.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


def write_text_atomic(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`write_bytes_atomic`). Returns the final path."""
    return write_bytes_atomic(path, lambda handle: handle.write(text.encode(encoding)))


def write_json_atomic(path: str | os.PathLike[str], data: Any, indent: int = 2) -> Path:
    """Serialise ``data`` as JSON (sorted keys, trailing newline) and write it atomically."""
    text = json.dumps(data, indent=indent, sort_keys=True, default=str) + "\n"
    return write_text_atomic(path, text)


def replace_marked_section(path: str | os.PathLike[str], marker: str, body: str) -> Path:
    """Replace what lies between ``<!-- MARKER:begin -->`` and ``<!-- MARKER:end -->`` in a text file, atomically.

    The generated sections of the docs are written this way; a file without the markers gets the
    section appended at its end.
    """
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    target = Path(path)
    text = target.read_text(encoding="utf-8")
    block = begin + "\n" + body.strip("\n") + "\n" + end
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    return write_text_atomic(target, text)


@contextmanager
def atomic_dir(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory that becomes ``path`` when the block succeeds.

    On an exception the temporary directory is removed and ``path`` is left untouched.
    If ``path`` already exists it is replaced only when ``overwrite`` is true; otherwise a
    ``FileExistsError`` naming ``path`` is raised before anything is written (or after the
    block, if a concurrent writer created ``path`` first; the temporary copy is discarded).
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"atomic_dir: target {str(target)!r} already exists (pass overwrite=True)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700; give the usual permissions
    try:
        yield tmp
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, old / "x")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.replace(tmp, target)
            except OSError as exc:  # another writer finished first
                raise FileExistsError(f"atomic_dir: target {str(target)!r} was created by another writer meanwhile") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
