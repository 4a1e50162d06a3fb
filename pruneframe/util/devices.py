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
from typing import Annotated, Any, Literal

import torch
from pydantic import BeforeValidator

__all__ = [
    "DEVICE_CHOICES",
    "DTYPES",
    "DTYPE_CHOICES",
    "DtypeName",
    "LoadDtype",
    "canonical_dtype",
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


#: Every dtype string ``--dtype``, a config file's ``dtype`` and ``dtype=`` accept (``auto``: see :func:`resolve_dtype`).
DTYPE_CHOICES: tuple[str, ...] = ("auto", *DTYPES)


def canonical_dtype(value: Any) -> Any:
    """The canonical name of a dtype string or torch dtype (``"BF16"`` -> ``"bfloat16"``; ``"auto"`` stays).

    Non-strings other than torch dtypes are returned unchanged, for the caller's validation to refuse.

    Raises:
        ValueError: a string (or torch dtype) that is not among :data:`DTYPE_CHOICES`.
    """
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, (str, torch.dtype)):
        return dtype_name(parse_dtype(value))
    return value


#: A validated dtype setting: any of :data:`DTYPES`' names or aliases, stored under its canonical name.
DtypeName = Annotated[Literal["float32", "bfloat16", "float16"], BeforeValidator(canonical_dtype)]
#: :data:`DtypeName` or ``auto`` (the checkpoint's own dtype on an accelerator, float32 on the CPU).
LoadDtype = Annotated[Literal["auto", "float32", "bfloat16", "float16"], BeforeValidator(canonical_dtype)]


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
            f"device {str(spec)!r} is not a device name; expected one of {', '.join(DEVICE_CHOICES)} (this machine has: {', '.join(available_devices())})"
        ) from None
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    if device.type == "cpu":
        return torch.device("cpu")
    if str(device) not in available_devices():
        raise DeviceUnavailableError(f"device {str(spec)!r} is not available; this machine has: {', '.join(available_devices())}")
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
        raise ValueError(f"dtype {dtype!r} is not supported; expected one of {', '.join(DTYPE_CHOICES)}") from None


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


def dtype_name(dtype: torch.dtype | torch.nn.Module) -> str:
    """The canonical name of a dtype (``torch.bfloat16`` -> ``"bfloat16"``), or of a module's dtype.

    For a module: the dtype of its first floating-point parameter (``"float32"`` when it has none).
    """
    if isinstance(dtype, torch.nn.Module):
        floating = (p.dtype for p in dtype.parameters() if p.is_floating_point())
        dtype = next(floating, torch.float32)
    return str(dtype).removeprefix("torch.")


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the module's first parameter, else of its first buffer, else the CPU."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")
