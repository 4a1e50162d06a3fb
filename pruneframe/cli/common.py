"""What every subcommand shares: the command record, the flags, config files and flag-over-file merging.

Flags have no argparse defaults (``None`` means "not given"), so a flag overrides the config file only
when it is given, and the pydantic models own every default.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeVar

from pydantic import BaseModel, ValidationError

from pruneframe.checkpoint.validate import is_checkpoint_folder
from pruneframe.cli.config_file import check_file_shape, protocol_flag_over_file, read_config_file
from pruneframe.cli.output_paths import check_output_path
from pruneframe.util.devices import DTYPE_CHOICES
from pruneframe.settings.errors import InputError, explain
from pruneframe.util.log import Log
from pruneframe.util.io import read_small_text

__all__ = [
    "Command",
    "Parser",
    "one_line",
    "Log",
    "add_model_flags",
    "add_device_flags",
    "add_method_flags",
    "add_budget_flags",
    "add_seed_flags",
    "add_data_flags",
    "add_eval_flags",
    "add_recovery_flags",
    "recovery_flag_settings",
    "add_output_flags",
    "OutputKind",
    "is_results_folder",
    "is_eval_record",
    "guard_output",
    "read_config_file",
    "deep_merge",
    "flag_settings",
    "validated_settings",
    "make_log",
    "silenced",
]


SettingsT = TypeVar("SettingsT", bound=BaseModel)


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, one-line help, how it adds its flags and how it runs (returns the exit code)."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def one_line(message: str) -> str:
    """``message`` with its lines joined by ``; `` (an error is reported in one line)."""
    return "; ".join(line.strip() for line in message.splitlines() if line.strip())


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr, ``<prog>: error: <message>``, and exit 2."""

    def error(self, message: str) -> NoReturn:
        """Print the one-line error (with where the flags are listed) and exit with 2."""
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _number(text: str) -> float | int:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _numbers(text: str) -> list[float | int]:
    values = [_number(part) for part in _names(text)]
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
    return values


def _ints(text: str) -> list[int]:
    try:
        return [int(part) for part in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _positive(text: str) -> int:
    value = _number(text)
    if not isinstance(value, int) or value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _windows(text: str) -> int | str:
    return "all" if text.strip().lower() == "all" else _positive(text)


def _limit(text: str) -> int | None:
    return None if text.strip().lower() in ("none", "all", "0") else _positive(text)


def _method_config(text: str) -> tuple[str | None, dict[str, Any]]:
    """``NAME=JSON`` (or a bare JSON object, for the one method of ``prune``)."""
    if text.lstrip().startswith("{"):
        name, body = None, text
    else:
        name, _, body = text.partition("=")
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--method-config {text!r}: not JSON ({exc.msg}); use NAME='{{\"key\": 1}}'") from None
    except RecursionError:
        raise argparse.ArgumentTypeError(f"--method-config {text[:80]!r}...: nested too deeply") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"--method-config {text!r}: expected a JSON object after NAME=")
    return (name.strip() if name else None), value


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """``--model`` and ``--dtype``."""
    parser.add_argument("--model", help="HF hub id, local model folder, pruned checkpoint or smollm2-135m (default)")
    parser.add_argument(
        "--dtype",
        type=str.lower,
        choices=DTYPE_CHOICES,
        help="load and evaluate in this dtype (default auto: bfloat16 where the device runs it natively, else float32)",
    )


def add_device_flags(parser: argparse.ArgumentParser) -> None:
    """``--device``: where the model is loaded, pruned and evaluated."""
    parser.add_argument(
        "--device",
        metavar="DEVICE",
        help="auto (CUDA when present, else cpu), cpu, cuda, cuda:N or mps (default auto); a device this machine lacks exits 2 listing those it has",
    )


def add_method_flags(parser: argparse.ArgumentParser, many: bool) -> None:
    """``--method`` (and ``--methods`` when ``many``) plus repeatable ``--method-config``."""
    names = ["--method", "--methods"] if many else ["--method"]
    what = "comma-separated method names (default: every installed method)" if many else "the method's name"
    parser.add_argument(*names, dest="methods", type=_names, metavar="NAMES" if many else "NAME", help=what, required=not many)
    parser.add_argument(
        "--method-config", dest="method_configs", action="append", type=_method_config, metavar="NAME=JSON", help="a method's settings as JSON (repeatable)"
    )


