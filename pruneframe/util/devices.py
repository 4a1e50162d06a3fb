"""Devices and dtypes: what ``--device`` / ``device=`` and ``--dtype`` / ``dtype=`` name, resolved once.

``auto`` picks the first CUDA device when one is present, else the CPU (Apple's ``mps`` is used only
when asked for: several operations the methods use are missing there). A dtype of ``auto`` is chosen
from the hardware by :func:`choose_dtype`: bfloat16 where the device runs it natively (CUDA with bf16
support, a CPU with AVX-512 BF16 or AMX), float32 everywhere else. On a CPU without those instructions
bf16 is emulated and several times slower than float32 (``benchmarks/dtype_speed.py`` measures it on
the machine it runs on).

    >>> resolve_device("cpu")
    device(type='cpu')
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
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
    "DtypeChoice",
    "EmulatedDtypeWarning",
    "NATIVE_BF16_ENV",
    "native_bf16",
    "choose_dtype",
    "hardware_info",
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


#: Every dtype string ``--dtype``, a config file's ``dtype`` and ``dtype=`` accept (``auto``: see :func:`choose_dtype`).
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
#: :data:`DtypeName` or ``auto`` (bfloat16 where the device runs it natively, else float32: :func:`choose_dtype`).
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


#: Environment variable that overrides the native-bf16 probe (``1``: native, ``0``: emulated), e.g. to get
#: the same ``auto`` dtype on every machine of a cluster, or where the probe is wrong.
NATIVE_BF16_ENV = "PRUNEFRAME_NATIVE_BF16"


class EmulatedDtypeWarning(UserWarning):
    """bfloat16 was named for a device that emulates it (correct results, several times slower than float32)."""


def _cpu_bf16() -> tuple[bool, str]:
    capability = torch.backends.cpu.get_cpu_capability()
    # ATen's kernels must be built for AVX-512 as well: with ATEN_CPU_CAPABILITY=avx2 bf16 runs emulated.
    if not capability.upper().startswith("AVX512"):
        return False, f"this CPU has no native bf16: {capability}"
    found = [name for name, probe in (("AVX-512 BF16", torch.cpu._is_avx512_bf16_supported), ("AMX", torch.cpu._is_amx_tile_supported)) if probe()]
    if not found:
        return False, f"this CPU has no native bf16: {capability} without AVX-512 BF16 or AMX"
    return True, f"this CPU runs bf16 natively: {capability} with {' and '.join(found)}"


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` runs bfloat16 natively, and the evidence in words.

    CUDA: ``torch.cuda.is_bf16_supported()``. CPU: ATen's capability is AVX-512 and the CPU has AVX-512
    BF16 or AMX tiles. Anything else (Apple's ``mps`` included) counts as emulated. The environment
    variable :data:`NATIVE_BF16_ENV` overrides the probe.
    """
    forced = os.environ.get(NATIVE_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1", f"{NATIVE_BF16_ENV}={forced}"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return True, f"{torch.cuda.get_device_name(device)} supports bf16"
        return False, f"{torch.cuda.get_device_name(device)} has no native bf16"
    if device.type == "cpu":
        return _cpu_bf16()
    return False, f"bf16 is not native on {device.type} for every operation the methods use"


@dataclass(frozen=True)
class DtypeChoice:
    """The dtype a model is loaded and computed in, why, and a warning when the choice is slow here."""

    dtype: torch.dtype
    reason: str
    warning: str | None = None

    @property
    def name(self) -> str:
        """The dtype's canonical name (``"float32"``)."""
        return dtype_name(self.dtype)

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


def choose_dtype(requested: str | torch.dtype | None, device: torch.device) -> DtypeChoice:
    """The compute dtype for ``requested`` on ``device``: the one rule behind every ``auto``.

    ``auto`` (or ``None``) is bfloat16 where :func:`native_bf16` says the device runs it natively and
    float32 everywhere else. A named dtype always wins; naming bfloat16 for a device that emulates it
    comes with a warning.

    Raises:
        ValueError: ``requested`` is not a supported dtype name.
    """
    if requested is None or (isinstance(requested, str) and requested.strip().lower() == "auto"):
        native, why = native_bf16(device)
        return DtypeChoice(torch.bfloat16 if native else torch.float32, why)
    dtype = parse_dtype(requested)
    if dtype is not torch.bfloat16:
        return DtypeChoice(dtype, "named in the settings")
    native, why = native_bf16(device)
    if native:
        return DtypeChoice(dtype, f"named in the settings; {why}")
    slow = f"bfloat16 was named but is emulated here ({why}): expect it to run several times slower than float32 (dtype: auto picks float32)"
    return DtypeChoice(dtype, f"named in the settings; {why}", warning=slow)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """What a timing on ``device`` depends on: CPU model, ATen's capability, bf16 support, threads (and the GPU).

    Recorded beside every timing, since the same code runs several times faster or slower from one
    machine to the next (bf16 above all, see :func:`native_bf16`).
    """
    device = torch.device(device)
    native, why = native_bf16(device)
    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "avx512_bf16": bool(torch.cpu._is_avx512_bf16_supported()),
        "amx": bool(torch.cpu._is_amx_tile_supported()),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "native_bf16": native,
        "native_bf16_reason": why,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


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
