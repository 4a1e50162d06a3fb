"""Peak memory of ``pruneframe prune`` and ``pruneframe compare`` in copies of the weights.

Builds a Llama-shaped model with random weights from a named shape (no downloads), saves it in
bf16 as safetensors to a temporary folder (with the embedded SmolLM2 tokenizer), then runs each
command in its own process and reads that process's peak RSS from the kernel (``wait4``). The figure
quoted is ``(peak RSS - bare RSS) / weight bytes``, where the bare RSS is the peak of ``pruneframe
plugins`` (the interpreter, torch and transformers, no model): 1.0 means one copy of the weights.

    python benchmarks/memory_one_copy.py --shape 135m --out benchmarks/results/memory_one_copy_135m.json
    python benchmarks/memory_one_copy.py --shape 1b --out benchmarks/results/memory_one_copy_1b.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from pruneframe.util.io import write_json_atomic
from pruneframe.checkpoint import software_versions

#: Layer shapes: SmolLM2-135M's, a ~0.5B one, and Llama-3.2-1B's with SmolLM2's vocabulary.
SHAPES: dict[str, dict[str, Any]] = {
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64),
    "0.5b": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=4, head_dim=64),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64),
}
VOCAB = 49_152


def build_model(shape: str, folder: Path, dtype: torch.dtype) -> int:
    """Save a random-weight model of ``shape`` (and the SmolLM2 tokenizer) in ``folder``; return its weight bytes."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from pruneframe.models import resolve_model_path

    config = LlamaConfig(**SHAPES[shape], vocab_size=VOCAB, tie_word_embeddings=True, max_position_embeddings=2048, rms_norm_eps=1e-5)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu").to(dtype)  # straight to the target dtype: no fp32 model is built
    model.tie_weights()  # to_empty gives the tied lm_head its own storage; share the embedding again
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02)
    model.save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(resolve_model_path("smollm2-135m").location).save_pretrained(folder)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    del model
    return weight_bytes


#: Runs argv[1:] and prints its peak RSS. Linux keeps a process's RSS high-water mark across fork and exec,
#: so the command is started from this bare interpreter (a few MB), not from the benchmark holding a model.
_LAUNCHER = (
    "import os, subprocess, sys\n"
    "child = subprocess.Popen(sys.argv[1:])\n"
    "_, status, usage = os.wait4(child.pid, 0)\n"
    "print('PEAK_RSS_KB', usage.ru_maxrss, os.waitstatus_to_exitcode(status))\n"
)


def peak_rss_of(command: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run ``command`` to the end; its exit code, wall seconds and peak RSS (bytes, from the kernel)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-S", "-c", _LAUNCHER, *command], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    output = done.stdout.decode(errors="replace")
    peak_kb, returncode = next(line.split()[1:] for line in reversed(output.splitlines()) if line.startswith("PEAK_RSS_KB"))
    return {
        "command": command[2:],
        "returncode": int(returncode),
        "wall_s": time.perf_counter() - start,
        "peak_rss_bytes": int(peak_kb) * 1024,
        "output_tail": output[-1500:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="135m")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--prune-methods", default="magnitude,wanda-sp", help="methods measured through `pruneframe prune`")
    parser.add_argument("--budget", default="0.8", help="the budget of the prune runs")
    parser.add_argument("--compare-methods", default="magnitude,random", help="methods of the one `pruneframe compare` run")
    parser.add_argument("--compare-budgets", default="0.8,0.5")
    parser.add_argument(
        "--calib-windows", type=int, default=16, help="wanda-sp's calibration windows of 128 tokens (its default is 64; memory hardly depends on it)"
    )
    parser.add_argument("--speed", action="store_true", help="also run compare with the paired speed evaluator")
    parser.add_argument("--out", default="benchmarks/results/memory_one_copy.json")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    env = {**os.environ, "TQDM_DISABLE": "1"}
    cli = [sys.executable, "-m", "pruneframe"]
    common = ["--dtype", args.dtype, "--device", "cpu", "--calib", "embedded", "--calib-tokens", str(128 * args.calib_windows)]
    windows = json.dumps({"num_windows": args.calib_windows})
    # GRASPrune's schedule shrunk to a few steps: memory does not grow with the number of steps
    short = json.dumps({"num_sequences": 4, "seq_len": 128, "epochs": 1, "rescale_sequences": 2})
    settings = {
        "wanda-sp": ["--method-config", f"wanda-sp={windows}"],
        "flap": ["--method-config", f"flap={windows}"],
        "grasprune": ["--method-config", f"grasprune={short}"],
    }
    report: dict[str, Any] = {
        "protocol": {
            "shape": {**SHAPES[args.shape], "vocab_size": VOCAB, "tie_word_embeddings": True},
            "dtype": args.dtype,
            "device": "cpu",
            "budget": args.budget,
            "calibration": "embedded",
            "calib_windows": args.calib_windows,
            "compare_methods": args.compare_methods,
            "compare_budgets": args.compare_budgets,
            "measure": "(peak RSS of the process - peak RSS of `pruneframe plugins`) / weight bytes",
        },
        "software": software_versions(),
        "threads": torch.get_num_threads(),
        "runs": {},
    }

    def measure(name: str, command: list[str]) -> None:
        run = report["runs"][name] = peak_rss_of(command, env)
        bare = report["runs"]["bare"]["peak_rss_bytes"]
        run["over_weights"] = (run["peak_rss_bytes"] - bare) / report["weight_bytes"]
        print(
            f"{name:28s} rc {run['returncode']} peak {run['peak_rss_bytes'] / 2**30:.2f} GiB ({run['over_weights']:.2f}x the weights) {run['wall_s']:.0f} s",
            flush=True,
        )
        write_json_atomic(args.out, report)  # every finished measurement is kept

    with tempfile.TemporaryDirectory(prefix="pruneframe-memory-") as tmp:
        folder = Path(tmp) / f"random-{args.shape}"
        report["weight_bytes"] = build_model(args.shape, folder, dtype)
        report["runs"]["bare"] = {"peak_rss_bytes": 0}
        measure("bare", [*cli, "plugins"])
        report["bare_rss_bytes"] = report["runs"]["bare"]["peak_rss_bytes"]
        # the interpreter with the command line imported, no plugins loaded: a lower bare figure
        measure("import only", [sys.executable, "-c", "import pruneframe.cli, transformers.models.llama"])
        for method in args.prune_methods.split(","):
            measure(
                f"prune {method}",
                [
                    *cli,
                    "prune",
                    "--model",
                    str(folder),
                    "--method",
                    method,
                    "--budget",
                    args.budget,
                    *common,
                    *settings.get(method, []),
                    "--out",
                    str(Path(tmp) / f"pruned-{method}"),
                    "--quiet",
                ],
            )
        evaluation = ["--eval-data", "embedded", "--eval-windows", "4", "--seq-len", "128", "--zeroshot", "none"]
        compare = [
            *cli,
            "compare",
            "--model",
            str(folder),
            "--methods",
            args.compare_methods,
            "--budgets",
            args.compare_budgets,
            *common,
            *evaluation,
            "--quiet",
        ]
        measure("compare", [*compare, "--no-speed", "--out", str(Path(tmp) / "compare")])
        if args.speed:
            measure("compare with paired speed", [*compare, "--out", str(Path(tmp) / "compare-speed")])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
