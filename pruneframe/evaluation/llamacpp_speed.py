"""``llamacpp-speed``: the model and the dense model exported to GGUF and timed in llama.cpp.

Both are written to a temporary folder in the same type (``dtype``), the dense model in its family's
own llama.cpp architecture, and timed alternately (:func:`pruneframe.export.speed.measure_llamacpp_speed`).
The result holds both speeds, the measured speedups and two ideals: FLOPs (dense over pruned, the
prefill ideal, as the speed evaluator computes it) and bytes of weights read per decoded token (the
decode ideal). Needs the optional ``xllamacpp`` package; enable it with
``evaluation: {llamacpp-speed: {}}`` in a comparison's settings.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from pruneframe.evaluation.base import EvalContext, Evaluator
from pruneframe.evaluation.speed import ideal_speedup, model_flops_per_token

__all__ = ["LlamaCppSpeedConfig", "LlamaCppSpeedEvaluator"]


class LlamaCppSpeedConfig(BaseModel):
    """Settings: export type, prompt lengths, decoded tokens, threads, timed repeats and placements.

    ``placements`` above 1 times both files from that many fresh copies (new page layouts; see
    :mod:`pruneframe.export.speed`), ``repeats`` each.
    """

    model_config = ConfigDict(extra="forbid")

    dtype: Literal["f32", "f16", "bf16", "q8_0", "q4_0"] = "f16"
    prefill_lens: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [256, 512])
    decode_tokens: Annotated[int, Field(ge=1)] = 64
    threads: Annotated[int, Field(ge=1)] = 1
    repeats: Annotated[int, Field(ge=1)] = 5
    placements: Annotated[int, Field(ge=1)] = 1


class LlamaCppSpeedEvaluator(Evaluator):
    """Prefill and decode tokens/s in llama.cpp, and the speedups over the dense model there."""

    name: ClassVar[str] = "llamacpp-speed"
    Config: ClassVar[type[BaseModel]] = LlamaCppSpeedConfig
    pairs_with_dense: ClassVar[bool] = True
    shape_only: ClassVar[bool] = True

    def check(self, tokenizer: Any) -> None:
        """Refuse, before any run, a tokenizer the GGUF export cannot write (``ExportRefused`` names why)."""
        from pruneframe.export.vocab import check_tokenizer

        check_tokenizer(tokenizer)

    def evaluate(self, model: Any, tokenizer: Any, context: EvalContext) -> dict[str, Any]:
        """Export ``model`` (and ``context.dense_model``) and time them in llama.cpp."""
        from pruneframe.export import export_gguf
        from pruneframe.export.speed import measure_llamacpp_speed, paired_speedup, weight_bytes_per_token

        cfg: LlamaCppSpeedConfig = self.config  # type: ignore[assignment]
        with tempfile.TemporaryDirectory(prefix="pruneframe-llamacpp-") as tmp:
            files = {"model": export_gguf(model, Path(tmp) / "model.gguf", cfg.dtype, tokenizer=tokenizer).path}
            if context.dense_model is not None:
                dense_tokenizer = context.dense_tokenizer if context.dense_tokenizer is not None else tokenizer
                files["dense"] = export_gguf(context.dense_model, Path(tmp) / "dense.gguf", cfg.dtype, tokenizer=dense_tokenizer).path
            order = {k: files[k] for k in ("dense", "model") if k in files}
            speeds = measure_llamacpp_speed(
                order, int(model.config.vocab_size), tuple(cfg.prefill_lens), cfg.decode_tokens, cfg.threads, cfg.repeats, context.seed, cfg.placements
            )
            weight_bytes = {k: weight_bytes_per_token(p) for k, p in files.items()}
        result: dict[str, Any] = {k: v.to_dict() for k, v in speeds.items()}
        result["weight_bytes_per_token"] = weight_bytes
        if "dense" in speeds:
            m, d = speeds["model"], speeds["dense"]
            result["measured_speedup"] = {
                **{f"prefill_{n}": m.prefill_tokens_per_s[n] / d.prefill_tokens_per_s[n] for n in cfg.prefill_lens},
                "decode": m.decode_tokens_per_s / d.decode_tokens_per_s,
            }
            result["paired_speedup"] = {
                **{f"prefill_{n}": paired_speedup(d.prefill_samples[n], m.prefill_samples[n]) for n in cfg.prefill_lens},
                "decode": paired_speedup(d.decode_samples, m.decode_samples),
            }
            context_len = min(cfg.prefill_lens)
            result["ideal_speedup"] = {
                "prefill": ideal_speedup(model_flops_per_token(context.dense_model, context_len), model_flops_per_token(model, context_len)),
                "decode": weight_bytes["dense"] / weight_bytes["model"],
            }
        result["protocol"] = {
            "engine": "llama.cpp (xllamacpp)",
            "dtype": cfg.dtype,
            "threads": cfg.threads,
            "prefill_lens": cfg.prefill_lens,
            "decode_tokens": cfg.decode_tokens,
            "repeats": cfg.repeats,
            "placements": cfg.placements,
            "statistic": "min",
            "batch": 1,
        }
        return result
