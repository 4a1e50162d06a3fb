"""The main comparison's methods on SmolLM2-135M on an accelerator, against the same run on the CPU.

For every method: prune ``--model`` (default the embedded ``smollm2-135m``; a local folder works too)
in ``--dtype`` (default bfloat16) to keep ``--keep`` of its prunable parameters once on the CPU and
once on ``--device``, same seed, same settings and the same calibration tokens (the embedded text).
GRASPrune runs a short schedule by default (16 sequences of 256 tokens, one epoch, scales on 16
more; ``--method-config grasprune='{...}'`` replaces it), so the CPU run stays short.

Recorded per method: score time and calibration tokens per second on each device (tokens read /
seconds of the score and recalibration stages), peak device memory of the device run's prune
(``torch.cuda.max_memory_allocated``), and how the two keep masks agree (identical, fraction of
units decided alike, kept cost of each). The seeded methods get a second CPU run with
``--reference-seed``; ``--eval-windows`` adds every pruned model's WikiText-2 perplexity.
bf16 kernels differ between devices, so masks may differ at the budget's edge; the agreement says
by how much. Writes one JSON file (``--out``).

Usage: ``python benchmarks/device_methods.py --device cuda [--model smollm2-135m] [--methods magnitude,wanda-sp]
[--method-config NAME=JSON] --out FILE``
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

import pruneframe
from pruneframe.util.io import write_json_atomic
from pruneframe.cli.common import _method_config
from pruneframe.data import calibration_data
from pruneframe.data.sources import DataSourceError, resolve_text
from pruneframe.data.windows import token_windows
from pruneframe.evaluation.perplexity import perplexity
from pruneframe.models import load_model

METHODS = ("grasprune", "magnitude", "llm-pruner", "wanda-sp", "flap", "random")
#: Settings applied unless ``--method-config`` names the method (a short GRASPrune schedule).
#: Methods whose mask depends on the seed: they get a second CPU run (``--reference-seed``).
SEEDED = ("grasprune", "random")
SHORT_SETTINGS = {
    "grasprune": {"num_sequences": 16, "seq_len": 256, "epochs": 1, "rescale_sequences": 16, "loss": "distill", "rescale_loss": "distill"},
}


def run(
    model: torch.nn.Module,
    method: str,
    keep: float,
    calibration,
    device: str,  # noqa: ANN001
    settings: dict,
    seed: int = 0,
    windows: torch.Tensor | None = None,
    eval_device: str = "cpu",
) -> dict:
    """Prune a copy of ``model`` on ``device`` with ``settings``; return the mask and the measurements.

    With ``windows``, the pruned model's perplexity on them is measured on ``eval_device``.
    """
    work = copy.deepcopy(model).to(device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    result = pruneframe.prune(work, method, keep, calibration=calibration, config={"seed": seed, **settings}, progress=False, inplace=True)
    if cuda:
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if cuda else None  # the prune's, before any evaluation
    report = result.report
    tokens = report.calibration_tokens
    calibrate_s = report.timings.score_s + report.timings.project_recalibrate_s
    ppl = None
    if windows is not None:
        ppl = perplexity(result.model.to(eval_device), windows, batch_size=4, progress=False).ppl
    return {
        "seed": seed,
        "ppl": ppl,
        "mask": result.mask.cpu(),
        "prune_s": wall,
        "score_s": report.timings.score_s,
        "calibration_tokens": tokens,
        "calibration_tokens_per_s": tokens / calibrate_s if tokens else None,
        "kept_prunable_params": report.kept_prunable_params,
        "peak_device_bytes": peak,
        "peak_scope": "prune",
    }


def main() -> None:
    """Both runs per method; print one line each; write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="smollm2-135m", help="model name or local folder")
    parser.add_argument(
        "--method-config", dest="method_configs", action="append", type=_method_config, default=[], metavar="NAME=JSON", help="a method's settings (repeatable)"
    )
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--keep", type=float, default=0.5)
    parser.add_argument("--calib-tokens", type=int, default=20_000)
    parser.add_argument(
        "--reference-seed", type=int, default=1, help="a second CPU run with this seed for the seeded methods: how far masks move with the seed"
    )
    parser.add_argument("--eval-windows", type=int, default=0, help="perplexity of every pruned model on this many 512-token WikiText-2 test windows")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if any(name is None for name, _ in args.method_configs):
        parser.error("--method-config needs NAME=JSON here (several methods run)")
    model, tokenizer = load_model(args.model, dtype=args.dtype)
    settings = SHORT_SETTINGS | dict(args.method_configs)
    calibration = calibration_data("embedded", tokenizer, max_tokens=args.calib_tokens)
    if args.device != "cpu":  # the first kernels on an accelerator pay its start-up; keep that out of method 1
        with torch.no_grad():
            copy.deepcopy(model).to(args.device)(torch.zeros(1, 128, dtype=torch.long, device=args.device))
    windows, eval_text = None, None
    if args.eval_windows:
        try:
            source = resolve_text("wikitext-2", "test")
        except DataSourceError:
            source = resolve_text("embedded", "test")
        windows, eval_text = token_windows(source, tokenizer, 512, args.eval_windows), source.name
    rows = []
    for method in [m for m in args.methods.split(",") if m]:
        row: dict = {"method": method, "settings": settings.get(method, {})}
        try:
            common = dict(settings=settings.get(method, {}), windows=windows, eval_device=args.device)
            cpu = run(model, method, args.keep, calibration, "cpu", **common)
            dev = run(model, method, args.keep, calibration, args.device, **common)
            ref = run(model, method, args.keep, calibration, "cpu", seed=args.reference_seed, **common) if method in SEEDED else None
        except Exception as exc:  # noqa: BLE001 - one method's failure is a result, not the end of the check
            row["error"] = f"{type(exc).__name__}: {exc}"
            print(f"{method:>10}: FAILED {row['error']}", flush=True)
            rows.append(row)
            continue
        same = cpu["mask"] == dev["mask"]
        row |= {
            "masks_identical": bool(same.all()),
            "mask_agreement": float(same.float().mean()),
            "cpu": {k: v for k, v in cpu.items() if k != "mask"},
            "device": {k: v for k, v in dev.items() if k != "mask"},
        }
        if ref is not None:
            row["cpu_reference_seed"] = {k: v for k, v in ref.items() if k != "mask"}
            row["seed_agreement"] = float((cpu["mask"] == ref["mask"]).float().mean())
        rows.append(row)
        rate = dev["calibration_tokens_per_s"]
        peak = dev["peak_device_bytes"]
        print(
            f"{method:>10}: {args.device} score {dev['score_s']:6.2f} s (cpu {cpu['score_s']:6.2f} s), "
            f"{'-' if rate is None else f'{rate:9.0f} tok/s'}, peak device "
            f"{'-' if peak is None else f'{peak / 2**30:.2f} GiB'}, masks identical {row['masks_identical']} "
            f"(agreement {row['mask_agreement']:.4%}"
            + (f"; cpu seed {args.reference_seed}: {row['seed_agreement']:.4%}" if ref is not None else "")
            + ")"
            + (
                ""
                if windows is None
                else f", ppl cpu {cpu['ppl']:.2f} {args.device} {dev['ppl']:.2f}"
                + (f" cpu seed {args.reference_seed} {ref['ppl']:.2f}" if ref is not None else "")
            ),
            flush=True,
        )
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else args.device
    write_json_atomic(
        args.out,
        {
            "model": args.model,
            "dtype": args.dtype,
            "device": args.device,
            "device_name": name,
            "torch": torch.__version__,
            "keep": args.keep,
            "perplexity": {"source": eval_text, "windows": args.eval_windows, "seq_len": 512},
            "calibration": {"source": "embedded", "tokens": len(calibration)},
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
