"""``pruneframe prune``: one method, one budget; saves a loadable checkpoint and prints the report summary.

    pruneframe prune --model smollm2-135m --method magnitude --budget 0.5 --out pruned/magnitude-0.5

Under ``torchrun`` (e.g. ``torchrun --nproc-per-node 4 -m pruneframe prune ...``) every rank runs the
method, whose calibration loops shard their batches across the ranks where they support it
(GRASPrune's two loops and the core statistics collector do); rank 0 alone logs and saves.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pruneframe.pipeline.calibration import CalibrationData, InsufficientCalibrationError
from pruneframe.toolkit.distributed import process_group_from_env
from pruneframe.cli.common import (
    Command,
    add_budget_flags,
    add_data_flags,
    add_device_flags,
    add_method_flags,
    add_model_flags,
    add_output_flags,
    add_recovery_flags,
    add_seed_flags,
    guard_output,
    make_log,
    silenced,
)
from pruneframe.cli.output_paths import writing
from pruneframe.cli.prune_settings import prune_config
from pruneframe.settings.errors import InputError
from pruneframe.settings.loading import calibration_stream, check_compute_device, load_dense
from pruneframe.settings.phases import input_phase
from pruneframe.settings.recovery import default_eval_sources, recovery_object, recovery_stream, recovery_text
from pruneframe.pipeline.host import PluginHost
from pruneframe import checkpoint
from pruneframe.pipeline.prune_report import PruneReport
from pruneframe.recovery import compute_teacher, recover
from pruneframe.toolkit.resume import StaleCheckpointError
from pruneframe.pipeline.session import PruneSession
from pruneframe.pipeline.vocab_method import trims_vocabulary

__all__ = ["COMMAND", "summary"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The prune flags: one method, one budget, calibration source and the checkpoint folder."""
    add_model_flags(parser)
    add_device_flags(parser)
    add_method_flags(parser, many=False)
    add_budget_flags(parser, many=False)
    add_seed_flags(parser, many=False)
    add_data_flags(parser, evaluation=False)
    add_recovery_flags(parser)
    add_output_flags(
        parser,
        "checkpoint folder to write (an existing folder is refused unless it is a pruneframe checkpoint and --overwrite is given)",
        config=False,
        required=True,
        overwrite_help="replace the pruneframe checkpoint already at --out",
    )


def summary(report: PruneReport, path: Path) -> str:
    """The report's headline numbers, one per line."""
    t = report.timings
    return "\n".join(
        [
            f"pruned with {report.method} to {report.budget_label}",
            f"  model: {report.architecture} on {report.device} in {report.dtype}",
            f"  prunable: {report.kept_prunable_params:,} kept of budget {report.budget_prunable_params:,} "
            f"({report.kept_fraction_of_prunable:.2%} of {report.prunable_params:,})",
            f"  parameters: {report.dense_params:,} -> {report.kept_params:,} ({report.kept_fraction_of_total:.2%})",
            *(
                [f"  vocabulary: {report.vocabulary.dense_tokens:,} -> {report.vocabulary.tokens:,} tokens (fingerprint {report.vocabulary.fingerprint})"]
                if report.vocabulary is not None
                else []
            ),
            f"  calibration tokens read: {report.calibration_tokens:,}",
            f"  time: {t.total_s:.1f} s (score {t.score_s:.1f} s, project_recalibrate {t.project_recalibrate_s:.1f} s, "
            f"fold {t.fold_s:.1f} s); peak RSS {report.memory.peak_rss_bytes / 2**20:,.0f} MB",
            *(
                [
                    f"  recovery: {report.recovery.name} on {report.recovery.tokens:,} tokens in {report.recovery.wall_s:.1f} s "
                    f"({report.recovery.tokens_per_s:,.0f} tokens/s), loss {report.recovery.loss_first:.3f} -> {report.recovery.loss_last:.3f}"
                ]
                if report.recovery is not None and report.recovery.steps
                else []
            ),
            f"  saved: {path}",
        ]
    )


def run(args: argparse.Namespace) -> int:
    """Load onto the device, check the budget, shrink the loaded model in place, save, print the summary.

    Under torchrun every rank prunes and rank 0 alone logs and saves.
    """
    config = prune_config(args)
    name = config.method
    out = guard_output(config.out, "checkpoint", args.overwrite)
    host = PluginHost.create()
    budget = config.budget_object()
    with input_phase(f"method {name!r}"):
        method = host.method(name, config.method_config())
        check_compute_device(method.config)
    recovery = recovery_object(config.recovery, host, config.recovery_settings) if config.recovery else None
    if recovery is not None and recovery.trains and trims_vocabulary(method):
        raise InputError(f"method {name!r} trims the vocabulary; recovery after it is not supported yet (its text and teacher use the dense tokenizer)")
    recovery_source = recovery_text(config.recovery_data, default_eval_sources()) if recovery is not None and recovery.trains else None
    with silenced(args.quiet), process_group_from_env() as (rank, _):
        main = rank == 0
        log = make_log(args.quiet or not main)
        log(f"loading model {config.model} ({config.dtype}, device {config.device})")
        model, tokenizer, identity = load_dense(config.model, config.dtype, config.device)
        tokens, stamp, _ = calibration_stream(config.calibration, tokenizer)
        stream = teacher = None
        if recovery is not None and recovery.trains:
            with input_phase(f"recovery {recovery.name!r}"):
                recovery.check(model)
            stream = recovery_stream(recovery, recovery_source, tokenizer)
            if recovery.needs_teacher:  # the dense outputs, before the one copy of the weights is pruned
                log(f"teacher outputs for {recovery.name}: {stream.tokens:,} tokens")
                teacher = compute_teacher(
                    model, stream, recovery.teacher_top_k(), recovery.teacher_hidden(), recovery.config.batch_size, main and not args.quiet, identity
                )
        with input_phase(f"model {config.model!r}, budget {budget.label()!r} for method {name!r}"):
            session = PruneSession(model, method, budget, host=host, model_identity=identity, tokenizer=tokenizer)
        del model  # the session holds the one copy, which the prune shrinks in place
        log(f"pruning with {name} ({budget.label()}); calibration {stamp['tokens']:,} tokens of {stamp['origin']}")
        try:
            result = session.run(CalibrationData(tokens, name=str(stamp["name"])), progress=main and not args.quiet, inplace=True, calibration_source=stamp)
        except (StaleCheckpointError, InsufficientCalibrationError) as exc:
            raise InputError(f"method {name!r}: {exc}") from exc
        pruned, report = result.model, result.report
        if recovery is not None:
            log(f"recovering with {recovery.name} ({recovery.label()})")
            healed = recover(pruned, recovery, stream, teacher=teacher, host=host, progress=main and not args.quiet, model_identity=identity)
            pruned, report = healed.model, report.model_copy(update={"recovery": healed.record})
        if not main:
            return 0
        with writing(out):
            kept_tokenizer = result.tokenizer if result.tokenizer is not None else tokenizer  # a trimmed vocabulary's own
            path = checkpoint.save(guard_output(out, "checkpoint", args.overwrite), pruned, report=report, tokenizer=kept_tokenizer)
    print(summary(report, path))
    return 0


COMMAND = Command("prune", "prune one model with one method to one budget and save a checkpoint", add_arguments, run)
