"""``pruneframe eval``: run the comparison's evaluators on one model (a pruned checkpoint or any HF model).

pruneframe eval --model pruned/magnitude-0.5 --dense smollm2-135m --out eval.json   # + ratios to dense
pruneframe eval --model pruned/magnitude-0.5 --protocol wikitext2-2048               # a paper's protocol
pruneframe eval --config examples/compare_smollm2.yaml --model pruned/magnitude-0.5   # same protocol
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from pruneframe.util.io import write_json_atomic
from pruneframe.checkpoint import read_report, read_report_json, software_versions
from pruneframe.cli.common import (
    Command,
    add_data_flags,
    add_device_flags,
    add_eval_flags,
    add_model_flags,
    add_output_flags,
    add_seed_flags,
    guard_output,
    make_log,
    silenced,
    validated_settings,
)
from pruneframe.cli.output_paths import writing
from pruneframe.util.devices import dtype_name, model_device
from pruneframe.evaluation.base import EvalContext
from pruneframe.evaluation.perplexity import NonFiniteError
from pruneframe.evaluation.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, ratio_interval
from pruneframe.harness.config import EvalConfig
from pruneframe.harness.report import ZEROSHOT_HOWTO
from pruneframe.harness.cache import code_identity
from pruneframe.harness.inputs import build_evaluators, check_evaluators
from pruneframe.models.identity import model_identity
from pruneframe.settings.errors import InputError
from pruneframe.settings.loading import load_dense
from pruneframe.settings.phases import input_phase
from pruneframe.harness.runner import evaluate_model
from pruneframe.pipeline.host import PluginHost

__all__ = ["COMMAND", "eval_config"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The eval flags: the model, an optional dense reference, and the evaluation knobs."""
    add_model_flags(parser)
    add_device_flags(parser)
    parser.add_argument(
        "--dense",
        metavar="MODEL",
        help="the unpruned model, for kept-fraction, measured/ideal speedups and perplexity ratios with 95%% paired-bootstrap intervals",
    )
    add_seed_flags(parser, many=False)
    add_data_flags(parser, calib=False)
    add_eval_flags(parser)
    add_output_flags(
        parser,
        "JSON file to write (default: print the JSON to stdout); an existing file is refused unless it is a pruneframe eval record and --overwrite is given",
        overwrite_help="replace the eval record already at --out",
    )


def eval_config(args: argparse.Namespace) -> EvalConfig:
    """The model and evaluation settings: those of a ``--config`` file (other keys ignored), flags on top."""
    return validated_settings(args, EvalConfig, own_fields_only=True)


def _headline(results: dict[str, Any]) -> str:
    parts = []
    for label, row in (results.get("perplexity", {}).get("sources") or {}).items():
        parts.append(f"ppl {label} {row['ppl']:.3f}")
    for task, row in (results.get("zeroshot", {}).get("tasks") or {}).items():
        if row.get("acc") is not None:
            parts.append(f"{task} acc {row['acc']:.3f} ± {row['acc_stderr'] or 0:.3f}")
    if "size" in results:
        parts.append(f"{results['size']['params']['total']:,} params")
    return ", ".join(parts)


def _ratios(model_ppl: dict[str, Any], dense_ppl: dict[str, Any]) -> dict[str, Any]:
    """Per source: perplexity / dense perplexity with its 95% paired-bootstrap interval, and the dense record."""
    out: dict[str, Any] = {}
    for label, row in model_ppl["sources"].items():
        reference = dense_ppl["sources"][label]
        interval = ratio_interval(row["window_nll"], reference["window_nll"], [row["window_tokens"]] * row["windows"])
        out[label] = {
            **interval.as_dict(),
            "dense_ppl": reference["ppl"],
            "dense_window_nll": reference["window_nll"],
            "domain": row["domain"],
            "bootstrap": {"resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED},
        }
    return out


def _pruning_record(identity: dict[str, Any]) -> dict[str, Any] | None:
    """A pruned checkpoint's typed report (as JSON); a hand-folded one's ``pruning.json`` as stored."""
    if identity["kind"] != "pruned":
        return None
    try:
        return read_report(identity["location"]).model_dump(mode="json")
    except ValueError:
        return read_report_json(identity["location"])


def run(args: argparse.Namespace) -> int:
    """Evaluate and write (or print) one JSON record stamped with its protocol."""
    with silenced(args.quiet):
        config = eval_config(args).resolved()
        if args.out is not None:
            guard_output(args.out, "eval", args.overwrite)
        with input_phase(f"model {config.model!r}"):
            identity = model_identity(config.model)
        size = config.evaluation.get("size")
        if size is not None and "checkpoint" not in size and identity["kind"] != "hub":
            config = config.model_copy(update={"evaluation": {**config.evaluation, "size": {**size, "checkpoint": identity["location"]}}})
        host = PluginHost.create()
        evaluators, stamp, _ = build_evaluators(host, config)
        log = make_log(args.quiet)
        log(f"loading model {config.model} ({config.dtype}, device {config.device})")
        model, tokenizer, identity = load_dense(config.model, config.dtype, config.device)
        check_evaluators(evaluators, tokenizer)
        with input_phase(f"model {config.model!r}"):
            host.discover_units(model)  # the size and speed evaluators read the same layers the plugins prune
        dense = load_dense(args.dense, config.dtype, config.device) if args.dense else None
        seed = (args.seeds or [0])[0]
        device, dtype = str(model_device(model)), dtype_name(model)
        context = EvalContext(dense_model=dense[0] if dense else None, device=device, dtype=dtype, progress=not args.quiet, seed=seed)
        try:
            results, walls = evaluate_model(model, tokenizer, evaluators, context, log, config.model)
        except NonFiniteError as exc:
            raise InputError(f"model {config.model!r} cannot be scored: {exc}") from exc
        if "zeroshot" not in evaluators:
            log(ZEROSHOT_HOWTO)
        ratios = None
        if dense is not None and "perplexity" in evaluators:
            log(f"[{args.dense}] evaluating perplexity (the reference of the ratios)")
            try:
                dense_ppl = evaluators["perplexity"].evaluate(dense[0], dense[1], context)
            except NonFiniteError as exc:
                raise InputError(f"--dense {args.dense!r} cannot be scored: {exc}") from exc
            ratios = _ratios(results["perplexity"], dense_ppl)
        record = {
            "model": identity,
            "dense_model": dense[2] if dense else None,
            "protocol": {"model": identity, "dtype": dtype, "device": device, "evaluation": stamp, "seed": seed, "code": code_identity()},
            "pruning": _pruning_record(identity),
            "eval": results,
            "eval_wall_s": walls,
            "perplexity_ratios": ratios,
            "software": software_versions(),
        }
    if args.out is not None:
        with writing(args.out):
            write_json_atomic(guard_output(args.out, "eval", args.overwrite), record)
        print(f"{config.model}: {_headline(results)}\nwritten: {args.out}")
    else:
        print(json.dumps(record, indent=2, sort_keys=True, default=str))
        log(f"{config.model}: {_headline(results)}")
    return 0


COMMAND = Command("eval", "evaluate a model or pruned checkpoint with the comparison's evaluators", add_arguments, run)
