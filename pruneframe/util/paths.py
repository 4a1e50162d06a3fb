"""Paths a user typed: ``~`` expanded without failing, and names no file system could hold told apart.

``name_problem("x" * 300)`` says ``a path component is 300 bytes long; file systems allow at most 255``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["NAME_MAX", "PATH_MAX", "user_path", "name_problem"]

#: The longest file or folder name (in bytes of the file system encoding) Linux, macOS and Windows file systems hold.
NAME_MAX = 255
#: The longest path the operating system accepts in one call.
PATH_MAX = 4096


def user_path(text: str | os.PathLike[str]) -> Path:
    """``text`` as a path with a leading ``~`` or ``~user`` expanded; an unknown user's ``~name`` stays as written.

    (``Path.expanduser`` raises ``RuntimeError`` for an unknown user; ``os.path.expanduser`` keeps the text.)
    """
    return Path(os.path.expanduser(os.fspath(text)))


def name_problem(text: str | os.PathLike[str]) -> str | None:
    """Why ``text`` can name no file (empty, a NUL byte, not encodable, a name or path too long), or ``None``."""
    value = os.fspath(text)
    if not str(value).strip():
        return "an empty path"
    if "\x00" in str(value):
        return "a path cannot contain a NUL character"
    try:
        encoded = os.fsencode(value)
    except UnicodeError:
        return "the path cannot be encoded for this file system (it holds lone surrogate characters)"
    longest = max(len(part) for part in encoded.split(b"/"))
    if longest > NAME_MAX:
        return f"a path component is {longest} bytes long; file systems allow at most {NAME_MAX}"
    if len(encoded) >= PATH_MAX:
        return f"the path is {len(encoded)} bytes long; the system allows at most {PATH_MAX - 1}"
    return None
