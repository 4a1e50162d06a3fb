"""A stored ``results.json`` as ``pruneframe report`` reads it: every value the report uses, type-checked first.

``results.json`` is written by :func:`pruneframe.harness.report.write_results`. A file that was edited,
truncated or written by something else is checked against these models before a number is read from
it, so a value of the wrong type is named by its place (``runs.2.eval.perplexity.sources.wiki.window_nll``)
instead of failing half-way through a table or a figure. The models are strict (a number is a JSON
number, a list a JSON list) and check only what the report reads; every other key passes unchanged.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pruneframe.pipeline.prune_report import PruneReport

__all__ = ["StoredResults", "check_results"]


class _Stored(BaseModel):
    """A JSON object of ``results.json``: the values named are checked strictly, any other key is kept as it is."""

    model_config = ConfigDict(extra="allow", strict=True, populate_by_name=True)


class _DataStamp(_Stored):
    fingerprint: str | None = None
    origin: str | None = None
    split: str | None = None


class _SourceProtocol(_Stored):
    seq_len: int | None = None
    num_windows: int | None = None
    offset_windows: int | None = None
    tokenizer_fingerprint: str | None = None
    data: _DataStamp | None = None


class _SourceRow(_Stored):
    ppl: float | None = None
    window_nll: list[float] = Field(default_factory=list)
    window_tokens: Annotated[int, Field(ge=1)] | None = None
    domain: str | None = None
    protocol: _SourceProtocol | None = None

    @model_validator(mode="after")
    def _scored(self) -> _SourceRow:
        if self.window_nll and (self.ppl is None or self.window_tokens is None):
            raise ValueError("a source with window_nll needs its ppl and window_tokens")
        return self


class _Perplexity(_Stored):
    sources: dict[str, _SourceRow] | None = None


class _TaskItems(_Stored):
    acc: list[float] | None = None


class _TaskRow(_Stored):
    acc: float | None = None
    acc_stderr: float | None = None
    acc_ci: Annotated[list[float | None], Field(min_length=2)] | None = None
    items: _TaskItems | None = None


class _Zeroshot(_Stored):
    tasks: dict[str, _TaskRow] | None = None


class _SpeedModel(_Stored):
    prefill_tokens_per_s: float
    decode_tokens_per_s: float


class _SpeedProtocol(_Stored):
    repeats: int | None = None
    statistic: str | None = None


class _Speed(_Stored):
    measured_speedup: dict[str, float | None] | None = None
    speedup_spread: dict[str, dict[str, float | None] | None] | None = None
    ideal_speedup: float | None = None
    model: _SpeedModel | None = None
    protocol: _SpeedProtocol | None = None


class _LlamacppProtocol(_Stored):
    prefill_lens: list[int] | None = None


class _LlamacppSpeed(_Stored):
    measured_speedup: dict[str, float | None] | None = None
    ideal_speedup: dict[str, float | None] | None = None
    protocol: _LlamacppProtocol | None = None


class _Eval(_Stored):
    perplexity: _Perplexity | None = None
    zeroshot: _Zeroshot | None = None
    speed: _Speed | None = None
    llamacpp_speed: _LlamacppSpeed | None = Field(None, alias="llamacpp-speed")


class _Named(_Stored):
    name: Any = None
    label: Any = None


class _RunProtocol(_Stored):
    method: _Named | None = None
    budget: _Named | None = None
    recovery: _Named | None = None
    seed: int | None = None


class _Recovery(_Stored):
    wall_s: float | None = None
    tokens: int | None = None
    tokens_per_s: float | None = None
    steps: int | None = None


class _Record(_Stored):
    """The dense record (and the fields every run record shares with it)."""

    kind: str | None = None
    status: str | None = None
    eval: _Eval = Field(default_factory=_Eval)
    protocol: _RunProtocol | None = None
    prune: dict[str, Any] | None = None
    recovery: _Recovery | None = None

    @field_validator("prune")
    @classmethod
    def _a_prune_report(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value:
            try:
                PruneReport.model_validate(value)
            except ValidationError as exc:
                problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:3])
                raise ValueError(f"not a prune report ({problems})") from None
        return value


class _RunRecord(_Record):
    run_id: str


class _Model(_Stored):
    spec: str


class _Config(_Stored):
    dtype: str
    budget_kind: str
    budgets: list[float | dict[str, Any]] | None = None


class _Units(_Stored):
    total_params: int
    prunable_params: int


class _Calibration(_Stored):
    name: str
    origin: str
    split: str
    tokens: int
    fingerprint: str
    domain: str | None = None


class _PerplexityConfig(_Stored):
    seq_len: int
    protocol: str | None = None


class _PerplexityStamp(_Stored):
    config: _PerplexityConfig


class _ZeroshotConfig(_Stored):
    tasks: list[str]
    limit: int | None = None


class _ZeroshotStamp(_Stored):
    config: _ZeroshotConfig


class _EvaluationStamp(_Stored):
    perplexity: _PerplexityStamp = None  # type: ignore[assignment]  # absent: not run; present: a stamp, never null
    zeroshot: _ZeroshotStamp = None  # type: ignore[assignment]


class _SummarySource(_Stored):
    label: str | None = None


class _Summary(_Stored):
    sources: list[_SummarySource] | None = None


class StoredResults(_Stored):
    """The keys of ``results.json`` the report reads: the comparison's meta, the dense record and the runs."""

    model: _Model
    config: _Config
    units: _Units
    budgets: dict[str, int | float]
    calibration: _Calibration
    evaluation: _EvaluationStamp
    summary: _Summary | None = None
    dense: _Record
    runs: list[_RunRecord]


def check_results(data: Any) -> None:
    """Raise ``ValueError`` naming the first problems when ``data`` is not a comparison's ``results.json`` the report can read."""
    if not isinstance(data, dict):
        raise ValueError(f"not a comparison's results.json: expected a JSON object at the top level, got {type(data).__name__}")
    try:
        StoredResults.model_validate(data)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ValueError("not a comparison's results.json: " + "; ".join(problems[:3]) + more) from None
