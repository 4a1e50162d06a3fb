"""The typed record of one prune: what :class:`~pruneframe.pipeline.session.PruneSession` returns and ``pruning.json`` holds.

Every consumer (the ``prune`` command's summary, a checkpoint's ``pruning.json``, ``compare``'s run
files and table, ``eval``'s record of a checkpoint) reads these fields by name; the JSON form is
``report.model_dump(mode="json")`` and reads back with ``PruneReport.model_validate``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt

from pruneframe.pipeline.budget import Budget

__all__ = [
    "CalibrationRecord",
    "Timings",
    "MemoryRecord",
    "StageRecord",
    "STAGES",
    "RecoveryRecord",
    "VocabularyRecord",
    "PruneReport",
    "CheckpointReport",
]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CalibrationRecord(_Record):
    """The calibration data the method read.

    Attributes:
        name: the stream's name (its source).
        tokens_read: tokens the method actually read (``0`` for data-free methods).
    """

    name: str
    tokens_read: NonNegativeInt


class Timings(_Record):
    """Wall seconds of the prune, whole and per stage.

    Attributes:
        score_s: the method's scoring (calibration passes, training).
        project_recalibrate_s: projection to the budget and the method's recalibration.
        fold_s: folding the mask and scales into a smaller dense model.
        total_s: the whole prune, from the first score to the checked, folded model.
    """

    score_s: NonNegativeFloat
    project_recalibrate_s: NonNegativeFloat
    fold_s: NonNegativeFloat
    total_s: NonNegativeFloat


class MemoryRecord(_Record):
    """Process memory while pruning (see :class:`pruneframe.toolkit.memory.PeakMemory`).

    Attributes:
        start_rss_bytes: resident set size when the prune began.
        peak_rss_bytes: the highest resident set size during the prune.
        delta_rss_bytes: ``peak - start``: what the prune itself needed.
        cuda_peak_allocated_bytes: peak CUDA allocation during the prune (None off CUDA).
        source: ``kernel-hwm`` (exact high-water mark) or ``sampling``.
    """

    start_rss_bytes: NonNegativeInt
    peak_rss_bytes: NonNegativeInt
    delta_rss_bytes: NonNegativeInt
    cuda_peak_allocated_bytes: NonNegativeInt | None = None
    source: str


#: The stages a report names the implementation of, in the order they run.
STAGES = ("architecture", "score", "project", "recalibrate", "fold")


class StageRecord(_Record):
    """Which plugin carried out one stage of a prune, and the digest of the code that ran.

    Attributes:
        plugin: the plugin's registered name. For scoring and recalibration by the core stage (which only
            calls the method object) it is the plugin that registered the method.
        package: the top-level package of the code that ran (the method's, the adapter's or the plugin's).
        digest: :func:`pruneframe.util.digests.package_digest` of that package (``"unknown"`` without files).
    """

    plugin: str
    package: str
    digest: str


class RecoveryRecord(BaseModel):
    """What a recovery did, as ``pruning.json`` and a comparison's run records store it.

    Attributes:
        name: the recovery's name; plugin: the plugin that registered it; code: its package digest.
        config: its validated settings.
        tokens: tokens trained on (whole sequences); sequences and steps likewise.
        data: the recovery text (source, split, fingerprint) and ``stream_sha256``, the fingerprint of
            the exact token sequences in training order.
        teacher: the teacher outputs used (model identity, top-k, fingerprint), for distillation.
        wall_s, tokens_per_s: the training's wall time and throughput.
        loss_first, loss_last: mean loss of the first and last optimiser steps' batches.
        params: parameters before and after (always equal).
        peak_rss_bytes: the process's peak resident memory during the recovery.
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    plugin: str
    code: str
    config: dict[str, Any]
    tokens: int
    sequences: int
    steps: int
    data: dict[str, Any] = Field(default_factory=dict)
    teacher: dict[str, Any] | None = None
    wall_s: float = 0.0
    tokens_per_s: float = 0.0
    loss_first: float | None = None
    loss_last: float | None = None
    params: int = 0
    peak_rss_bytes: int = 0


class VocabularyRecord(_Record):
    """The vocabulary a prune kept (see :mod:`pruneframe.pipeline.vocab_plan`).

    Attributes:
        tokens: tokens kept (the pruned model's embedding rows).
        dense_tokens: the dense tokenizer's tokens.
        dense_rows: the dense model's embedding rows (padding rows beyond the tokens are dropped).
        row_cost: parameters one token holds (its embedding row, and its output row unless tied).
        params: parameters the kept tokens hold (``row_cost * tokens``).
        budget_params: what the budget left the tokens once the width units were projected.
        initial_tokens: the vocabulary's first share of the budget, in tokens (``vocab_keep``).
        keep: the ``vocab_keep`` rule that set it (``budget``, ``balanced`` or a share).
        fingerprint: the kept vocabulary's fingerprint (:func:`~pruneframe.vocabulary.vocabulary_fingerprint`).
    """

    tokens: NonNegativeInt
    dense_tokens: NonNegativeInt
    dense_rows: NonNegativeInt
    row_cost: NonNegativeInt
    params: NonNegativeInt
    budget_params: int
    initial_tokens: NonNegativeInt
    keep: str
    fingerprint: str


class PruneReport(_Record):
    """One prune: the method and its settings, the budget and what was kept, time, memory and software.

    Attributes:
        method: the method's registered name.
        config: the method's validated settings.
        budget: the budget as given (typed: ``prunable`` / ``total`` keep-ratio or ``params``).
        budget_label: the budget in words (``keep 0.5 of prunable params``).
        budget_prunable_params: the budget resolved to prunable parameters (what the mask must meet).
        kept_prunable_params: prunable parameters the mask keeps.
        prunable_params: prunable parameters of the dense model.
        kept_params: parameters of the folded model (bias corrections included).
        dense_params: parameters of the dense model.
        added_params: bias parameters the fold created (corrections on layers that had no bias).
        kept_fraction_of_prunable: ``kept_prunable_params / prunable_params``.
        kept_fraction_of_total: ``kept_params / dense_params``.
        architecture: the model family the units were discovered for.
        units: how many prunable units the dense model has.
        calibration: the calibration data read (None when the method took none).
        timings: wall seconds, whole and per stage.
        memory: process memory while pruning.
        device: where the model lived (``cpu``, ``cuda:0``).
        dtype: the model's dtype (``float32``, ``bfloat16``).
        method_stats: the method's own statistics (losses, steps, ...), as it reported them.
        software: versions of the packages that shape the numbers.
        model: the dense model's identity, when the caller knows it (spec, location, fingerprints).
        calibration_source: where the calibration stream came from, when the caller knows it.
        recovery: the recovery the folded model went through after the prune (``None``: none).
        stages: per stage that ran (``architecture``, ``score``, ``project``, ``recalibrate``, ``fold``;
            no ``score`` for precomputed scores), the plugin that carried it out and its code's digest.
        pipeline: for a ``SCORER+RECALIBRATION`` pipeline, its two parts (``scorer``, ``recalibration``);
            ``config`` then holds the scorer's settings and, under ``recalibration``, the recalibration's.
        removed_blocks: the dense model's layer indices whose ``attention`` block or ``mlp`` block the
            prune removed, and the ``layers`` it removed whole (dropped from the folded model); None
            when no block was removed.
        hidden_size: the kept hidden width when the prune cut the hidden dimension (``None``: it did not);
            then the budget and kept prunable parameters are counted at that width.
        vocabulary: the kept vocabulary when the prune trimmed it (``None``: the tokenizer is the dense
            model's); ``budget_prunable_params`` is then what the budget left the width units.
    """

    method: str
    config: dict[str, Any]
    budget: Budget
    budget_label: str
    budget_prunable_params: NonNegativeInt
    kept_prunable_params: NonNegativeInt
    prunable_params: NonNegativeInt
    kept_params: NonNegativeInt
    dense_params: NonNegativeInt
    added_params: NonNegativeInt = 0
    kept_fraction_of_prunable: NonNegativeFloat
    kept_fraction_of_total: NonNegativeFloat
    architecture: str
    units: NonNegativeInt
    calibration: CalibrationRecord | None = None
    timings: Timings
    memory: MemoryRecord
    device: str
    dtype: str
    method_stats: dict[str, Any] = Field(default_factory=dict)
    software: dict[str, str] = Field(default_factory=dict)
    model: dict[str, Any] | None = None
    calibration_source: dict[str, Any] | None = None
    recovery: RecoveryRecord | None = None
    stages: dict[str, StageRecord] = Field(default_factory=dict)
    pipeline: dict[str, str] | None = None
    removed_blocks: dict[str, list[int]] | None = None
    hidden_size: int | None = None
    vocabulary: VocabularyRecord | None = None

    @property
    def calibration_tokens(self) -> int:
        """Calibration tokens the method read (0 without calibration)."""
        return 0 if self.calibration is None else self.calibration.tokens_read


class CheckpointReport(PruneReport):
    """A checkpoint's ``pruning.json``: the prune's report plus what the saved model holds.

    Attributes:
        layers: per layer, the folded widths (FFN channels, KV heads, query heads, bias flags).
        config_form: ``plain`` (the family's own config loads it) or ``pruneframe`` (per-layer widths
            and the shipped modeling code).
        parameters: parameters of the saved model.
    """

    layers: list[dict[str, int | bool]]
    config_form: Literal["plain", "pruneframe"]
    parameters: NonNegativeInt