def add_budget_flags(parser: argparse.ArgumentParser, many: bool) -> None:
    """``--budget`` (and ``--budgets`` when ``many``) and ``--budget-kind``."""
    names = ["--budget", "--budgets"] if many else ["--budget"]
    parser.add_argument(
        *names,
        dest="budgets",
        type=_numbers,
        required=not many,
        metavar="NUMBERS" if many else "NUMBER",
        help="keep-ratio(s) in (0, 1], or parameter counts with --budget-kind params",
    )
    parser.add_argument("--budget-kind", choices=["prunable", "total", "params"], help="how budget numbers are read (default prunable)")


def add_seed_flags(parser: argparse.ArgumentParser, many: bool) -> None:
    """``--seed`` (and ``--seeds`` when ``many``)."""
    names = ["--seed", "--seeds"] if many else ["--seed"]
    parser.add_argument(*names, dest="seeds", type=_ints, metavar="INTS" if many else "INT", help="seed(s) passed to the methods (default 0)")


def add_data_flags(parser: argparse.ArgumentParser, calib: bool = True, evaluation: bool = True) -> None:
    """``--calib`` and ``--eval-data``: any source ``pruneframe.data.resolve_text`` takes."""
    if calib:
        parser.add_argument(
            "--calib",
            metavar="SOURCE",
            help="calibration text: file, folder, wikitext-2, ptb, c4, hf:ID or embedded (default wikitext-2 when the data folder has it, else embedded)",
        )
        parser.add_argument("--calib-tokens", type=_positive, metavar="N", help="use only the first N calibration tokens")
    if evaluation:
        parser.add_argument(
            "--eval-data",
            type=_names,
            metavar="SOURCES",
            help="comma-separated perplexity texts (same sources as --calib, plus moby-dick), each read "
            "with its test split (default: every source available: wikitext-2, moby-dick, embedded; "
            "c4 and ptb online)",
        )


def add_eval_flags(parser: argparse.ArgumentParser) -> None:
    """Evaluation knobs: windows, sequence length, zero-shot tasks and limit, speed on/off."""
    parser.add_argument("--eval-windows", type=_windows, metavar="N", help="perplexity windows per source, or 'all' for every full window (default 64)")
    parser.add_argument(
        "--protocol",
        choices=["custom", "wikitext2-2048", "llm-pruner-128"],
        help="a named perplexity protocol: wikitext2-2048 (all of WikiText-2 test in 2,048-token "
        "windows: SparseGPT, Wanda, SliceGPT), llm-pruner-128 (every 128-token window: LLM-Pruner)",
    )
    parser.add_argument("--seq-len", type=_positive, metavar="N", help="perplexity window length in tokens (default 512)")
    parser.add_argument(
        "--eval-compute-device",
        metavar="DEVICE",
        help="score perplexity and zero-shot tasks one decoder layer at a time on DEVICE (cuda, "
        "cuda:N, ...), the weights staying where they were loaded: for a model larger than the device "
        "(sets offload: cpu and compute_device of both evaluators; speed, which needs the whole model "
        "on one device, is then left out unless --speed is given)",
    )
    parser.add_argument(
        "--zeroshot",
        type=lambda t: [] if t.strip().lower() == "none" else _names(t),
        metavar="TASKS",
        help="comma-separated lm-eval task names or local JSONL paths, or 'none' (default: the local JSONL tasks in $PRUNEFRAME_DATA_DIR/zeroshot)",
    )
    parser.add_argument(
        "--zeroshot-limit", type=_limit, default=argparse.SUPPRESS, metavar="N", help="items per zero-shot task, or 'none' for all (default 200)"
    )
    parser.add_argument("--speed", action=argparse.BooleanOptionalAction, help="measure prefill/decode speed (default on)")


def add_recovery_flags(parser: argparse.ArgumentParser, required: bool = False) -> None:
    """``--recover``, ``--recover-tokens``, ``--recover-config`` and ``--recover-data``."""
    parser.add_argument(
        "--recover", metavar="NAME", required=required, help="heal the pruned model with this recovery: distill, lora or none (pruneframe plugins lists them)"
    )
    parser.add_argument("--recover-tokens", type=_positive, metavar="N", help="the recovery's token budget (default 16384)")
    parser.add_argument(
        "--recover-config", type=_method_config, metavar="JSON", help='the recovery\'s settings as a JSON object, e.g. \'{"lr": 1e-4, "seq_len": 256}\''
    )
    parser.add_argument(
        "--recover-data",
        metavar="SOURCE",
        help="recovery text (default: WikiText-2 validation when the data "
        "folder has it, else embedded's calibration half); checked disjoint from the evaluation text",
    )


