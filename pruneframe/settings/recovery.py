"""What a recovery reads, validated before anything slow starts: the recovery, its text and its token stream.

The recovery text is its own source (``--recover-data``, ``recovery_data`` in a comparison). By default
it is development text: WikiText-2 validation when the data folder holds it, else the embedded
corpus's calibration half; never a test split. It is checked disjoint from every evaluation source
(those of the comparison, or for ``prune``/``recover`` every source ``pruneframe eval`` reads by
default), so a recovered model is never trained on the text it is scored on.
"""

from __future__ import annotations

from typing import Any

from pruneframe.data import check_disjoint, resolve_text
from pruneframe.data.sources import TextSource, eval_source_catalog
from pruneframe.pipeline.host import PluginHost
from pruneframe.recovery import Recovery, RecoveryDataError, RecoveryStream, resolve_recovery, text_stream
from pruneframe.settings.errors import InputError, explain
from pruneframe.settings.text import RecoveryDataSettings

__all__ = ["RecoveryDataSettings", "recovery_object", "recovery_text", "recovery_stream", "default_eval_sources"]


def recovery_object(spec: str | dict[str, Any], host: PluginHost, overrides: dict[str, Any] | None = None) -> Recovery:
    """The validated recovery for ``spec`` (a name or ``{"name": ..., **settings}``); bad input is an ``InputError``."""
    what = spec if isinstance(spec, str) else spec.get("name", spec) if isinstance(spec, dict) else spec
    try:
        return resolve_recovery(spec, overrides or None, host)
    except (ValueError, KeyError) as exc:  # pydantic's ValidationError is a ValueError
        raise InputError(f"recovery {what!r}: {explain(exc)}") from exc


def default_eval_sources() -> list[TextSource]:
    """Every perplexity source ``pruneframe eval`` reads by default here (offline), with split ``test``."""
    return [resolve_text(name, "test") for name in eval_source_catalog(online=False)]


def recovery_text(settings: RecoveryDataSettings, eval_sources: list[TextSource]) -> TextSource:
    """The recovery text, checked disjoint from every evaluation source.

    Raises:
        InputError: the source cannot be read, or it overlaps an evaluation source (named).
    """
    settings = settings.resolved()
    try:
        source = resolve_text(settings.data, settings.split)
    except (ValueError, OSError) as exc:
        raise InputError(f"recovery data {settings.data!r}: {explain(exc)}") from exc
    for other in eval_sources:
        try:
            check_disjoint(source, other)
        except ValueError as exc:
            raise InputError(f"recovery data {settings.data!r} overlaps evaluation source {other.name!r}: {exc}") from exc
    return source


def recovery_stream(recovery: Recovery, source: TextSource, tokenizer: Any) -> RecoveryStream:
    """The token stream ``recovery`` trains on, cut from ``source``; a budget the text cannot hold is an ``InputError``."""
    cfg = recovery.config
    try:
        return text_stream(source, tokenizer, cfg.tokens, cfg.seq_len, cfg.seed)
    except RecoveryDataError as exc:
        raise InputError(f"recovery {recovery.name!r}: {exc}") from exc
