"""What a decoded token costs in llama.cpp per kept FFN channel and per kept KV group, against what their bytes say.

The decode ideal of ``llamacpp_speed.py`` prices every kept weight byte the same. This script measures
the two unit kinds apart: it builds shape variants of the dense embedded model by keeping the leading
units of every layer (uniform FFN widths with every KV group; uniform KV-group counts with the full FFN;
their outputs are meaningless, only their shapes are timed), exports each in ``--dtype``, and times them
in one run with ``--checkpoints`` (real pruned folders written by ``pruneframe prune``/``compare``,
exported with the default FFN padding) against the dense file, with the placements protocol of
:func:`pruneframe.export.speed.measure_llamacpp_speed` (decode of 64 tokens after a 256-token prompt,
as in ``llamacpp_speed.py``).

Per file it records the per-repeat median decode time relative to dense, the file's kept FFN channels,
KV groups and weight bytes. Over the variants alone it fits relative time = fixed + a * channels +
b * groups (least squares), and prices one KV group in FFN channels by time and by bytes. Every
checkpoint then gets the speedup the fit predicts from its shape beside the measured one and the bytes
ideal: when the prediction lands where the measurement does, the checkpoint's shape explains its gap to
the ideal. ``--twins`` adds, per checkpoint, its twin: the same per-layer widths cut from the dense
weights (leading units), so a checkpoint slower than its twin is slowed by its weights' values, not its
shape. ``--shape`` adds named shapes cut the same way (to take a checkpoint's shape apart). A second
export of the dense model (``dense-copy``) shows the run's own spread on identical
bytes. Adds its run to ``benchmarks/results/llamacpp_costs.json`` (runs accumulate: run it again to
see how far the same files move between runs).
Run it alone on the machine (timings)::

    .venv/bin/python benchmarks/llamacpp_costs.py --checkpoints out/llm-pruner-0.5 out/grasprune-0.5 --dtype f16
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from common import machine, with_run
from pruneframe.architectures import discover
from pruneframe.export import ExportResult, export_gguf
from pruneframe.export.plan import GGUFPlan
from pruneframe.export.speed import measure_llamacpp_speed, weight_bytes_per_token
from pruneframe.models import load_model
from pruneframe.pipeline.fold import fold
from pruneframe.pipeline.units import UnitKind, UnitSet
from pruneframe.util.io import write_json_atomic

OUT = Path(__file__).parent / "results" / "llamacpp_costs.json"


def leading_units_mask(units: UnitSet, ffn: int | Sequence[int] | None, kv: int | Sequence[int] | None) -> torch.Tensor:
    """A keep-mask with the first ``ffn`` FFN channels and the first ``kv`` KV groups of every layer.

    Each count is one number for every layer, one per layer, or None (all of them).
    """

    def per_layer(count: int | Sequence[int] | None, i: int, total: int) -> int:
        value = total if count is None else count if isinstance(count, int) else count[i]
        return min(total, value)

    mask = torch.zeros(len(units), dtype=torch.bool)
    for i, shape in enumerate(units.layers):
        for kind, count, total in ((UnitKind.FFN, ffn, shape.ffn_channels), (UnitKind.KV, kv, shape.kv_groups)):
            block = units.slice(i, kind)
            mask[block.start : block.start + per_layer(count, i, total)] = True
    return mask


def plan_shape(plan: GGUFPlan) -> dict[str, int]:
    """Kept FFN channels (padding included: llama.cpp computes them) and KV groups, summed over an export plan's layers."""
    return {"ffn_channels": sum(layer.ffn for layer in plan.layers), "kv_groups": sum(layer.kv_heads for layer in plan.layers)}


def fit_costs(rows: list[dict[str, Any]], measure: str = "relative_time") -> dict[str, float]:
    """Least-squares ``measure`` = fixed + per_channel * channels + per_group * groups over ``rows``."""
    x = torch.tensor([[1.0, r["ffn_channels"], r["kv_groups"]] for r in rows], dtype=torch.float64)
    y = torch.tensor([r[measure] for r in rows], dtype=torch.float64)
    coef = torch.linalg.lstsq(x, y.unsqueeze(1)).solution.squeeze(1)
    residual = (x @ coef - y).abs().max()
    return {"fixed": float(coef[0]), "per_channel": float(coef[1]), "per_group": float(coef[2]), "largest_residual": float(residual)}


def predicted_time(costs: dict[str, float], shape: dict[str, int]) -> float:
    """Relative decode time the fitted ``costs`` give a file of ``shape``."""
    return costs["fixed"] + costs["per_channel"] * shape["ffn_channels"] + costs["per_group"] * shape["kv_groups"]


