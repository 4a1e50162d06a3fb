"""Measurement protocols: what every reported number carries so it is only compared with its equals.

Each evaluator stamps one of these (as ``result["protocol"]``, via ``model_dump()``). Two numbers are
comparable when :meth:`comparison_key` of their protocols is equal.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "DataStamp",
    "PerplexityProtocol",
    "PerplexitySetProtocol",
    "ZeroShotTaskStamp",
    "ZeroShotProtocol",
    "SizeProtocol",
    "SpeedProtocol",
    "Protocol",
]

PositiveInt = Annotated[int, Field(ge=1)]


class _Frozen(BaseModel):
    """Base: frozen, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def comparison_key(self) -> tuple[Any, ...]:
        """The fields that must match for two measurements to be compared (default: all of them)."""
        return (json.dumps(self.model_dump(mode="json"), sort_keys=True),)


class DataStamp(_Frozen):
    """Which text was used (from :meth:`pruneframe.data.TextSource.describe`)."""

    name: str
    origin: str
    split: str
    fingerprint: str
    chars: Annotated[int, Field(ge=0)]
    domain: str | None = None


class PerplexityProtocol(_Frozen):
    """How a perplexity was measured: text, windowing, tokenizer and numeric type.

    ``add_special_tokens``: every window starts with the BOS the tokenizer prepends to its inputs
    (``seq_len - 1`` text tokens follow it), as models trained that way (Gemma) expect.
    """

    kind: Literal["perplexity"] = "perplexity"
    protocol_name: str = "custom"
    data: DataStamp
    tokenizer: str
    tokenizer_fingerprint: str
    add_special_tokens: bool = False
    seq_len: Annotated[int, Field(ge=2)]
    num_windows: PositiveInt
    offset_windows: Annotated[int, Field(ge=0)] = 0
    tokens_predicted: PositiveInt
    dtype: str

    def comparison_key(self) -> tuple[Any, ...]:
        """Same text (fingerprint + split), tokenizer, windowing and dtype."""
        return (
            self.kind,
            self.data.fingerprint,
            self.data.split,
            self.tokenizer_fingerprint,
            self.add_special_tokens,
            self.seq_len,
            self.num_windows,
            self.offset_windows,
            self.dtype,
        )


class PerplexitySetProtocol(_Frozen):
    """The perplexity protocol of a whole evaluation: the named protocol and each source's protocol by label."""

    kind: Literal["perplexity_set"] = "perplexity_set"
    protocol_name: str = "custom"
    sources: dict[str, PerplexityProtocol]

    def comparison_key(self) -> tuple[Any, ...]:
        """Every source comparable, under the same labels."""
        return (self.kind, tuple((label, p.comparison_key()) for label, p in sorted(self.sources.items())))


class ZeroShotTaskStamp(_Frozen):
    """One zero-shot task: its lm-eval name and where its documents came from."""

    task: str
    source: str
    fingerprint: str | None = None
    docs: Annotated[int, Field(ge=0)]


class ZeroShotProtocol(_Frozen):
    """How zero-shot accuracy was measured."""

    kind: Literal["zeroshot"] = "zeroshot"
    tasks: tuple[ZeroShotTaskStamp, ...]
    num_fewshot: Annotated[int, Field(ge=0)] = 0
    limit: PositiveInt | None = None
    prompt: str
    lm_eval_version: str
    dtype: str

    def comparison_key(self) -> tuple[Any, ...]:
        """Same tasks (and their data), shots, limit, prompt and dtype."""
        tasks = tuple((t.task, t.fingerprint, t.docs) for t in self.tasks)
        return (self.kind, tasks, self.num_fewshot, self.limit, self.prompt, self.dtype)


class SizeProtocol(_Frozen):
    """What the size numbers count."""

    kind: Literal["size"] = "size"
    prunable: str = "q/k/v/o and gate/up/down projection weights and biases of every decoder layer"
    checkpoint: str | None = None
    dtype: str

    def comparison_key(self) -> tuple[Any, ...]:
        """Size numbers are always comparable (bytes depend on dtype)."""
        return (self.kind, self.dtype)


class SpeedProtocol(_Frozen):
    """How throughput was measured."""

    kind: Literal["speed"] = "speed"
    device: str
    dtype: str
    threads: PositiveInt
    batch_size: PositiveInt = 1
    prefill_len: PositiveInt
    decode_tokens: PositiveInt
    warmup: Annotated[int, Field(ge=0)]
    repeats: PositiveInt
    statistic: Literal["min", "median"] = "median"
    decode: str = "greedy, KV cache, one token per forward, prompt = the prefill input"

    def comparison_key(self) -> tuple[Any, ...]:
        """Same device, dtype, threads and shapes (timings from different machines never compare)."""
        return (self.kind, self.device, self.dtype, self.threads, self.batch_size, self.prefill_len, self.decode_tokens)


Protocol = Annotated[
    PerplexityProtocol | PerplexitySetProtocol | ZeroShotProtocol | SizeProtocol | SpeedProtocol,
    Field(discriminator="kind"),
]
