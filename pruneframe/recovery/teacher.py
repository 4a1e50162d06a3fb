"""The dense teacher's outputs on the recovery stream, computed once and shared by every method and seed.

Per position the teacher keeps its ``k`` largest logits, their vocabulary indices and the
log-normaliser (``logsumexp`` of all logits), which fix the teacher's probability of each top-k token
and the probability mass of the rest; optionally its final hidden states. That is enough for the
distillation loss of :func:`top_k_kl`, and small enough to keep: for 64k tokens and k = 64 about 32 MB,
where full logits of SmolLM2's 49,152-token vocabulary would take 12 GB.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from pruneframe.util.io import write_bytes_atomic
from pruneframe.util.devices import dtype_name, model_device
from pruneframe.recovery.stream import RecoveryStream

__all__ = ["TeacherTargets", "compute_teacher", "teacher_key", "top_k_kl", "load_or_compute_teacher"]


@dataclass
class TeacherTargets:
    """The teacher's top-k logits ``[n, L, k]`` (float32), their indices (int64), log-normaliser ``[n, L]``
    and optionally final hidden states ``[n, L, d]``, for the sequences of one stream (same row order).

    Attributes:
        stamp: what they were computed from: model identity, stream fingerprint, ``k``, hidden or not.
    """

    values: torch.Tensor
    indices: torch.Tensor
    lse: torch.Tensor
    hidden: torch.Tensor | None
    stamp: dict[str, Any]

    def rows(self, rows: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The targets of the given stream rows, on ``device``."""
        hidden = None if self.hidden is None else self.hidden[rows].to(device)
        return self.values[rows].to(device), self.indices[rows].to(device), self.lse[rows].to(device), hidden

    def subset(self, stream: RecoveryStream, top_k: int) -> TeacherTargets:
        """The targets of ``stream``'s sequences, given that they are the first rows of the stream these were computed on.

        Streams cut from one text with one ``seq_len`` and seed are prefixes of each other (the same
        permutation, fewer sequences), so one teacher pass over the longest serves every token budget.
        Keeps the ``top_k`` largest logits (they come sorted).
        """
        n = len(stream.sequences)
        if top_k > self.values.shape[-1] or n > len(self.values):
            raise ValueError(f"teacher outputs of {len(self.values)} sequences, top-{self.values.shape[-1]}, cannot serve {n} sequences at top-{top_k}")
        stamp = {**self.stamp, "stream_sha256": stream.fingerprint, "top_k": top_k}
        hidden = None if self.hidden is None else self.hidden[:n]
        return TeacherTargets(self.values[:n, :, :top_k], self.indices[:n, :, :top_k], self.lse[:n], hidden, stamp)

    def save(self, path: Path) -> Path:
        """Write atomically (``torch.save`` of plain tensors and the stamp)."""
        state = {"values": self.values, "indices": self.indices, "lse": self.lse, "hidden": self.hidden, "stamp": self.stamp}
        return write_bytes_atomic(path, lambda handle: torch.save(state, handle))

    @classmethod
    def load(cls, path: Path) -> TeacherTargets:
        """Read what :meth:`save` wrote."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        return cls(state["values"], state["indices"], state["lse"], state["hidden"], state["stamp"])


def teacher_key(model_identity: dict[str, Any] | None, stream: RecoveryStream, top_k: int, hidden: bool, dtype: str) -> str:
    """A file-name-safe key over everything that determines the teacher's outputs."""
    payload = json.dumps({"model": model_identity, "stream": stream.fingerprint, "k": top_k, "hidden": hidden, "dtype": dtype}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


@torch.no_grad()
def compute_teacher(
    model: nn.Module,
    stream: RecoveryStream,
    top_k: int,
    hidden: bool = False,
    batch_size: int = 4,
    progress: bool = True,
    model_identity: dict[str, Any] | None = None,
) -> TeacherTargets:
    """Run the dense ``model`` once over ``stream``; keep its top-``k`` logits, log-normaliser and (optionally) hidden states."""
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    device = model_device(model)
    was_training = model.training
    model.eval()
    values, indices, lses, states = [], [], [], []
    try:
        for rows in tqdm(stream.batches(batch_size), desc="teacher outputs", disable=not progress, leave=False):
            ids = stream.sequences[rows].to(device)
            out = model(input_ids=ids, output_hidden_states=hidden, use_cache=False)
            logits = out.logits.float()
            top = logits.topk(min(top_k, logits.shape[-1]), dim=-1)
            values.append(top.values.cpu())
            indices.append(top.indices.cpu())
            lses.append(torch.logsumexp(logits, dim=-1).cpu())
            if hidden:
                states.append(out.hidden_states[-1].detach().to(torch.bfloat16).cpu())
            del out, logits, top
    finally:
        model.train(was_training)
    stamp = {"model": model_identity, "stream_sha256": stream.fingerprint, "top_k": top_k, "hidden": hidden, "dtype": dtype_name(model)}
    return TeacherTargets(torch.cat(values), torch.cat(indices), torch.cat(lses), torch.cat(states) if hidden else None, stamp)


def load_or_compute_teacher(
    folder: Path | None,
    model: nn.Module,
    stream: RecoveryStream,
    top_k: int,
    hidden: bool,
    batch_size: int,
    progress: bool,
    model_identity: dict[str, Any] | None,
) -> TeacherTargets:
    """The teacher's outputs from ``folder`` when a file there matches, else computed (and stored there)."""
    dtype = dtype_name(model)
    path = None if folder is None else Path(folder) / f"teacher-{teacher_key(model_identity, stream, top_k, hidden, dtype)}.pt"
    if path is not None and path.is_file():
        return TeacherTargets.load(path)
    targets = compute_teacher(model, stream, top_k, hidden, batch_size, progress, model_identity)
    if path is not None:
        targets.save(path)
    return targets


def top_k_kl(student_logits: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, lse: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean over positions of KL(teacher || student) on the teacher's top-k tokens plus one bucket for the rest.

    The teacher's distribution is ``p_i = exp((v_i - lse) / T)``-normalised over its top-k tokens and
    the remaining mass ``1 - sum p_i``; the student's is its softmax gathered at the same tokens and
    the mass it puts elsewhere. This is the exact KL divergence between the two distributions coarsened
    to those k + 1 outcomes (a lower bound of the full KL, equal to it when the rest has no mass).
    With ``temperature`` T != 1 the teacher's log-normaliser is recomputed from its top-k only.
    """
    student = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    log_q = student.gather(-1, indices)
    if temperature == 1.0:
        log_p = values - lse.unsqueeze(-1)
    else:
        log_p = torch.log_softmax(values / temperature, dim=-1)
    p = log_p.exp()
    p_rest = (1 - p.sum(-1)).clamp_min(0)
    q_rest = (1 - log_q.exp().sum(-1)).clamp_min(1e-12)
    top = (p * (log_p - log_q)).sum(-1)
    rest = torch.where(p_rest > 0, p_rest * (torch.log(p_rest.clamp_min(1e-12)) - torch.log(q_rest)), torch.zeros_like(p_rest))
    return (top + rest).mean() * temperature**2