def recovery_flag_settings(args: argparse.Namespace) -> tuple[str | None, dict[str, Any], dict[str, Any]]:
    """``(recovery name, its settings, recovery-data settings)`` from the recovery flags (name ``None``: not given)."""
    name = getattr(args, "recover", None)
    settings: dict[str, Any] = {}
    if getattr(args, "recover_config", None) is not None:
        config_name, values = args.recover_config
        if config_name not in (None, name):
            raise InputError(f"--recover-config is for {config_name!r} but the recovery is {name!r}")
        settings.update(values)
    if getattr(args, "recover_tokens", None) is not None:
        settings["tokens"] = args.recover_tokens
    data = {"data": args.recover_data} if getattr(args, "recover_data", None) else {}
    if name is None and (settings or data):
        raise InputError("--recover-tokens, --recover-config and --recover-data need --recover NAME")
    return name, settings, data


def add_output_flags(
    parser: argparse.ArgumentParser,
    out_help: str,
    config: bool = True,
    required: bool = False,
    overwrite_help: str = "replace an existing output written by pruneframe",
) -> None:
    """``--out``, ``--overwrite``, ``--quiet`` and (with ``config``) ``--config FILE``."""
    parser.add_argument("--out", metavar="PATH", help=out_help, required=required)
    parser.add_argument("--overwrite", action="store_true", help=overwrite_help)
    parser.add_argument("--quiet", action="store_true", help="no progress bars or stage messages")
    if config:
        parser.add_argument("--config", type=Path, metavar="FILE", help="YAML or JSON settings file; flags override it")


#: What an ``--out`` path receives: a checkpoint folder, a comparison results folder or an eval JSON file.
OutputKind = Literal["checkpoint", "results", "eval"]


def is_results_folder(path: Path) -> bool:
    """Whether ``path`` holds a comparison's ``results.json`` or at least one run record under ``runs/``."""
    if (path / "results.json").is_file():
        return True
    for record in sorted((path / "runs").glob("*.json")) if (path / "runs").is_dir() else []:
        try:
            data = json.loads(read_small_text(record))
        except (OSError, ValueError, RecursionError):  # unreadable, not a small UTF-8 file, not JSON
            continue
        if isinstance(data, dict) and "cache_key" in data:
            return True
    return False


def is_eval_record(path: Path) -> bool:
    """Whether ``path`` is a JSON file written by ``pruneframe eval`` (an object with ``eval`` and ``protocol``)."""
    try:
        record = json.loads(read_small_text(path))
    except (OSError, ValueError, RecursionError):  # unreadable, not a small UTF-8 file, not JSON
        return False
    return isinstance(record, dict) and {"eval", "protocol"} <= record.keys()


def _empty(path: Path) -> bool:
    """Whether ``path`` (an existing file or folder) holds nothing."""
    return not any(path.iterdir()) if path.is_dir() else path.stat().st_size == 0


_OURS = {
    "checkpoint": (True, is_checkpoint_folder, "a pruneframe checkpoint"),
    "results": (True, is_results_folder, "a pruneframe comparison results folder"),
    "eval": (False, is_eval_record, "a pruneframe eval record"),
}


def guard_output(path: str | Path, kind: OutputKind, overwrite: bool) -> Path:
    """Refuse an output path whose current content pruneframe did not write; returns the path.

    The path must be one that can be written (:func:`~pruneframe.cli.output_paths.check_output_path`).
    A missing path, or an empty folder (for a folder output) or empty file (for a file output) is fine.
    An existing output of the same kind is fine for ``results`` (the comparison reuses its cached runs)
    and, for ``checkpoint`` and ``eval``, only with ``overwrite``. Anything else raises
    :class:`InputError` naming the path, before any work starts.
    """
    folder, ours, what = _OURS[kind]
    shape = "folder" if folder else "file"
    target = check_output_path(path, "--out", shape)
    if not target.exists():
        return target
    if target.is_dir() != folder:
        raise InputError(f"--out {str(target)!r} is a {'folder' if target.is_dir() else 'file'}; expected a {shape} for {what}")
    if _empty(target):
        return target
    if not ours(target):
        raise InputError(f"--out {str(target)!r} exists and is not {what}; refusing to replace it (choose another --out, or move it away)")
    if kind != "results" and not overwrite:
        raise InputError(f"--out {str(target)!r} is {what} already; pass --overwrite to replace it")
    return target


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overlay`` merged in: mappings recursively, anything else (``None`` too) replaced."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def validated_settings(args: argparse.Namespace, model: type[SettingsT], flags: dict[str, Any] | None = None, own_fields_only: bool = False) -> SettingsT:
    """``model`` validated from the ``--config`` file (when the command has one) with the given flags on top.

    ``flags`` defaults to :func:`flag_settings`; with ``own_fields_only`` the file's and the flags' keys
    that ``model`` has no field for are dropped (a comparison's file read by ``eval``). Selecting
    methods drops the file's settings of the other methods. Invalid settings raise :class:`InputError`
    naming where they came from.
    """
    config_file = getattr(args, "config", None)
    data: dict[str, Any] = read_config_file(config_file) if config_file else {}
    flags = flag_settings(args) if flags is None else flags
    if own_fields_only:
        data = {k: v for k, v in data.items() if k in model.model_fields}
        flags = {k: v for k, v in flags.items() if k in model.model_fields}
    if config_file:
        check_file_shape(data, model, config_file)  # the merging below relies on the file's shape
    data = protocol_flag_over_file(data, flags)
    if "executor" in flags and data.get("executor") != flags["executor"]:  # the file's options are another executor's
        data.pop("executor_options", None)
    if "methods" in flags:  # the file's per-method settings of the methods left out go with them
        for key in ("method_configs", "method_seeds"):
            if isinstance(data.get(key), dict):
                data[key] = {k: v for k, v in data[key].items() if k in flags["methods"]}
        if isinstance(data.get("recovery_methods"), list):
            data["recovery_methods"] = [m for m in data["recovery_methods"] if m in flags["methods"]]
    try:
        return model.model_validate(deep_merge(data, flags))
    except ValidationError as exc:
        source = f"{config_file} and flags" if config_file else "flags"
        raise InputError(f"{explain(exc)} (from {source})") from exc


