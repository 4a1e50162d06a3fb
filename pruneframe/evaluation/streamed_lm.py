"""An lm-eval model whose forward passes run one decoder layer at a time, for models larger than the device.

lm-eval's :class:`~lm_eval.models.huggingface.HFLM` scores a list of requests by cutting it into
batches and calling ``_model_call(token ids) -> logits`` once per batch. :class:`StreamedHFLM` keeps
all of that (batching, padding, continuation slicing, greedy checks) and computes the logits with
the decoder streamed (:func:`pruneframe.toolkit.streaming.streamed_forward`): the weights stay where they
were loaded, normally the CPU, and each decoder layer in turn visits the compute device.

A streamed sweep moves every layer to the device once, so it serves many batches at a time: each
list of requests is scored twice by lm-eval's own code. The first pass only records the batches
(``_model_call`` answers with zeros); their final hidden states are then computed in sweeps of up to
``batches_per_sweep`` batches; the second pass gets, batch by batch, the output layer applied to
those states: the logits of a whole-model forward, so every answer is the same.

Imported lazily (it imports lm-eval) by :func:`pruneframe.evaluation.zeroshot.zeroshot`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from lm_eval.models.huggingface import HFLM

from pruneframe.toolkit.streaming import check_streamable_logits, streamed_logits

__all__ = ["StreamedHFLM"]

#: Batches whose hidden states one sweep of the decoder computes (they stay on the compute device
#: until their logits are asked for).
BATCHES_PER_SWEEP = 64


class StreamedHFLM(HFLM):
    """lm-eval's Hugging Face model over an in-memory causal LM, its forward passes streamed layer by layer.

    Args:
        pretrained: the model (its weights stay on their device).
        tokenizer: its tokenizer.
        batch_size: requests per batch.
        compute_device: where each decoder layer and the output layer run in turn.
        batches_per_sweep: batches one sweep of the decoder serves.

    Raises:
        ValueError: the model's logits are more than its output layer's (a bias or logit soft-capping).
    """

    def __init__(
        self,
        pretrained: Any,
        tokenizer: Any,
        batch_size: int,
        compute_device: str | torch.device,
        batches_per_sweep: int = BATCHES_PER_SWEEP,
    ) -> None:
        check_streamable_logits(pretrained)  # before lm-eval sets anything up
        super().__init__(pretrained=pretrained, tokenizer=tokenizer, batch_size=batch_size)
        self._compute_device = torch.device(compute_device)
        self._per_sweep = max(1, batches_per_sweep)
        self._recorded: list[torch.Tensor] | None = None  # batches seen by the recording pass
        self._replay: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None  # (batch, logits), same order
        self.sweeps = 0  # decoder sweeps run so far

    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, override_bs: int | None = None) -> list[tuple[float, bool]]:
        """lm-eval's scoring, run once to record its batches and once on their streamed logits."""
        self._recorded = []
        try:
            super()._loglikelihood_tokens(requests, disable_tqdm=True, override_bs=override_bs)
            recorded, self._recorded = self._recorded, None
            self._replay = self._logits_of(recorded)
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        finally:
            self._recorded = None
            if self._replay is not None:
                self._replay.close()  # also on error: the output layer goes back where it was
                self._replay = None

    def _logits_of(self, batches: list[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(batch, its logits on the model's device)`` per batch; the decoder swept once per group of batches.

        Advance it under :func:`torch.no_grad` (a sweep runs when its group's first batch is asked for).
        """
        for start in range(0, len(batches), self._per_sweep):
            group = batches[start : start + self._per_sweep]
            self.sweeps += 1
            for batch, logits in zip(group, streamed_logits(self.model, group, self._compute_device), strict=True):
                yield batch, logits.to(self.device)

    def _model_call(self, inps: torch.Tensor, attn_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The logits of ``inps`` (``[batch, seq_len, vocab]``), on the model's device like lm-eval's own call."""
        if attn_mask is not None or labels is not None:
            raise ValueError("zeroshot: a layer-streamed model is scored as a causal LM (no encoder inputs)")
        if self._recorded is not None:  # the recording pass: its results are discarded
            self._recorded.append(inps)
            head = self.model.get_output_embeddings()
            return inps.new_zeros((*inps.shape, head.out_features), dtype=head.weight.dtype)
        with torch.no_grad():
            if self._replay is None:  # a call outside a scoring pass (lm-eval's batch-size probe): one sweep
                ((_, logits),) = list(self._logits_of([inps]))
                return logits
            batch, logits = next(self._replay)
        if not torch.equal(batch, inps):
            raise RuntimeError("zeroshot: lm-eval asked for other batches than the ones it recorded")
        return logits

    def _model_generate(self, *args: Any, **kwargs: Any) -> Any:
        """Refused: generation runs the whole model once per new token."""
        raise ValueError("zeroshot: generative tasks cannot be scored layer by layer; score them with the whole model on one device")