def export_files(
    model_name: str,
    dtype: str,
    folder: Path,
    ffn_widths: list[int],
    kv_groups: list[int],
    checkpoints: list[Path],
    twins: bool,
    shapes_by_name: dict[str, dict[str, Any]] | None = None,
) -> tuple[dict[str, ExportResult], dict[str, str], int]:
    """Export the dense model, its control copy, the shape variants, named shapes, the checkpoints and their twins to ``folder``.

    ``shapes_by_name`` maps a label to ``{"ffn": ..., "kv": ...}`` counts as :func:`leading_units_mask` takes them.
    Returns label -> export, label -> kind (``variant``, ``control``, ``shape``, ``checkpoint``, ``twin``) and the
    vocabulary size.
    """
    model, tokenizer = load_model(model_name, dtype="float32", device="cpu")
    units = discover(model)
    exported: dict[str, ExportResult] = {}
    kinds: dict[str, str] = {}

    def write(label: str, kind: str, source: torch.nn.Module) -> None:
        exported[label] = export_gguf(source, folder / f"{label}.gguf", dtype, tokenizer=tokenizer)
        kinds[label] = kind

    def cut(label: str, kind: str, ffn: int | Sequence[int] | None, kv: int | Sequence[int] | None) -> None:
        write(label, kind, fold(model, units, leading_units_mask(units, ffn, kv)))

    write("dense", "variant", model)
    write("dense-copy", "control", model)  # identical bytes: the run's own spread (not fitted)
    for w in ffn_widths:
        cut(f"ffn-{w}", "variant", w, None)
    for g in kv_groups:
        cut(f"kv-{g}", "variant", None, g)
    for label, spec in (shapes_by_name or {}).items():
        cut(label, "shape", spec.get("ffn"), spec.get("kv"))
    for checkpoint in checkpoints:
        pruned = load_model(str(checkpoint), dtype="float32", device="cpu")[0]
        write(checkpoint.name, "checkpoint", pruned)
        if twins:
            widths = discover(pruned).layers
            if len(widths) != len(units.layers):
                raise ValueError(f"{checkpoint}: {len(widths)} layers against the dense model's {len(units.layers)}; twins keep every layer")
            cut(f"{checkpoint.name}-twin", "twin", [w.ffn_channels for w in widths], [w.kv_groups for w in widths])
    return exported, kinds, int(model.config.vocab_size)


def main() -> None:
    """Build and export the variants, export the checkpoints, time all together, fit, predict, write."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="the dense model the checkpoints were pruned from")
    parser.add_argument("--checkpoints", nargs="*", type=Path, default=[])
    parser.add_argument("--ffn-widths", default="1024,768,512", help="uniform FFN widths of the variants (every KV group kept)")
    parser.add_argument("--kv-groups", default="2,1", help="uniform KV-group counts of the variants (full FFN)")
    parser.add_argument("--twins", action="store_true", help="also time each checkpoint's shape cut from the dense weights")
    parser.add_argument(
        "--shape",
        action="append",
        default=[],
        metavar='NAME={"ffn": ..., "kv": ...}',
        help="a named shape cut from the dense weights (counts: one for every layer or one per layer; not fitted; repeatable)",
    )
    parser.add_argument("--dtype", default="f16")
    parser.add_argument("--context", type=int, default=256, help="the prompt decoding follows")
    parser.add_argument(
        "--longer-prompt", type=int, default=0, help="also prefill a prompt this long each repeat (llamacpp_speed.py: 512), which sizes the context"
    )
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--placements", type=int, default=3)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="llamacpp-costs-") as tmp:
        named = {name: json.loads(spec) for name, spec in (item.split("=", 1) for item in args.shape)}
        widths, groups = _ints(args.ffn_widths), _ints(args.kv_groups)
        exported, kinds, vocab = export_files(args.model, args.dtype, Path(tmp), widths, groups, args.checkpoints, args.twins, named)
        files = {label: result.path for label, result in exported.items()}
        prompts = (args.context, args.longer_prompt) if args.longer_prompt > args.context else (args.context,)
        speeds = measure_llamacpp_speed(files, vocab, prompts, 64, repeats=args.repeats, placements=args.placements)
        dense_bytes = weight_bytes_per_token(files["dense"])
        rows = []
        for label, path in files.items():
            ratios = [d / p for d, p in zip(speeds["dense"].decode_samples, speeds[label].decode_samples, strict=True)]
            row: dict[str, Any] = {"file": label, "kind": kinds[label], **plan_shape(exported[label].plan)}
            row["relative_bytes"] = weight_bytes_per_token(path) / dense_bytes
            row["relative_time"] = statistics.median(ratios)  # per-repeat time over dense's time, one repeat apart
            row["relative_time_spread"] = [min(ratios), max(ratios)]
            row["decode_speedup"] = 1 / row["relative_time"]
            row["ideal_decode"] = 1 / row["relative_bytes"]
            rows.append(row)
    variants = [r for r in rows if r["kind"] == "variant"]
    costs = fit_costs(variants)
    for row in rows:
        row["predicted_speedup"] = 1 / predicted_time(costs, row)
        row["measured_over_ideal"] = row["decode_speedup"] / row["ideal_decode"]
        row["predicted_over_ideal"] = row["predicted_speedup"] / row["ideal_decode"]
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if k != "relative_time_spread"}, flush=True)
    costs["group_in_channels_by_time"] = costs["per_group"] / costs["per_channel"]
    by_bytes = fit_costs(variants, "relative_bytes")
    costs["group_in_channels_by_bytes"] = by_bytes["per_group"] / by_bytes["per_channel"]
    print(costs, flush=True)
    protocol = {"model": args.model, "dtype": args.dtype, "context": args.context, "prefill_lens": list(prompts), "repeats": args.repeats}
    protocol["placements"] = args.placements
    protocol |= {"decode_tokens": 64, "threads": 1, "machine": machine()["machine"]}
    write_json_atomic(args.out, {"runs": with_run(args.out, {"protocol": protocol, "costs": costs, "rows": rows})})


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


if __name__ == "__main__":
    main()
