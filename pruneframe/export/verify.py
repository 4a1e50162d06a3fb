"""Check a GGUF file against the model it came from: llama.cpp's next-token distributions beside transformers'.

For each fixed prompt, llama.cpp continues greedily and reports, at every generated position, the
log-probabilities of its ``top_k`` most likely tokens (from its raw logits). transformers runs the
prompt plus that same continuation in float32 (teacher forcing), so both see identical token ids at
every position. Per position:

* **top-1 agreement**: transformers' most likely token is llama.cpp's;
* **top-5 probability difference**: the largest ``|p_llama - p_hf|`` over llama.cpp's five most likely tokens;
* **KL divergence** ``KL(p_hf || p_llama)`` over llama.cpp's ``top_k`` tokens plus one bucket for every
  other token (a coarse-graining, so a lower bound of the full KL that is tight when the rest carries
  little mass).

The tokenizer is checked too: llama.cpp must read the prompts and :data:`~pruneframe.export.verify_tokens.TOKENIZER_TEXTS`
(several scripts) as the same token ids as transformers, give every token the bytes transformers'
token stands for (:mod:`pruneframe.export.verify_tokens`), and its text of the continuation must
equal transformers' decoding of its ids.
:data:`TOLERANCES` are the limits per export type; :meth:`VerifyResult.passed` applies them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pruneframe.export.llamacpp import LlamaCppModel
from pruneframe.export.verify_tokens import TOKENIZER_TEXTS, piece_issues, tokenization_issues, unsafe_tokens

__all__ = ["PROMPTS", "Tolerance", "TOLERANCES", "VerifyResult", "verify_gguf"]

#: Fixed prompts (varied domains), each continued for ``positions // len(PROMPTS)`` tokens.
PROMPTS: tuple[str, ...] = (
    "The history of the printing press begins in the fifteenth century, when",
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "Photosynthesis is the process by which green plants",
    "Call me Ishmael. Some years ago, never mind how long precisely,",
    "The recipe needs three eggs, two cups of flour and",
    "In mathematics, a prime number is a natural number greater than 1 that",
    "Q: What is the capital of France?\nA:",
    "The committee met on Tuesday to discuss the budget, and after a long debate",
)


@dataclass(frozen=True)
class Tolerance:
    """Limits a GGUF file of one export type must meet against its checkpoint.

    Attributes:
        top1: the least top-1 agreement (fraction of positions).
        top5_prob: the largest allowed top-5 probability difference.
        kl: the largest allowed mean KL divergence (nats per position).
    """

    top1: float
    top5_prob: float
    kl: float


#: Per export type. f32 differs from transformers only by summation order; f16/bf16 round every weight
#: (bf16 to 8 significant bits). The block-quantized types are set from the dense SmolLM2-135M's own
#: check (docs/llamacpp.md), about twice its KL: q8_0 (8 bits per 32-weight block) measured top-1 97.5%,
#: largest top-5 difference 0.129, mean KL 3.6e-3; q4_0 (4 bits, token embedding and output in q8_0)
#: top-1 79.1%, 0.778, 0.227. A 4-bit file of a small model moves single probabilities a lot, so its
#: top-5 limit is loose and its KL limit carries the check.
TOLERANCES: dict[str, Tolerance] = {
    "f32": Tolerance(top1=0.99, top5_prob=0.01, kl=1e-3),
    "f16": Tolerance(top1=0.97, top5_prob=0.03, kl=5e-3),
    "bf16": Tolerance(top1=0.90, top5_prob=0.08, kl=3e-2),
    "q8_0": Tolerance(top1=0.90, top5_prob=0.25, kl=1e-2),
    "q4_0": Tolerance(top1=0.70, top5_prob=0.9, kl=0.5),
}


@dataclass
class VerifyResult:
    """The comparison's numbers; :meth:`passed` applies a :class:`Tolerance`."""

    dtype: str
    positions: int
    top1_agreement: float
    max_top5_prob_diff: float
    mean_kl: float
    max_kl: float
    tokenizer_ok: bool
    tokenizer_issues: list[str] = field(default_factory=list)

    def failures(self, tolerance: Tolerance | None = None) -> list[str]:
        """What exceeds ``tolerance`` (default: :data:`TOLERANCES` for the dtype), one line each."""
        tol = tolerance or TOLERANCES[self.dtype]
        out = []
        if self.top1_agreement < tol.top1:
            out.append(f"top-1 agreement {self.top1_agreement:.4f} < {tol.top1}")
        if self.max_top5_prob_diff > tol.top5_prob:
            out.append(f"top-5 probability difference {self.max_top5_prob_diff:.3g} > {tol.top5_prob}")
        if self.mean_kl > tol.kl:
            out.append(f"mean KL {self.mean_kl:.3g} > {tol.kl}")
        out.extend(f"tokenizer: {issue}" for issue in self.tokenizer_issues)
        return out

    def passed(self, tolerance: Tolerance | None = None) -> bool:
        """Whether every number is within ``tolerance`` and the tokenizer agrees."""
        return not self.failures(tolerance)

    def summary(self) -> str:
        """One line of numbers."""
        return (
            f"{self.dtype}: top-1 agreement {self.top1_agreement:.2%} over {self.positions} positions, "
            f"max top-5 prob diff {self.max_top5_prob_diff:.2e}, KL mean {self.mean_kl:.2e} "
            f"max {self.max_kl:.2e}, tokenizer {'agrees' if self.tokenizer_ok else 'DIFFERS'}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)


def _position_stats(hf_logp: torch.Tensor, step: dict[str, Any]) -> tuple[bool, float, float]:
    """(top-1 agrees, max top-5 prob diff, KL lower bound) at one position."""
    top = step["top_logprobs"]
    ids = torch.tensor([t["id"] for t in top])
    p_llama = torch.tensor([math.exp(t["logprob"]) for t in top], dtype=torch.float64)
    p_hf = hf_logp[ids].double().exp()
    agree = int(hf_logp.argmax()) == int(top[0]["id"])
    diff = float((p_llama[:5] - p_hf[:5]).abs().max())
    rest_llama = max(1.0 - float(p_llama.sum()), 1e-12)
    rest_hf = max(1.0 - float(p_hf.sum()), 1e-12)
    mask = p_hf > 0
    kl = float((p_hf[mask] * (p_hf[mask].log() - p_llama[mask].clamp_min(1e-30).log())).sum())
    kl += rest_hf * (math.log(rest_hf) - math.log(rest_llama))
    return agree, diff, max(kl, 0.0)


def _aligned_steps(response: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-token entries that each stand for exactly one generated token.

    llama.cpp folds a token whose bytes end inside a UTF-8 character into the next entry (the entry
    then carries the next token's id and probabilities); every entry from the first such fold on is
    dropped, so that position ``i`` of the list is the ``i``-th generated token.
    """
    choice = response["choices"][0]
    steps = choice["logprobs"]["content"]
    if len(steps) == response["usage"]["completion_tokens"]:
        return steps
    out = []
    for step in steps:
        try:
            bytes(step["bytes"]).decode("utf-8")
        except UnicodeDecodeError:
            break
        out.append(step)
    return out


@torch.inference_mode()
def verify_gguf(
    gguf_path: str | Path,
    model: nn.Module,
    tokenizer: Any,
    dtype: str,
    positions: int = 256,
    top_k: int = 40,
    threads: int = 1,
    prompts: tuple[str, ...] = PROMPTS,
) -> VerifyResult:
    """Compare llama.cpp on ``gguf_path`` with ``model`` (in float32, on the CPU) over at least ``positions`` positions."""
    per_prompt = -(-positions // len(prompts)) + 8  # a margin for positions dropped by _aligned_steps
    model = model.float().eval()
    encoded = [tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
    longest = max(len(tokenizer(t, add_special_tokens=True)["input_ids"]) for t in (*prompts, *TOKENIZER_TEXTS))
    runner = LlamaCppModel(gguf_path, n_ctx=max(longest, max(len(e) for e in encoded) + per_prompt) + 8, threads=threads)
    agree, diffs, kls, issues = 0, [], [], []
    ban = [[token_id, False] for token_id in unsafe_tokens(tokenizer)]
    try:
        for text, ids in zip(prompts, encoded, strict=True):
            response = runner.complete(ids, per_prompt, n_probs=top_k, logit_bias=ban)
            steps = _aligned_steps(response)
            generated = [int(step["id"]) for step in steps]
            logits = model(torch.tensor([ids + generated])).logits[0].float()
            logp = torch.log_softmax(logits[len(ids) - 1 : len(ids) - 1 + len(steps)], dim=-1)
            for row, step in zip(logp, steps, strict=True):
                a, d, k = _position_stats(row, step)
                agree += a
                diffs.append(d)
                kls.append(k)
            text_llama = b"".join(bytes(step["bytes"]) for step in steps).decode("utf-8", errors="replace")
            if text_llama != tokenizer.decode(generated):
                issues.append(f"prompt {text[:30]!r}: llama.cpp's text {text_llama[:40]!r} != transformers' {tokenizer.decode(generated)[:40]!r}")
        issues += tokenization_issues(runner, tokenizer, (*prompts, *TOKENIZER_TEXTS), top_k, ban)
        issues += piece_issues(runner, tokenizer, ban)
    finally:
        runner.close()
    n = len(kls)
    return VerifyResult(
        dtype=dtype,
        positions=n,
        top1_agreement=agree / n,
        max_top5_prob_diff=max(diffs),
        mean_kl=sum(kls) / n,
        max_kl=max(kls),
        tokenizer_ok=not issues,
        tokenizer_issues=issues,
    )
