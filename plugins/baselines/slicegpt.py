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

Differences from the paper, each for a stated reason:

- **One rotation for the whole stream** (``rotation: single``), not one per layer. The paper rotates
  each layer's input by its own ``Q_l`` and adds a ``Q_l^T Q_{l+1}`` matrix to every residual
  connection; those shortcut matrices are not part of any family's architecture, so llama.cpp and a
  plain ``AutoModelForCausalLM`` could not run the result. One rotation keeps the family's own
  architecture at a smaller ``hidden_size``. The paper's tables come from the per-layer version, which
  fits each layer's axes better; this plugin does not reproduce them.
- **The axes are pooled over every layer** and the final norm, each token rescaled to unit root mean
  square (a norm's output depends only on that direction; raw vectors grow with depth and would let
  the last layers choose the axes alone). The paper takes each layer's own raw inputs.
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

from pruneframe.architectures.rotation import principal_basis
from pruneframe.pipeline.hookspecs import hookimpl
from pruneframe.pipeline.methods import HiddenOptions, MethodConfig, PruningMethod, ScoringContext
from pruneframe.toolkit.hidden_stats import stream_covariance

__all__ = ["SliceGPTConfig", "SliceGPT"]

PositiveInt = Annotated[int, Field(ge=1)]


class SliceGPTConfig(MethodConfig, HiddenOptions):
    """SliceGPT settings.

    Attributes:
        hidden_keep: ``budget`` (default: the hidden width alone meets the budget) or a share of the
            hidden width to keep (the paper's ``1 - slicing``).
        rotation: ``single``: one basis for the whole stream, the family's own architecture.
        num_windows: calibration windows the stream's covariance is measured on.
        seq_len: tokens per window.
        batch_size: windows per forward pass.
    """

    hidden_keep: Annotated[float, Field(gt=0, le=1)] | Literal["budget"] = "budget"
    rotation: Literal["single"] = "single"
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
        self._basis: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def _principal(self, context: ScoringContext) -> tuple[torch.Tensor, torch.Tensor]:
        calibration = context.require_calibration(self.name)
        key = (id(context.model), id(calibration))
        if key not in self._basis:
            windows = calibration.windows(self.config.num_windows, self.config.seq_len)
            adapter = context.units.require_adapter()
            covariance = stream_covariance(adapter, context.model, windows, batch_size=self.config.batch_size, progress=context.progress)
            context.stats["calibration_tokens"] = int(windows.numel())
            self._basis = {key: principal_basis(covariance)}
        return self._basis[key]

    def score(self, context: ScoringContext) -> torch.Tensor:
        """Every per-layer unit scores the same: SliceGPT cuts only the hidden dimension."""
        return torch.ones(len(context.units), dtype=torch.float32)

    def score_hidden(self, context: ScoringContext) -> torch.Tensor:
        """The basis' axes ranked by their eigenvalue (descending order: ``d - i`` for axis ``i``)."""
        values, _ = self._principal(context)
        context.stats["explained_variance"] = [round(float(v), 6) for v in (values.cumsum(0) / values.sum()).tolist()[:: max(1, len(values) // 16)]]
        return torch.arange(len(values), 0, -1, dtype=torch.float32)

    def hidden_rotation(self, context: ScoringContext) -> torch.Tensor:
        """The principal axes of the stream (columns, descending eigenvalue)."""
        return self._principal(context)[1]


@hookimpl
def pruneframe_register_methods(register: Callable[[type[PruningMethod]], None]) -> None:
    """Register SliceGPT."""
    register(SliceGPT)
