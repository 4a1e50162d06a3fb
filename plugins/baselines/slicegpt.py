"""SliceGPT: rotate the residual stream onto its principal axes, then delete the weakest
(Ashkboos et al., ICLR 2024, "SliceGPT: Compress Large Language Models by Deleting Rows and Columns").

1. **Norm fusion.** Every pre-norm's scale moves into the projections that read it, so the norms
   commute with any orthogonal change of basis of the stream
   (:func:`~pruneframe.architectures.rotation.fuse_input_norms`).
2. **PCA.** On calibration windows, the second moment of the stream the layers read is accumulated and
   its eigenvectors ``Q`` (descending eigenvalue) become the stream's new axes
   (:func:`~pruneframe.toolkit.hidden_stats.stream_covariance`).
3. **Rotation and slicing.** Every tensor that reads or writes the stream is rotated into ``Q``
   (:func:`~pruneframe.architectures.rotation.rotate_hidden`), and the leading axes are kept: the
   embedding's and lm_head's columns, the input columns of q/k/v/gate/up and the output rows of
   o/down shrink together, the per-layer FFN channels and heads stay whole.

The hidden width is set by the budget (``hidden_keep: budget``): the widest multiple of
``hidden_round_to`` (default: the head count) whose model fits, the same exact budget every other
method meets. A fixed ``hidden_keep`` (the paper's "slicing" is ``1 - hidden_keep``) leaves the rest of
the budget to the per-layer units, which then keep all of theirs while they fit.

Two forms of the rotation (``rotation``):

- ``per-layer`` (the paper's): every point of the stream, each block's input and the final norm's,
  gets its own basis ``Q_p`` from the raw second moment of that point's inputs, and each block's
  residual connection carries a ``Q_p^T Q_{p+1}`` matrix from one basis to the next
  (:func:`~pruneframe.architectures.rotation.rotate_stream`). Those ``2L`` shortcut matrices,
  ``d' x d'`` once sliced, are counted in the budget, so the hidden width is narrower than with one
  rotation at the same size; they are saved through the checkpoint's modeling code
  (``trust_remote_code``), and llama.cpp export is refused (no family's graph has them).
- ``single`` (the default): one basis for the whole stream, the family's own architecture at a smaller
  ``hidden_size`` (plain config, llama.cpp export). Its axes are pooled over every block input and the
  final norm's, each token rescaled to unit root mean square (a norm's output depends only on that
  direction; raw vectors grow with depth and would let the last layers choose the axes alone).

``per-layer`` is the form the paper's tables come from; ``single`` trades fit for a model every engine
runs. Other differences from the paper, each for a stated reason:

- **Every basis is taken on the dense model** (one calibration pass records every point), where the
  paper computes each layer's basis on the outputs of the layers already rotated and sliced.
- **A tied lm_head is untied**, as the paper's code does for OPT: the final norm's scale must be fused
  into the head, and the embedding feeds the first layer too. The untied head is counted in the budget
  (a vocabulary-sized matrix at the kept width), so the hidden width is narrower than with a tie.
  Keeping the tie and approximating the final norm's rotated scale by its diagonal raised SmolLM2's
  calibration loss from 3.02 to 12.6 nats before any cut.
- **Families with post-norms are refused** (Gemma's sandwich layers normalise each block's output per
  channel before it joins the stream; a rotation can carry that scale only approximately), naming the
  norms.
- **Norm scales are corrected** for the channels cut (``norm_correction: energy``,
  :class:`~pruneframe.pipeline.methods.HiddenOptions`): transformers' RMSNorm averages over the
  channels it has, while the paper's norm divides by the vector's length, which slicing leaves nearly
  unchanged.
- **Calibration:** 64 windows of 256 tokens of WikiText-2 validation by default (the paper: 1,024
  sequences of 2,048 tokens of WikiText-2 train or Alpaca); no fine-tuning after slicing unless the
  comparison adds the shared ``distill`` recovery.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

import torch
from pydantic import Field

from pruneframe.architectures.rotation import StreamBases, principal_basis
from pruneframe.pipeline.hookspecs import hookimpl
from pruneframe.pipeline.methods import HiddenOptions, MethodConfig, PruningMethod, ScoringContext
from pruneframe.toolkit.hidden_stats import stream_covariance, stream_point_covariances

__all__ = ["SliceGPTConfig", "SliceGPT"]

PositiveInt = Annotated[int, Field(ge=1)]


class SliceGPTConfig(MethodConfig, HiddenOptions):
    """SliceGPT settings.

    Attributes:
        hidden_keep: ``budget`` (default: the hidden width alone meets the budget) or a share of the
            hidden width to keep (the paper's ``1 - slicing``).
        rotation: ``single``: one basis for the whole stream, the family's own architecture;
            ``per-layer``: a basis per point of the stream and residual shortcut matrices (the paper's).
        num_windows: calibration windows the stream's covariance is measured on.
        seq_len: tokens per window.
        batch_size: windows per forward pass.
    """

    hidden_keep: Annotated[float, Field(gt=0, le=1)] | Literal["budget"] = "budget"
    rotation: Literal["single", "per-layer"] = "single"
    num_windows: PositiveInt = 64
    seq_len: Annotated[int, Field(ge=2)] = 256
    batch_size: PositiveInt = 4


class SliceGPT(PruningMethod):
    """PCA rotation of the residual stream, then slicing (see the module docstring)."""

    name = "slicegpt"
    Config = SliceGPTConfig
    rotates_hidden = True
    summary = "rotates the residual stream onto its principal axes (PCA) and cuts the weakest hidden channels"
    config: SliceGPTConfig

    def __init__(self, config: SliceGPTConfig | dict[str, Any] | None = None) -> None:
        super().__init__(config)
        self._basis: dict[tuple[int, int], list[tuple[torch.Tensor, torch.Tensor]]] = {}

    @property
    def residual_shortcuts(self) -> bool:  # type: ignore[override]
        """Per-layer rotations put a shortcut matrix on every residual connection."""
        return self.config.rotation == "per-layer"

    def _principal(self, context: ScoringContext) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(eigenvalues, axes)`` of the pooled stream (one pair) or of each stream point (``2L + 1``)."""
        calibration = context.require_calibration(self.name)
        key = (id(context.model), id(calibration))
        if key not in self._basis:
            windows = calibration.windows(self.config.num_windows, self.config.seq_len)
            adapter = context.units.require_adapter()
            measure = stream_point_covariances if self.residual_shortcuts else lambda *a, **k: [stream_covariance(*a, **k)]
            covariances = measure(adapter, context.model, windows, batch_size=self.config.batch_size, progress=context.progress)
            context.stats["calibration_tokens"] = int(windows.numel())
            self._basis = {key: [principal_basis(c) for c in covariances]}
        return self._basis[key]

    def score(self, context: ScoringContext) -> torch.Tensor:
        """Every per-layer unit scores the same: SliceGPT cuts only the hidden dimension."""
        return torch.ones(len(context.units), dtype=torch.float32)

    def score_hidden(self, context: ScoringContext) -> torch.Tensor:
        """The basis' axes ranked by their eigenvalue (descending order: ``d - i`` for axis ``i``)."""
        shares = torch.stack([values.cumsum(0) / values.sum() for values, _ in self._principal(context)]).mean(0)
        context.stats["explained_variance"] = [round(float(v), 6) for v in shares.tolist()[:: max(1, len(shares) // 16)]]
        return torch.arange(len(shares), 0, -1, dtype=torch.float32)

    def hidden_rotation(self, context: ScoringContext) -> torch.Tensor | StreamBases:
        """The principal axes of the stream (columns, descending eigenvalue); one basis per stream point with ``per-layer``."""
        bases = [axes for _, axes in self._principal(context)]
        return StreamBases(tuple(bases)) if self.residual_shortcuts else bases[0]


@hookimpl
def pruneframe_register_methods(register: Callable[[type[PruningMethod]], None]) -> None:
    """Register SliceGPT."""
    register(SliceGPT)
