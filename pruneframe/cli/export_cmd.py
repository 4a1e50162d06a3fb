"""``pruneframe export``: a dense model or pruned checkpoint as a GGUF file for llama.cpp / ollama, checked there.

    pruneframe export out/flap-0.5 --format gguf --out flap-0.5.gguf --dtype f16

With the optional ``xllamacpp`` package installed (``pip install 'pruneframe[deploy]'``), ``--verify`` is on
by default: the file runs in llama.cpp beside the checkpoint in transformers, the agreement is printed,
and the exit code is 1 when it exceeds the export type's tolerances
(:data:`pruneframe.export.verify.TOLERANCES`). A model llama.cpp cannot express exits 2 naming why.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from pruneframe.cli.common import Command, silenced
from pruneframe.cli.output_paths import check_output_path, writing
from pruneframe.settings.errors import InputError

__all__ = ["COMMAND", "MAX_PAD_FFN_TO", "MAX_THREADS"]

#: Exit code when the written file disagrees with the checkpoint beyond the tolerances.
VERIFY_FAILED = 1
#: The largest ``--pad-ffn-to``: a multiple of this many channels already aligns every kernel llama.cpp has.
MAX_PAD_FFN_TO = 4096
#: The most ``--threads`` llama.cpp is asked to run.
MAX_THREADS = 1024


def _bounded(flag: str, high: int) -> Callable[[str], int]:
    """An argparse type: an integer in ``[1, high]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not 1 <= value <= high:
            raise argparse.ArgumentTypeError(f"{flag} must lie in [1, {high}], got {value}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The export flags."""
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a pruned checkpoint folder, a model folder, a hub id or an embedded name (smollm2-135m)")
    parser.add_argument("--format", choices=["gguf"], default="gguf", help="output format (gguf: llama.cpp, ollama)")
    parser.add_argument("--out", metavar="FILE.gguf", required=True, help="file to write (never over a file pruneframe did not write)")
    parser.add_argument(
        "--dtype",
        choices=["f32", "f16", "bf16", "q8_0", "q4_0"],
        default="f16",
        help="weight type in the file (default f16; norms and biases stay f32; q4_0 keeps the token embedding and output layer in q8_0)",
    )
    parser.add_argument(
        "--pad-ffn-to",
        type=_bounded("--pad-ffn-to", MAX_PAD_FFN_TO),
        default=None,
        metavar="N",
        help="zero-pad every FFN width to a multiple of N (exact; default 32: llama.cpp's kernels run unaligned widths slower; 1 for none in float types)",
    )
    parser.add_argument(
        "--verify",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the file in llama.cpp and compare with transformers (default: on when xllamacpp is installed)",
    )
    parser.add_argument("--threads", type=_bounded("--threads", MAX_THREADS), default=1, metavar="N", help="llama.cpp threads for --verify (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace a GGUF file pruneframe wrote at --out")
    parser.add_argument("--quiet", action="store_true", help="print only the result lines")


def run(args: argparse.Namespace) -> int:
    """Load, export, and (by default when possible) verify; prints the plan and the agreement."""
    from pruneframe.export import ExportRefused, export_gguf
    from pruneframe.export.llamacpp import available
    from pruneframe.export.verify import TOLERANCES, verify_gguf
    from pruneframe.settings.loading import load_dense

    verify = available() if args.verify is None else args.verify
    if verify and not available():
        raise InputError("--verify needs the xllamacpp package: pip install 'pruneframe[deploy]'")
    from pruneframe.export.writer import check_gguf_replaceable

    out = os.path.abspath(check_output_path(args.out, "--out", "file"))  # absolute: the writer never expands '~' again
    try:
        check_gguf_replaceable(out, args.overwrite)
    except FileExistsError as exc:
        raise InputError(str(exc)) from None
    with silenced(args.quiet):  # the libraries' progress bars too
        model, tokenizer, _ = load_dense(args.checkpoint, "float32", "cpu")
        try:
            with writing(args.out):
                result = export_gguf(
                    model, out, dtype=args.dtype, tokenizer=tokenizer, overwrite=args.overwrite, name=str(args.checkpoint), pad_ffn_to=args.pad_ffn_to
                )
        except ExportRefused as exc:
            raise InputError(f"cannot export {args.checkpoint!r} for llama.cpp: {exc}") from None
    plan = result.plan
    widths = sorted({(lp.q_heads, lp.kv_heads, lp.ffn) for lp in plan.layers})
    print(
        f"wrote {result.path} ({result.bytes / 2**20:,.1f} MiB, {args.dtype}, llama.cpp architecture {plan.arch!r}, "
        f"{len(plan.layers)} layers, {len(widths)} distinct (heads, kv heads, ffn) widths)"
    )
    if not args.quiet:
        for note in plan.notes:
            print(f"  note: {note}")
    if not verify:
        return 0
    check = verify_gguf(result.path, model, tokenizer, args.dtype, threads=args.threads)
    print(f"verify: {check.summary()}")
    failures = check.failures()
    if failures:
        tol = TOLERANCES[args.dtype]
        print(
            f"pruneframe export: verification failed (tolerances for {args.dtype}: top-1 >= {tol.top1}, top-5 prob "
            f"diff <= {tol.top5_prob}, mean KL <= {tol.kl}): " + "; ".join(failures),
            file=sys.stderr,
        )
        return VERIFY_FAILED
    return 0


COMMAND = Command("export", "write a model or pruned checkpoint as a GGUF file for llama.cpp / ollama, checked there", add_arguments, run)
