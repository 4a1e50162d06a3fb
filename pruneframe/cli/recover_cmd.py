"""``pruneframe recover``: heal an existing pruned checkpoint into a new folder (the input is never changed).

    pruneframe recover out/flap-0.5 --recover distill --recover-tokens 65536 --out out/flap-0.5-distill

Distillation's teacher is the dense model the checkpoint was pruned from (as its ``pruning.json``
records it), or ``--teacher MODEL``. The new folder's ``pruning.json`` is the prune's report with the
recovery added (plugin, settings, tokens, the token stream's fingerprint, the teacher).
Under ``torchrun`` every rank trains on its share of each batch and rank 0 alone saves.
"""

from __future__ import annotations

import argparse
from pruneframe import checkpoint
from pruneframe.checkpoint.validate import is_checkpoint_folder
from pruneframe.cli.output_paths import writing
from pruneframe.util.paths import name_problem, user_path
from pruneframe.cli.common import (
    Command,
    add_device_flags,
    add_model_flags,
    add_output_flags,
    add_recovery_flags,
    guard_output,
    make_log,
    recovery_flag_settings,
    silenced,
)
from pruneframe.toolkit.distributed import process_group_from_env
from pruneframe.settings.errors import InputError
from pruneframe.settings.loading import load_dense
from pruneframe.settings.phases import input_phase
from pruneframe.settings.recovery import default_eval_sources, recovery_object, recovery_stream, recovery_text
from pruneframe.settings.text import RecoveryDataSettings
from pruneframe.pipeline.host import PluginHost
from pruneframe.toolkit.memory import release_unused_memory
from pruneframe.pipeline.prune_report import CheckpointReport
from pruneframe.recovery import compute_teacher, recover
from pruneframe.toolkit.resume import StaleCheckpointError

__all__ = ["COMMAND"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The checkpoint to heal, the recovery flags, the teacher and the new folder."""
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a pruned checkpoint folder written by pruneframe")
    add_model_flags(parser)
    parser.set_defaults(model=None)
    add_device_flags(parser)
    add_recovery_flags(parser, required=True)
    parser.add_argument(
        "--teacher", metavar="MODEL", help="the dense teacher for distill (default: the model the checkpoint was pruned from, as its pruning.json records it)"
    )
    add_output_flags(
        parser,
        "new checkpoint folder to write (never the input; an existing folder is refused unless it is a pruneframe checkpoint and --overwrite is given)",
        config=False,
        required=True,
        overwrite_help="replace the pruneframe checkpoint already at --out",
    )


def _teacher_spec(args: argparse.Namespace, report: CheckpointReport) -> str:
    if args.teacher:
        return args.teacher
    spec = (report.model or {}).get("spec")
    if not spec:
        raise InputError(f"{args.checkpoint}: pruning.json does not record the dense model; name the teacher with --teacher")
    return str(spec)


def run(args: argparse.Namespace) -> int:
    """Check the input folder and settings, load, (teacher,) recover, save into the new folder."""
    problem = name_problem(args.checkpoint)
    if problem is not None:
        raise InputError(f"CHECKPOINT {args.checkpoint!r}: {problem}")
    source = user_path(args.checkpoint)
    if not is_checkpoint_folder(source):
        raise InputError(f"CHECKPOINT {str(source)!r} is not a pruneframe checkpoint (no pruning.json and weights); prune a model first with pruneframe prune")
    if name_problem(args.out) is None and user_path(args.out).resolve() == source.resolve():
        raise InputError(f"--out {args.out!r} is the input checkpoint; recover writes a new folder and never changes its input")
    out = guard_output(args.out, "checkpoint", args.overwrite)
    with input_phase(f"CHECKPOINT {str(source)!r}"):
        report = checkpoint.read_report(source)
    host = PluginHost.create()
    name, settings, data = recovery_flag_settings(args)
    recovery = recovery_object(name, host, settings)
    if recovery.needs_teacher and report.vocabulary is not None and not args.teacher:
        raise InputError(
            f"recovery {recovery.name!r}: {source} has a trimmed vocabulary ({report.vocabulary.tokens:,} of "
            f"{report.vocabulary.dense_tokens:,} tokens), and the dense teacher reads other token ids; heal it with lora or finetune"
        )
    with input_phase("--recover-data"):
        data_settings = RecoveryDataSettings.model_validate(data)
    recovery_source = recovery_text(data_settings, default_eval_sources()) if recovery.trains else None
    dtype, device = args.dtype or "auto", args.device or "auto"
    with silenced(args.quiet), process_group_from_env() as (rank, _):
        main = rank == 0
        log = make_log(args.quiet or not main)
        log(f"loading checkpoint {source} ({dtype}, device {device})")
        model, tokenizer, _ = load_dense(str(source), dtype, device)
        with input_phase(f"recovery {recovery.name!r}"):
            recovery.check(model)
        stream = teacher = None
        teacher_identity = None
        if recovery.trains:
            stream = recovery_stream(recovery, recovery_source, tokenizer)
        if recovery.needs_teacher:
            spec = _teacher_spec(args, report)
            log(f"teacher outputs from {spec}: {stream.tokens:,} tokens")
            dense, _, teacher_identity = load_dense(spec, dtype, device)
            teacher = compute_teacher(
                dense, stream, recovery.teacher_top_k(), recovery.teacher_hidden(), recovery.config.batch_size, main and not args.quiet, teacher_identity
            )
            del dense
            release_unused_memory()
        log(f"recovering with {recovery.name} ({recovery.label()})")
        try:
            healed = recover(model, recovery, stream, teacher=teacher, host=host, progress=main and not args.quiet, model_identity=teacher_identity)
        except StaleCheckpointError as exc:
            raise InputError(f"recovery {recovery.name!r}: {exc}") from exc
        if not main:
            return 0
        with writing(out):
            path = checkpoint.save(out, healed.model, report=report.model_copy(update={"recovery": healed.record}), tokenizer=tokenizer)
    record = healed.record
    print(
        f"recovered {source} with {record.name} on {record.tokens:,} tokens in {record.wall_s:.1f} s "
        f"({record.tokens_per_s:,.0f} tokens/s); parameters unchanged: {record.params:,}\n  saved: {path}"
    )
    return 0


COMMAND = Command("recover", "heal a pruned checkpoint (distill, lora) into a new folder", add_arguments, run)
