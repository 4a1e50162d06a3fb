"""What every run reads first, loaded once with the stamps that identify it: the model and the calibration stream.

The model comes with its tokenizer and identity (:func:`pruneframe.models.identity.model_identity`); the
calibration text is one token stream with its source, size and fingerprints. A failure caused by input
raises :class:`~pruneframe.settings.errors.InputError` (see :mod:`pruneframe.settings.phases`).
"""

from __future__ import annotations

from typing import Any

import torch

from pruneframe.data import calibration_data, resolve_text
from pruneframe.data.windows import tokenizer_fingerprint
from pruneframe.models import load_model
from pruneframe.models.identity import model_identity
from pruneframe.settings.errors import InputError
from pruneframe.settings.phases import input_phase
from pruneframe.settings.text import CalibrationSettings
from pruneframe.toolkit.resume import tensor_digest
from pruneframe.util.devices import resolve_device
from pruneframe.util.offload import StreamingOptions

__all__ = ["load_dense", "calibration_stream", "check_compute_device"]


def load_dense(spec: str, dtype: str = "auto", device: str = "auto") -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """Load ``spec`` onto ``device`` in ``dtype`` as ``(model, tokenizer, identity)``.

    A missing tokenizer, a device this machine lacks, or a model transformers cannot load (it says so
    with an ``OSError``: a hub id it cannot reach or find, a folder without a weight file) is an input
    error; any other ``OSError`` propagates.
    """
    with input_phase(f"model {spec!r}"):
        identity = model_identity(spec)
        try:
            model, tokenizer = load_model(spec, dtype, device)
        except OSError as exc:
            if identity["kind"] != "hub" and not _raised_in(exc, _MODEL_LOADERS):
                raise
            raise InputError(f"model {spec!r}: {exc}") from exc
    if tokenizer is None:
        raise InputError(f"model {spec!r}: no tokenizer found next to the weights; save one with the model")
    return model, tokenizer, identity


#: Packages whose ``OSError`` while loading a model means the model's files or hub id (their convention).
_MODEL_LOADERS = ("transformers", "huggingface_hub")


def _raised_in(exc: BaseException, packages: tuple[str, ...]) -> bool:
    """Whether ``exc`` was raised by code of one of ``packages`` (its innermost traceback frame)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    module = str(tb.tb_frame.f_globals.get("__name__", "")) if tb is not None else ""
    return module.split(".")[0] in packages


def calibration_stream(settings: CalibrationSettings, tokenizer: Any) -> tuple[torch.Tensor, dict[str, Any], Any]:
    """The calibration text as one token stream, its stamp (source, size, fingerprints) and the source."""
    settings = settings.resolved()
    with input_phase(f"calibration data {settings.data!r}"):
        source = resolve_text(settings.data, settings.split)
        tokens = calibration_data(source, tokenizer, max_tokens=settings.max_tokens).tokens
    stamp = {
        **source.describe(),
        "tokens": int(tokens.numel()),
        "tokens_sha256": tensor_digest(tokens),
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "max_tokens": settings.max_tokens,
    }
    return tokens, stamp, source


def check_compute_device(settings: Any) -> None:
    """Raise ``DeviceUnavailableError`` when ``settings`` (a method's or evaluator's) stream layers to a device this machine lacks."""
    if isinstance(settings, StreamingOptions) and settings.streaming and settings.compute_device is not None:
        resolve_device(settings.compute_device)
