"""A GGUF file loaded in llama.cpp, in process, through the optional ``xllamacpp`` package.

``xllamacpp`` (``pip install 'pruneframe[deploy]'``) wraps llama.cpp's server; a completion request
takes token ids as its prompt and returns, for every generated token, the log-probabilities of the
``n_probs`` most likely tokens (from the raw logits, before sampling) and llama.cpp's own timings.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["available", "LlamaCppModel", "LlamaCppUnavailable"]


class LlamaCppUnavailable(ImportError):
    """``xllamacpp`` is not installed (``pip install 'pruneframe[deploy]'``)."""


def available() -> bool:
    """Whether the optional ``xllamacpp`` package is installed."""
    return importlib.util.find_spec("xllamacpp") is not None


@contextmanager
def _quiet_fd2(quiet: bool) -> Iterator[None]:
    """Send llama.cpp's C-level log lines (file descriptor 2) to /dev/null while ``quiet``."""
    if not quiet:
        yield
        return
    saved, sink = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(sink, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(sink)


class LlamaCppModel:
    """One GGUF file loaded in llama.cpp (CPU, batch 1, a fixed number of threads)."""

    def __init__(self, path: str | Path, n_ctx: int = 1024, threads: int = 1, quiet: bool = True) -> None:
        """Load ``path``; ``n_ctx`` tokens of context, ``threads`` CPU threads for prefill and decode."""
        if not available():
            raise LlamaCppUnavailable("llama.cpp checks need the xllamacpp package: pip install 'pruneframe[deploy]'")
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_ctx = n_ctx
        params.n_parallel = 1
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        params.warmup = False
        params.cache_prompt = False
        params.verbosity = 0 if quiet else 3
        self.path = Path(path)
        self.quiet = quiet
        with _quiet_fd2(quiet):
            self._server = xllamacpp.Server(params)

    def complete(self, prompt: list[int] | str, n_predict: int, n_probs: int = 0, **extra: Any) -> dict[str, Any]:
        """Greedy continuation of the token ids ``prompt`` (or of a text, which llama.cpp tokenizes): the server's response (choices, logprobs, timings).

        Raises ``RuntimeError`` with llama.cpp's message when the request fails.
        """
        request = {
            "prompt": prompt if isinstance(prompt, str) else [int(t) for t in prompt],
            "n_predict": n_predict,
            "temperature": 0.0,
            "top_k": 1,
            "n_probs": n_probs,
            "cache_prompt": False,
            "ignore_eos": True,
            "return_tokens": True,
            **extra,
        }
        with _quiet_fd2(self.quiet):
            response = self._server.handle_completions(request)
        if not isinstance(response, dict) or "error" in response or "choices" not in response:
            raise RuntimeError(f"llama.cpp on {self.path.name}: {str(response)[:500]}")
        return response

    def count_prompt_tokens(self, text: str) -> int:
        """How many tokens llama.cpp reads for the prompt ``text`` (its own tokenizer, special tokens included)."""
        request = {"prompt": text, "n_predict": 1, "temperature": 0.0, "cache_prompt": False}
        with _quiet_fd2(self.quiet):
            response = self._server.handle_completions(request)
        if not isinstance(response, dict) or "usage" not in response:
            raise RuntimeError(f"llama.cpp on {self.path.name}: {str(response)[:500]}")
        return int(response["usage"]["prompt_tokens"])

    def close(self) -> None:
        """Unload the model."""
        with _quiet_fd2(self.quiet):
            self._server = None
