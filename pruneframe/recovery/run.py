"""One recovery, start to end: check, (teacher,) train, verify the shape is unchanged, record.

from pruneframe.recovery import recover, text_stream
stream = text_stream("wikitext-2", tokenizer, tokens=16384, seq_len=256, seed=0)
result = recover(pruned, "distill", stream, teacher=dense)      # or a precomputed TeacherTargets
result.model, result.record.tokens_per_s
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pruneframe.data import calibration_data, resolve_text
from pruneframe.data.sources import TextSource
from pruneframe.data.windows import tokenizer_fingerprint
from pruneframe.util.digests import package_digest
from pruneframe.pipeline.host import PluginHost
from pruneframe.recovery.base import Recovery, RecoveryContext, RecoveryRecord
from pruneframe.recovery.stream import RecoveryStream, make_stream
from pruneframe.recovery.teacher import TeacherTargets, compute_teacher

__all__ = ["RecoveryResult", "recover", "text_stream", "resolve_recovery"]


@dataclass
class RecoveryResult:
    """The healed model (same widths, same parameter count) and the record of what was done."""

    model: nn.Module
    record: RecoveryRecord


def resolve_recovery(recovery: str | Recovery | dict[str, Any], config: dict[str, Any] | None = None, host: PluginHost | None = None) -> Recovery:
    """A recovery object from a name (with ``config``), a ``{"name": ..., **settings}`` mapping, or an object."""
    if isinstance(recovery, Recovery):
        if config:
            raise ValueError("config is for a recovery given by name; a recovery object carries its own config")
        return recovery
    if isinstance(recovery, dict):
        settings = dict(recovery)
        name = settings.pop("name", None)
        if not isinstance(name, str):
            raise ValueError(f"a recovery mapping needs a 'name' (none, lora, distill, ...): {recovery!r}")
        return (host or PluginHost.create()).recovery(name, {**settings, **(config or {})})
    return (host or PluginHost.create()).recovery(recovery, config)


def text_stream(source: str | TextSource, tokenizer: Any, tokens: int, seq_len: int, seed: int, split: str = "calibration") -> RecoveryStream:
    """The recovery stream of ``tokens`` tokens from a text source (see :func:`pruneframe.data.resolve_text`)."""
    resolved = source if isinstance(source, TextSource) else resolve_text(source, split)
    ids = calibration_data(resolved, tokenizer).tokens
    stamp = {**resolved.describe(), "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer)}
    return make_stream(ids, seq_len, tokens, seed, stamp, name=f"recovery text {resolved.name!r} ({resolved.split})")


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def recover(
    model: nn.Module,
    recovery: str | Recovery | dict[str, Any],
    stream: RecoveryStream | torch.Tensor | None,
    *,
    config: dict[str, Any] | None = None,
    teacher: nn.Module | TeacherTargets | None = None,
    host: PluginHost | None = None,
    progress: bool = True,
    model_identity: dict[str, Any] | None = None,
) -> RecoveryResult:
    """Heal a folded ``model`` with ``recovery`` on ``stream``; widths and the parameter count never change.

    Args:
        model: the pruned (folded) model; trained in place.
        recovery: a registered recovery name (``none``, ``lora``, ``distill``; ``pruneframe plugins``
            lists them), a ``{"name": ..., **settings}`` mapping or a recovery object.
        stream: the training sequences (:func:`text_stream`), or a 1-D tensor of token ids from which
            ``config.tokens`` tokens are cut with the recovery's ``seq_len`` and ``seed`` (``None``
            for a recovery that trains on nothing, such as ``none``).
        config: the recovery's settings when ``recovery`` is a name.
        teacher: for distillation, the dense model (its outputs are computed here) or its
            precomputed :class:`~pruneframe.recovery.teacher.TeacherTargets` on the same stream.
        host: a plugin host (a fresh one is built when omitted).
        progress: show progress bars.
        model_identity: the dense model's identity stamp, recorded with the teacher's outputs.

    Raises:
        ValueError: a setting the model cannot take (a LoRA target it lacks), a missing or mismatched
            teacher, or a stream the recovery's token budget does not fit.
        RuntimeError: the recovery changed the parameter count (a faulty recovery plugin).
    """
    host = host or PluginHost.create()
    method = resolve_recovery(recovery, config, host)
    cfg = method.config
    method.check(model)
    if not method.trains:
        stream = RecoveryStream(torch.zeros(0, cfg.seq_len, dtype=torch.long))
    elif isinstance(stream, torch.Tensor):
        stream = make_stream(stream, cfg.seq_len, cfg.tokens, cfg.seed, {"name": "tensor"})
    if stream is None:
        raise ValueError(f"recovery {method.name!r} trains on text; pass a stream (text_stream(...)) or token ids")
    targets = _teacher_targets(method, teacher, stream, progress, model_identity) if method.needs_teacher else None
    before = _params(model)
    fingerprint = {
        "recovery": method.name,
        "config": cfg.model_dump(mode="json", exclude={"checkpoint_dir", "checkpoint_every"}),
        "stream": stream.fingerprint,
        "params": before,
    }
    context = RecoveryContext(stream=stream, teacher=targets, progress=progress, stats={"fingerprint": fingerprint})
    start = time.perf_counter()
    healed = method.recover(model, context)
    wall = time.perf_counter() - start
    after = _params(healed)
    if after != before:
        raise RuntimeError(f"recovery {method.name!r} changed the parameter count from {before:,} to {after:,}; a recovery must keep the pruned shape")
    return RecoveryResult(model=healed, record=_record(method, host, stream, targets, context, wall, after))


def _teacher_targets(
    method: Recovery, teacher: nn.Module | TeacherTargets | None, stream: RecoveryStream, progress: bool, model_identity: dict[str, Any] | None
) -> TeacherTargets:
    if teacher is None:
        raise ValueError(f"recovery {method.name!r} needs a teacher: pass the dense model (teacher=...) or its outputs")
    if isinstance(teacher, TeacherTargets):
        if teacher.stamp.get("stream_sha256") != stream.fingerprint:
            raise ValueError(f"the teacher's outputs were computed on another recovery stream ({teacher.stamp.get('stream_sha256')} != {stream.fingerprint})")
        if teacher.stamp.get("top_k", 0) < method.teacher_top_k() or (method.teacher_hidden() and teacher.hidden is None):
            raise ValueError(
                f"the teacher's outputs hold top-{teacher.stamp.get('top_k')} logits"
                f"{'' if teacher.hidden is not None else ' and no hidden states'}; recovery "
                f"{method.name!r} needs top-{method.teacher_top_k()}{' and hidden states' if method.teacher_hidden() else ''}"
            )
        return teacher
    return compute_teacher(teacher, stream, method.teacher_top_k(), method.teacher_hidden(), method.config.batch_size, progress, model_identity)


def _record(
    method: Recovery, host: PluginHost, stream: RecoveryStream, targets: TeacherTargets | None, context: RecoveryContext, wall: float, params: int
) -> RecoveryRecord:
    stats = context.stats.get("train")
    trained = stats.tokens if stats is not None else 0
    steps = len(stats.losses) if stats is not None else 0
    return RecoveryRecord(
        name=method.name,
        plugin=host.recovery_plugin(method),
        code=package_digest(type(method)),
        config=method.config.model_dump(mode="json"),
        tokens=trained,
        sequences=trained // stream.sequences.shape[-1],
        steps=steps,
        data=stream.describe() if method.trains else {},
        teacher=None if targets is None else targets.stamp,
        wall_s=wall,
        tokens_per_s=stats.tokens_per_second if stats is not None else 0.0,
        loss_first=stats.losses[0] if stats is not None and stats.losses else None,
        loss_last=stats.losses[-1] if stats is not None and stats.losses else None,
        params=params,
        peak_rss_bytes=stats.peak_rss_bytes if stats is not None else 0,
    )
