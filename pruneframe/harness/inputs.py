"""What a comparison's evaluators read, built and checked once, with the fingerprints of the data they read.

The model, the calibration stream and the input phases every command shares are
:mod:`pruneframe.settings`' (:mod:`~pruneframe.settings.loading`, :mod:`~pruneframe.settings.phases`),
re-exported here. Every failure caused by input is raised as
:class:`~pruneframe.settings.errors.InputError`; only the error types in :data:`INPUT_ERRORS` count as
input errors.
"""

from __future__ import annotations

from typing import Any

from pruneframe.data import resolve_text
from pruneframe.evaluation.base import Evaluator
from pruneframe.evaluation.zeroshot import check_lm_eval_tasks, resolve_task
from pruneframe.harness.cache import package_digest
from pruneframe.harness.config import EvalConfig
from pruneframe.pipeline.host import PluginHost
from pruneframe.settings.loading import calibration_stream, check_compute_device, load_dense
from pruneframe.settings.phases import INPUT_ERRORS, PATH_ERRNOS, input_phase

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
