"""Whether two texts could overlap: a calibration or recovery text against an evaluation text."""

from __future__ import annotations

from pruneframe.data.text_source import TextSource

__all__ = ["check_disjoint"]


def check_disjoint(calib: TextSource, eval: TextSource, samples: int = 50, chunk: int = 200) -> None:  # noqa: A002
    """Raise ``ValueError`` if ``calib`` and ``eval`` could overlap.

    Checks that they are not the same origin and split, then takes ``samples`` evenly spaced
    ``chunk``-character passages of the evaluation text and fails if any appears verbatim in the
    calibration text. Whitespace-only passages are skipped.
    """
    if calib.origin == eval.origin and calib.split == eval.split:
        raise ValueError(f"calibration and evaluation text are the same source: {calib.origin!r} split {calib.split!r}")
    text = eval.text
    if len(text) <= chunk:
        starts = [0]
    else:
        span = len(text) - chunk
        starts = sorted({(i * span) // max(1, samples - 1) for i in range(samples)})
    for start in starts:
        passage = text[start : start + chunk]
        if passage.strip() and passage in calib.text:
            raise ValueError(
                f"evaluation text {eval.name!r} ({eval.origin}, split {eval.split!r}) overlaps calibration text "
                f"{calib.name!r} ({calib.origin}, split {calib.split!r}): the {len(passage)}-character passage "
                f"at offset {start} ({passage[:60]!r}...) appears verbatim in the calibration text"
            )
