"""Reading JSON Lines files row by row, with errors that name the file and the line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["iter_jsonl"]


def iter_jsonl(path: Path, error: type[Exception] = ValueError) -> Iterator[tuple[int, Any]]:
    """Yield ``(line number, parsed value)`` for each non-blank line of the JSONL file ``path``, in order.

    Line numbers start at 1 and count blank lines too, so a caller's own row checks can name
    ``path:lineno``. A line that is not valid JSON raises ``error`` with the message
    ``"{path}:{lineno}: not valid JSON (...)"``, when it is reached (rows before it have been yielded).
    """
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
            yield lineno, value
