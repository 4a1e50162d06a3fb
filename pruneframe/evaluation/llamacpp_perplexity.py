"""``llamacpp-perplexity``: the model exported to GGUF and its perplexity computed by llama.cpp.

The windows are the perplexity evaluator's (same sources, split, length and count settings), so the
two results sit side by side: what the checkpoint scores in transformers and what the deployed file
scores in llama.cpp, in the export type (``export_dtype``). llama.cpp scores one position per request
(:func:`pruneframe.export.perplexity.gguf_perplexity`), so keep the windows few. Needs the optional
``xllamacpp`` package; enable it with ``evaluation: {llamacpp-perplexity: {num_windows: 4}}``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, Field

from pruneframe.evaluation.base import EvalContext, Evaluator
from pruneframe.evaluation.perplexity import PerplexityConfig, source_windows

__all__ = ["LlamaCppPerplexityConfig", "LlamaCppPerplexityEvaluator"]


class LlamaCppPerplexityConfig(PerplexityConfig):
    """The perplexity evaluator's window settings, plus the export type and llama.cpp's threads.

    ``batch_size``, ``dtype`` and the streaming settings are the transformers evaluator's and do not
    apply here.
    """

    export_dtype: Literal["f32", "f16", "bf16", "q8_0", "q4_0"] = "f16"
    threads: Annotated[int, Field(ge=1)] = 1
    num_windows: Annotated[int, Field(ge=1)] | Literal["all"] = 4


class LlamaCppPerplexityEvaluator(Evaluator):
    """Perplexity of the model's GGUF export, per source, from llama.cpp's own logits."""

    name: ClassVar[str] = "llamacpp-perplexity"
    Config: ClassVar[type[BaseModel]] = LlamaCppPerplexityConfig

    def check(self, tokenizer: Any) -> None:
        """Refuse, before any run, a tokenizer the GGUF export cannot write (``ExportRefused`` names why)."""
        from pruneframe.export.vocab import check_tokenizer

        check_tokenizer(tokenizer)

    def evaluate(self, model: Any, tokenizer: Any, context: EvalContext) -> dict[str, Any]:
        """Export ``model`` in ``export_dtype`` and score every source's windows in llama.cpp."""
        from pruneframe.export import export_gguf
        from pruneframe.export.perplexity import gguf_perplexity

        cfg: LlamaCppPerplexityConfig = self.config  # type: ignore[assignment]
        if tokenizer is None:
            raise ValueError("llamacpp-perplexity: a tokenizer is required (the GGUF file carries it)")
        results: dict[str, Any] = {}
        with tempfile.TemporaryDirectory(prefix="pruneframe-llamacpp-ppl-") as tmp:
            export = export_gguf(model, Path(tmp) / "model.gguf", cfg.export_dtype, tokenizer=tokenizer)
            for spec in cfg.sources:
                source, windows, _ = source_windows(spec, cfg, tokenizer)
                scored = gguf_perplexity(export.path, windows, threads=cfg.threads, progress=context.progress)
                results[spec.column()] = {
                    "ppl": scored.ppl,
                    "mean_nll": scored.mean_nll,
                    "tokens": scored.tokens,
                    "windows": scored.windows,
                    "window_tokens": cfg.seq_len - 1,
                    "window_nll": list(scored.window_nll),
                    "domain": spec.domain or source.domain,
                    "data": source.describe(),
                }
        return {
            "sources": results,
            "protocol": {"engine": "llama.cpp (xllamacpp)", "export_dtype": cfg.export_dtype, "arch": export.plan.arch, "seq_len": cfg.seq_len},
        }
