"""An lm-eval model whose forward passes run one decoder layer at a time, for models larger than the device.

lm-eval's :class:`~lm_eval.models.huggingface.HFLM` scores every request through one method,
``_model_call(token ids) -> logits``. :class:`StreamedHFLM` keeps everything else of it (batching,
padding, continuation slicing, greedy checks) and computes those logits with
:func:`pruneframe.streaming.streamed_logits`: the weights stay where they were loaded, normally the
CPU, and each decoder layer in turn visits the compute device. The logits are those of a
whole-model forward, so every accuracy is the same.

Imported lazily (it imports lm-eval) by :func:`pruneframe.evaluation.zeroshot.zeroshot`.
"""

from __future__ import annotations

from typing import Any

import torch
from lm_eval.models.huggingface import HFLM

from pruneframe.streaming import check_streamable_logits, streamed_logits

__all__ = ["StreamedHFLM"]


class StreamedHFLM(HFLM):
    """lm-eval's Hugging Face model over an in-memory causal LM, its forward passes streamed layer by layer.

    Args:
        pretrained: the model (its weights stay on their device).
        tokenizer: its tokenizer.
        batch_size: requests per forward pass.
        compute_device: where each decoder layer and the output layer run in turn.

    Raises:
        ValueError: the model's logits are more than its output layer's (a bias or logit soft-capping).
    """

    def __init__(self, pretrained: Any, tokenizer: Any, batch_size: int, compute_device: str | torch.device) -> None:
        check_streamable_logits(pretrained)  # before lm-eval sets anything up
        super().__init__(pretrained=pretrained, tokenizer=tokenizer, batch_size=batch_size)
        self._compute_device = torch.device(compute_device)

    def _model_call(
        self, inps: torch.Tensor, attn_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The logits of ``inps`` (``[batch, seq_len, vocab]``), on the model's device like lm-eval's own call."""
        if attn_mask is not None or labels is not None:
            raise ValueError("zeroshot: a layer-streamed model is scored as a causal LM (no encoder inputs)")
        with torch.no_grad():
            (logits,) = streamed_logits(self.model, [inps], self._compute_device)
        return logits.to(self.device)
