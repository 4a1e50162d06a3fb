"""pruneframe: budgeted structured pruning of LLMs with one contract for every method.

Public API::

    import pruneframe
    result = pruneframe.prune(model, method="grasprune", budget=0.5, calibration=tokens, device="auto")
    print(result.report.kept_params, result.report.timings.total_s)   # a typed PruneReport
    result.save("out/")
    model, tokenizer = pruneframe.load_pruned("out/")
    healed = pruneframe.recover(result.model, "distill", stream, teacher=dense_model).model   # see pruneframe.recovery
    pruneframe.export_gguf("out/", "out.gguf", dtype="f16")           # for llama.cpp / ollama
    mask = pruneframe.budget.project(scores, costs, budget_int, groups=groups)
"""

from pruneframe.pipeline import budget
from pruneframe.api import PruneResult, load_pruned, prune
from pruneframe.export import export_gguf
from pruneframe.pipeline.prune_report import PruneReport
from pruneframe.recovery import recover
from pruneframe.pipeline.session import PruneSession
from pruneframe.pipeline.calibration import CalibrationData
from pruneframe.pipeline.host import PluginHost
from pruneframe.pipeline.hookspecs import hookimpl
from pruneframe.pipeline.methods import MethodConfig, PruningMethod, Recalibration, ScoringContext
from pruneframe.pipeline.recalibration import PipelineMethod, RecalibrationConfig, RecalibrationMethod
from pruneframe.pipeline.units import UnitKind, UnitSet

__version__ = "0.1.0"

__all__ = [
    "prune",
    "recover",
    "PruneResult",
    "PruneSession",
    "PruneReport",
    "load_pruned",
    "export_gguf",
    "budget",
    "CalibrationData",
    "PluginHost",
    "hookimpl",
    "MethodConfig",
    "PruningMethod",
    "Recalibration",
    "RecalibrationConfig",
    "RecalibrationMethod",
    "PipelineMethod",
    "ScoringContext",
    "UnitKind",
    "UnitSet",
]
