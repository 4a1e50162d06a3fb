"""Where a layer-streamed pass computes: the offload settings a method or evaluator mixes into its config.

The settings live here, below the pipeline and the toolkit, because the prune session and the input
checks read them without running a streamed pass; the passes themselves are
:mod:`pruneframe.toolkit.streaming`'s.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, field_validator
from torch import nn

from pruneframe.util.devices import model_device

__all__ = ["Offload", "StreamingOptions", "resolve_compute_device"]

#: ``none``: the whole model runs where it is; ``cpu``: the decoder layers run one at a time on the compute device.
Offload = Literal["none", "cpu"]


class StreamingOptions(BaseModel):
    """Config fields of a method whose calibration pass can stream the decoder layer by layer.

    Attributes:
        offload: ``none`` (the whole model runs where it is) or ``cpu`` (the weights stay where they
            are, normally the CPU, and each decoder layer in turn is moved to ``compute_device``).
        compute_device: where streamed layers run (``cuda``, ``cuda:1``, ``mps``, ``cpu``); ``None``
            picks CUDA when present, else the model's own device.
    """

    model_config = ConfigDict(extra="forbid")

    offload: Offload = "none"
    compute_device: str | None = None

    @field_validator("compute_device")
    @classmethod
    def _is_a_device(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                torch.device(value)
            except (RuntimeError, ValueError) as err:
                raise ValueError(f"compute_device={value!r} is not a torch device ({err})") from None
        return value

    @property
    def streaming(self) -> bool:
        """Whether the calibration pass streams the decoder layer by layer."""
        return self.offload != "none"

    def device_for(self, model: nn.Module) -> torch.device:
        """The compute device for ``model`` (see :func:`resolve_compute_device`)."""
        return resolve_compute_device(model, self.compute_device)


def resolve_compute_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """``device`` as a :class:`torch.device`; when None, CUDA if present, else ``model``'s device."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return model_device(model)
