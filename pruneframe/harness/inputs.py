"""What every run reads, loaded and validated once, with the stamps that identify it.

The model (and its identity), the calibration token stream, and the configured evaluators (with the
fingerprints of the data they read). Every failure caused by input (unknown names, bad settings,
unreachable data, a missing tokenizer) is raised as :class:`~pruneframe.harness.config.InputError`,
so the command line can report it in one line before anything slow starts. Only the error types in
:data:`INPUT_ERRORS` count as input errors: any other exception (an internal ``KeyError`` or
``OSError`` included) is a bug and propagates with its traceback.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from pruneframe.data import calibration_data, resolve_text
from pruneframe.data.windows import tokenizer_fingerprint
from pruneframe.evaluation.base import Evaluator
from pruneframe.evaluation.zeroshot import check_lm_eval_tasks, resolve_task
from pruneframe.harness.cache import model_identity, package_digest
from pruneframe.harness.config import CalibrationSettings, EvalConfig, InputError, explain
from pruneframe.pipeline.host import PluginHost, UnknownNameError, UnsupportedModelError
from pruneframe.models import load_model
from pruneframe.toolkit.resume import tensor_digest
from pruneframe.toolkit.streaming import StreamingOptions
from pruneframe.util.devices import resolve_device

__all__ = [
    "INPUT_ERRORS",
    "PATH_ERRNOS",
    "input_phase",
    "load_dense",
    "calibration_stream",
    "check_compute_device",
    "build_evaluators",
    "check_evaluators",
]

#: The exceptions an input phase reports as bad input. ``ValueError``: a bad value; pruneframe's own input
#: errors are all ValueErrors (``InputError``, ``BudgetError``, ``DataSourceError``, ``DeviceUnavailableError``,
#: ``InsufficientCalibrationError``, ``CheckpointError``, ``StaleCheckpointError``), as is pydantic's
#: ``ValidationError``. ``UnknownNameError``: a method or evaluator name no plugin registered (the one
#: ``KeyError`` that is input). ``UnsupportedModelError``: a model no adapter handles (the one
#: ``NotImplementedError`` that is input). ``FileNotFoundError``, ``NotADirectoryError`` and
#: ``IsADirectoryError``: a named path that is missing or of the wrong kind (the ``OSError``\ s that are input,
#: with those of :data:`PATH_ERRNOS`).
INPUT_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    UnknownNameError,
    UnsupportedModelError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
)


#: The ``errno`` values of an ``OSError`` that only a named path causes: a name too long, a symbolic link loop.
PATH_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.ELOOP})


@contextmanager
def input_phase(what: str) -> Iterator[None]:
    """Re-raise the :data:`INPUT_ERRORS` (and the path errors of :data:`PATH_ERRNOS`) raised inside as ``InputError`` naming ``what``.

    Anything else propagates unchanged.
    """
    try:
        yield
    except InputError:
        raise
    except INPUT_ERRORS as exc:
        raise InputError(f"{what}: {explain(exc)}") from exc
    except OSError as exc:
        if exc.errno not in PATH_ERRNOS:
            raise
        named = f"{exc.filename!r}: " if exc.filename is not None else ""
        raise InputError(f"{what}: {named}{exc.strerror}") from exc


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


def check_evaluators(evaluators: dict[str, Evaluator], tokenizer: Any) -> None:
    """Each evaluator's :meth:`~pruneframe.evaluation.base.Evaluator.check` with ``tokenizer``; a failure is an ``InputError`` naming it."""
    for name, evaluator in evaluators.items():
        with input_phase(f"evaluation.{name}"):
            evaluator.check(tokenizer)


def build_evaluators(host: PluginHost, config: EvalConfig) -> tuple[dict[str, Evaluator], dict[str, Any], list[Any]]:
    """Instantiate the enabled evaluators; return them, the evaluation stamp and the text sources they read.

    The stamp holds each evaluator's validated settings, its module hash, and the fingerprints of the
    data it reads (text sources for ``sources`` or ``data``/``split`` settings, task files for ``tasks``).
    """
    evaluators: dict[str, Evaluator] = {}
    stamp: dict[str, Any] = {}
    sources: list[Any] = []
    for name, settings in config.enabled_evaluators().items():
        with input_phase(f"evaluation.{name}"):
            evaluator = host.evaluator(name, settings)
            cfg = evaluator.config
            check_compute_device(cfg)
            entry: dict[str, Any] = {"config": cfg.model_dump(mode="json"), "code": package_digest(type(evaluator))}
            if isinstance(getattr(cfg, "sources", None), list):
                entry["data"] = {}
                for spec in cfg.sources:
                    source = resolve_text(spec.data, spec.split)
                    sources.append(source)
                    entry["data"][spec.column()] = {**source.describe(), "domain": spec.domain or source.domain}
            elif hasattr(cfg, "data") and hasattr(cfg, "split"):
                source = resolve_text(cfg.data, cfg.split)
                sources.append(source)
                entry["data"] = source.describe()
            if hasattr(cfg, "tasks"):
                resolved = [resolve_task(task) for task in cfg.tasks]
                check_lm_eval_tasks([t for t in resolved if isinstance(t, str)])
                entry["tasks"] = [t if isinstance(t, str) else t.model_dump() for t in resolved]
        evaluators[name], stamp[name] = evaluator, entry
    return evaluators, stamp, sources
