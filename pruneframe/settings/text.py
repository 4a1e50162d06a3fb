"""Where a calibration or recovery text comes from, as validated settings; the default source is found when a run starts.

Validating these settings reads nothing: :meth:`TextSettings.resolved` looks at the shared data folder
(WikiText-2 validation when ``$PRUNEFRAME_DATA_DIR``, or ``../shared/data``, holds it, else the offline
``embedded`` corpus).
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field

from pruneframe.data.sources import data_dir

__all__ = ["TextSettings", "CalibrationSettings", "RecoveryDataSettings", "default_text_source"]

#: Files under ``<data dir>/wikitext-2`` that make ``wikitext-2`` usable offline, per split.
_WIKITEXT_FILES = {"test": ("wiki.test.raw", "wiki.test.tokens"), "calibration": ("wiki.valid.tokens", "wiki.valid.raw")}


def default_text_source(split: Literal["test", "calibration"]) -> str:
    """``wikitext-2`` when the data folder holds its ``split`` file, else ``embedded`` (always offline)."""
    root = data_dir()
    if root is not None and any((root / "wikitext-2" / name).is_file() for name in _WIKITEXT_FILES[split]):
        return "wikitext-2"
    return "embedded"


class TextSettings(BaseModel):
    """One text source and split; ``data=None`` is the default development text, found when a run starts.

    Validating these settings reads nothing: :meth:`resolved` looks at the data folder.

    Attributes:
        data: any source :func:`pruneframe.data.resolve_text` takes, or ``None``: WikiText-2 validation
            when the data folder holds it, else ``embedded``'s calibration half (see :func:`default_text_source`).
        split: the split read; ``calibration`` maps to validation for named corpora and to the half
            that evaluation never reads for ``embedded`` and ``moby-dick``.
    """

    model_config = ConfigDict(extra="forbid")

    data: Annotated[str, Field(min_length=1)] | None = None
    split: str = "calibration"

    def resolved(self) -> Self:
        """These settings with ``data`` named: ``None`` becomes the default source of this machine's data folder."""
        if self.data is not None:
            return self
        return self.model_copy(update={"data": default_text_source("calibration")})


class CalibrationSettings(TextSettings):
    """Where the one calibration token stream shared by every run comes from (see :class:`TextSettings`).

    Attributes:
        max_tokens: keep only the first this many tokens of the stream (``None``: all of it).
    """

    max_tokens: Annotated[int, Field(ge=2)] | None = None


class RecoveryDataSettings(TextSettings):
    """Where the recovery text comes from: one text for every recovery of a comparison (see :class:`TextSettings`)."""
