"""GRASPrune's settings; defaults follow the reference implementation."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from pruneframe.util.devices import LoadDtype
from pruneframe.pipeline.methods import MethodConfig
from pruneframe.toolkit.streaming import StreamingOptions

__all__ = ["GRASPruneConfig"]

PositiveInt = Annotated[int, Field(ge=1)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class GRASPruneConfig(MethodConfig, StreamingOptions):
    """GRASPrune settings (stage A: gate training; stage B: scale recalibration).

    The projection ``policy`` (inherited) is ``rank`` by default, i.e. units are ordered by their
    gate probability p, not p/cost; ``density`` orders by p/cost.

    ``offload="cpu"`` (inherited from :class:`~pruneframe.toolkit.streaming.StreamingOptions`) runs every
    forward and backward pass of both stages, the dense teacher and the compensation statistics one
    decoder layer at a time on ``compute_device`` (:func:`pruneframe.toolkit.streaming.streamed_backward`):
    for a model whose weights do not fit the device. ``recompute`` is then implied. Every step moves
    each layer to the device twice (forward, then backward), so a larger ``batch_size`` amortises the
    transfers.
    """

    policy: Literal["rank", "density"] = "rank"
    tau: PositiveFloat = Field(1.5, description="temperature: p = sigmoid(s / tau)")
    lr: PositiveFloat = Field(1e-2, description="AdamW learning rate of the gate scores")
    optimizer: Literal["adamw", "block-adam"] = Field(
        "adamw",
        description="gate optimizer: adamw (reference) or block-adam (one second moment per unit kind, so "
        "units move in proportion to their gradient, not its sign; weight_decay does not apply)",
    )
    init_from: str | None = Field(
        None,
        description="registered method whose scores initialise the gate scores (warm start), by rank: "
        "s = init_spread * (rank / (n - 1) - 1/2) over the n units of init_scope; None = all zeros (reference)",
    )
    init_config: dict[str, Any] | None = Field(None, description="config of the init_from method")
    init_spread: Annotated[float, Field(gt=0, allow_inf_nan=False)] = Field(1.0, description="range of the initial gate scores under init_from")
    init_scope: Literal["global", "uniform"] = Field(
        "global",
        description="how init_from's scores are ranked: over all units (global; for methods that rank "
        "globally, such as flap) or within each layer and kind (uniform; for methods that prune every layer "
        "by the same ratio, such as llm-pruner and wanda-sp), so that the first mask follows that allocation",
    )
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    epochs: PositiveInt = 4
    num_sequences: PositiveInt = Field(512, description="calibration sequences for gate training")
    seq_len: PositiveInt = Field(256, description="tokens per calibration sequence")
    batch_size: PositiveInt = 1
    recompute: bool = Field(
        False,
        description="keep only each decoder layer's inputs in the forward pass and recompute its activations in "
        "the backward pass (pruneframe.toolkit.recompute): one layer's activations at a time for one more forward pass, "
        "the same gradients; for long sequences or large batches on a large model",
    )
    shuffle: bool = Field(True, description="reshuffle the sequences every epoch (seeded)")
    loss: Literal["lm", "distill"] = Field(
        "lm",
        description="stage A objective: lm = causal-LM cross-entropy on the calibration text (reference); "
        "distill = KL divergence from the dense model's next-token distribution (the same frozen backbone "
        "with the gates off; its hidden states are computed once, one forward per sequence)",
    )
    rescale: bool = Field(True, description="stage B: learn one scale per kept unit and fold it in")
    rescale_alpha: Annotated[float, Field(gt=0, le=1)] = Field(0.5, description="gamma = 1 + alpha * tanh(t)")
    rescale_outputs: bool = Field(
        False,
        description="stage B also learns one scale per hidden dimension of every down_proj and o_proj output "
        "(1 + alpha * tanh(u), u starting at 0), folded into their rows: no extra parameters",
    )
    rescale_lr: PositiveFloat = 1e-2
    rescale_epochs: PositiveInt = 1
    rescale_loss: Literal["lm", "distill"] = Field("lm", description="stage B objective, as ``loss``")
    rescale_sequences: Annotated[int | None, Field(ge=1)] = Field(
        None, description="sequences for stage B, taken after the gate-training ones (default: num_sequences)"
    )
    bias_compensation: bool = Field(False, description="add each removed unit's mean output back as a down_proj/o_proj bias before stage B")
    least_squares: bool = Field(
        False,
        description="before stage B, refit the kept down_proj columns in closed form (ridge least squares "
        "to the dense down_proj output on the pruned model's own activations, stage-B sequences); the "
        "scales are then learned on top and folded into the refit columns",
    )
    least_squares_damping: Annotated[float, Field(gt=0, allow_inf_nan=False)] = Field(
        0.003, description="ridge strength of the refit, relative to the mean kept activation energy"
    )
    attn_implementation: Literal["sdpa", "eager", "model"] = Field(
        "sdpa",
        description="attention kernel during the two loops: sdpa (fused, keeps no attention matrix for the "
        "backward pass), eager, or model = whatever the model was loaded with",
    )
    checkpoint_dir: str | None = Field(
        None,
        description="directory for the resumable state of both loops (grasprune-gates.pt, grasprune-scales.pt); "
        "a rerun of the same configuration on the same model and data resumes after the last saved step",
    )
    checkpoint_every: PositiveInt = Field(50, description="steps between two saves of the resumable state")
    dtype: LoadDtype = Field(
        "auto",
        description="compute dtype of the frozen backbone: auto = the dtype the model was loaded in; a named "
        "dtype is checked against the model (gates, scales and optimiser state are float32 either way)",
    )