def _evaluation_flags(args: argparse.Namespace) -> dict[str, Any]:
    evaluation: dict[str, Any] = {}
    perplexity = {
        key: getattr(args, flag, None)
        for key, flag in (("sources", "eval_data"), ("num_windows", "eval_windows"), ("seq_len", "seq_len"), ("protocol", "protocol"))
    }
    perplexity = {k: v for k, v in perplexity.items() if v is not None}
    if getattr(args, "eval_compute_device", None):
        perplexity.update(offload="cpu", compute_device=args.eval_compute_device)
    if perplexity:
        evaluation["perplexity"] = perplexity
    tasks = getattr(args, "zeroshot", None)
    if tasks == []:
        evaluation["zeroshot"] = None
    else:
        zeroshot = {"tasks": tasks} if tasks else {}
        if hasattr(args, "zeroshot_limit"):
            zeroshot["limit"] = args.zeroshot_limit
        if getattr(args, "eval_compute_device", None):
            zeroshot.update(offload="cpu", compute_device=args.eval_compute_device)
        if zeroshot:
            evaluation["zeroshot"] = zeroshot
    speed = getattr(args, "speed", None)
    if speed is None and getattr(args, "eval_compute_device", None):
        speed = False  # a model scored layer by layer is too large to be timed whole, unless asked for
    if speed is not None:
        evaluation["speed"] = {} if speed else None
    return evaluation


def flag_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the given flags express, shaped like a config file (absent flags are left out)."""
    out: dict[str, Any] = {}
    for key, flag in (
        ("model", "model"),
        ("dtype", "dtype"),
        ("device", "device"),
        ("methods", "methods"),
        ("budgets", "budgets"),
        ("budget_kind", "budget_kind"),
        ("seeds", "seeds"),
        ("out", "out"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            out[key] = value
    calibration = {k: getattr(args, f, None) for k, f in (("data", "calib"), ("max_tokens", "calib_tokens"))}
    if any(v is not None for v in calibration.values()):
        out["calibration"] = {k: v for k, v in calibration.items() if v is not None}
    evaluation = _evaluation_flags(args)
    if evaluation:
        out["evaluation"] = evaluation
    return out


def make_log(quiet: bool) -> Log:
    """Stage messages on stderr (through tqdm, so they do not break progress bars).

    With ``quiet`` the log is silent and transformers' own progress bars and warnings are switched off.
    """
    if quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        return lambda message: None
    from tqdm.auto import tqdm

    return lambda message: tqdm.write(message, file=sys.stderr)


@contextmanager
def silenced(quiet: bool) -> Iterator[None]:
    """With ``quiet``, discard everything written to stdout and stderr inside the block.

    Both the Python streams and the file descriptors are redirected, so library progress bars
    (lm-eval's, datasets'), warnings and subprocess output (the ``fatal: not a git repository`` of
    lm-eval's version lookup) are silenced too. The streams are restored when the block ends, also on
    an exception, so final lines and error messages printed afterwards are shown.
    """
    if not quiet:
        yield
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    sink = os.open(os.devnull, os.O_WRONLY)
    streams = sys.stdout, sys.stderr
    try:
        with open(os.devnull, "w", encoding="utf-8") as text_sink:
            for fd in saved:
                os.dup2(sink, fd)
            sys.stdout = sys.stderr = text_sink
            yield
    finally:
        sys.stdout, sys.stderr = streams
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        os.close(sink)
