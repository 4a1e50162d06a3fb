"""A resolved text source: the text, where it came from, its fingerprint and its domain.

What :func:`pruneframe.data.sources.resolve_text` returns, and the error it raises when nothing matched.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DataSourceError", "TextSource", "make_source"]


class DataSourceError(ValueError):
    """A text source could not be resolved; the message lists everything that was tried."""


@dataclass(frozen=True)
class TextSource:
    """Resolved text plus where it came from.

    Attributes:
        name: the source string as the user gave it (``"wikitext-2"``, a path, ``"embedded"``).
        origin: the resolved file/folder path or hub id the text was read from.
        split: the split that was selected (``"file"`` for a single local file).
        text: the whole text.
        fingerprint: the first 16 hex digits of the SHA-256 of ``text``.
        domain: the domain tag (see the module docstring); equal tags mean the same domain.
    """

    name: str
    origin: str
    split: str
    text: str = field(repr=False)
    fingerprint: str
    domain: str = ""

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description for stamping into evaluation protocols."""
        return {
            "name": self.name,
            "origin": self.origin,
            "split": self.split,
            "fingerprint": self.fingerprint,
            "chars": len(self.text),
            "domain": self.domain,
        }


def _fingerprint(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def make_source(name: str, origin: str, split: str, text: str, domain: str) -> TextSource:
    """The :class:`TextSource` of ``text``, fingerprinted; empty text is a :class:`DataSourceError`."""
    if not text.strip():
        raise DataSourceError(f"text source {name!r} ({origin}, split {split!r}) is empty")
    return TextSource(name=name, origin=origin, split=split, text=text, fingerprint=_fingerprint(text), domain=domain)
