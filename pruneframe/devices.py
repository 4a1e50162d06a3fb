"""Devices and dtypes: what ``--device`` / ``device=`` and ``--dtype`` / ``dtype=`` name, resolved once.

``auto`` picks the first CUDA device when one is present, else the CPU (Apple's ``mps`` is used only
when asked for: several operations the methods use are missing there). A dtype of ``auto`` is the
checkpoint's own dtype on an accelerator and float32 on the CPU, where half-precision matmuls are
slow and statistics lose precision.

    >>> resolve_device("cpu")
    device(type='cpu')
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "DEVICE_CHOICES",
    "DTYPES",
    "DeviceUnavailableError",
    "available_devices",
    "resolve_device",
    "parse_dtype",
    "checkpoint_dtype",
    "resolve_dtype",
    "dtype_name",
    "model_device",
]

#: What ``--device`` accepts (``cuda:N`` for any N as well).
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")

#: Accepted dtype strings (and short aliases).
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


class DeviceUnavailableError(ValueError):
    """A device was asked for that this machine does not have (the message lists those it has)."""


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    """The devices this process can use: ``cpu``, then ``cuda:0`` .. ``cuda:N-1``, then ``mps``."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        devices.append("mps")
    return devices


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The concrete device ``spec`` names (``None`` and ``"auto"``: CUDA when present, else the CPU).

    ``"cuda"`` means ``cuda:0``; the returned device always carries an index for CUDA.

    Raises:
        DeviceUnavailableError: the device is not on this machine, or ``spec`` is not a device name.
    """
    text = "auto" if spec is None else str(spec).strip().lower()
    if text == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise DeviceUnavailableError(
            f"device {str(spec)!r} is not a device name; expected one of {', '.join(DEVICE_CHOICES)} "
            f"(this machine has: {', '.join(available_devices())})"
        ) from None
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    if device.type == "cpu":
        return torch.device("cpu")
    if str(device) not in available_devices():
        raise DeviceUnavailableError(
            f"device {str(spec)!r} is not available; this machine has: {', '.join(available_devices())}"
        )
    return device


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32"``/``"bfloat16"``/``"float16"`` (or fp32/bf16/fp16, or a torch dtype) to a torch dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype {dtype} is not supported; expected one of float32, bfloat16, float16")
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"dtype {dtype!r} is not supported; expected auto or one of {sorted(DTYPES)}") from None


def checkpoint_dtype(config: Any) -> torch.dtype | None:
    """The dtype a checkpoint's weights are stored in, from its config (object, dict or folder), if it says.

    Reads ``dtype`` (transformers 5) or ``torch_dtype`` (older configs); ``None`` when neither names a
    supported floating-point dtype.
    """
    if isinstance(config, (str, Path)):
        file = Path(config) / "config.json"
        if not file.is_file():
            return None
        config = json.loads(file.read_text(encoding="utf-8"))
    get = config.get if isinstance(config, dict) else lambda key: getattr(config, key, None)
    for key in ("dtype", "torch_dtype"):
        value = get(key)
        if value is None:
            continue
        name = str(value).removeprefix("torch.")
        if name in DTYPES:
            return DTYPES[name]
    return None


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device, stored: torch.dtype | None = None) -> torch.dtype:
    """The dtype to load in: ``dtype`` itself, or for ``auto``/``None`` the stored dtype on an accelerator, else float32."""
    if dtype is None or (isinstance(dtype, str) and dtype.strip().lower() == "auto"):
        if device.type == "cpu" or stored is None:
            return torch.float32
        return stored
    return parse_dtype(dtype)


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (the CPU for a parameterless module)."""
    for param in model.parameters():
        return param.device
    return torch.device("cpu")
