"""fp32 against bf16 on this machine: a forward, a forward + backward and a GRASPrune gate step, timed in one run.

Whether bf16 is faster or several times slower than fp32 depends on the CPU: with AVX-512 BF16 or AMX it
runs natively, on AVX2-only CPUs it is emulated. This script measures it where it runs, on SmolLM2-135M:
one process holds the model once per dtype and times, interleaved ``--reps`` times so slow phases of a
shared machine hit both dtypes alike:

- ``forward``: an inference forward over ``--forward-len`` tokens (what perplexity evaluation does);
- ``forward_backward``: a training forward and backward to every weight over ``--seq-len`` tokens
  (what recovery does);
- ``gate_step``: a GRASPrune gate-training step (frozen backbone in the dtype; gate scores, mask and
  loss in fp32; SDPA attention, the lean cross-entropy), over ``--seq-len`` tokens.

Reported per step: median seconds per dtype and the ratio bf16 time / fp32 time, with the hardware
(CPU model, ``torch.backends.cpu.get_cpu_capability()``, AVX-512 BF16 / AMX, threads) and the load
average before and after (another process on the cores distorts the ratios). Each run is
appended to ``--out`` under its hardware, so one JSON holds several machines, or this machine with
ATen, oneDNN and MKL limited to AVX2 (``--isa avx2``: a child process with ``ATEN_CPU_CAPABILITY=avx2``,
``ONEDNN_MAX_CPU_ISA=AVX2`` and ``MKL_ENABLE_INSTRUCTIONS=AVX2``, the kernels an AVX2-only CPU runs).

    python benchmarks/dtype_speed.py                # this machine as it is
    python benchmarks/dtype_speed.py --isa avx2     # the same machine through AVX2 kernels only
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from common import timed, with_run
from pruneframe.architectures import discover
from pruneframe.checkpoint import software_versions
from pruneframe.models import load_model
from pruneframe.pipeline.budget import project
from pruneframe.toolkit.gates import UnitGates
from pruneframe.util.devices import hardware_info
from pruneframe.util.io import write_json_atomic
from pruneframe_grasprune.training import attention_implementation, causal_lm_loss, frozen

DTYPES = ("float32", "bfloat16")
STEPS = ("forward", "forward_backward", "gate_step")
#: Environment that makes torch run the kernels of an AVX2-only CPU (ATen's dispatch, oneDNN's and MKL's).
ISA_ENV = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}}


class DtypeSetup:
    """The model in one dtype, its units, the batches and the fp32 gate scores with a keep-0.8 mask that meets the budget.

    The mask matters: with every unit off the logits are extreme and the softmax runs into subnormal
    numbers, which are many times slower.
    """

    def __init__(self, seq_len: int, forward_len: int, dtype: str) -> None:
        self.model, _ = load_model("smollm2-135m", dtype=dtype)
        self.units = discover(self.model)
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, self.model.config.vocab_size, (1, seq_len), generator=g)
        self.scores = torch.zeros(len(self.units), requires_grad=True)
        target = int(0.8 * self.units.prunable_params)
        self.mask = project(torch.rand(len(self.units), generator=g), self.units.cost, target, groups=self.units.groups).float()
        g = torch.Generator().manual_seed(1)
        self.forward_ids = torch.randint(0, self.model.config.vocab_size, (1, forward_len), generator=g)

    def gate_step(self) -> None:
        """Gates on every unit of the frozen model, forward, backward to the gate scores (SDPA, lean loss)."""
        with frozen(self.model), attention_implementation(self.model, "sdpa"), UnitGates(self.model, self.units, fused_glu=True) as gates:
            p = torch.sigmoid(self.scores / 1.5)
            gates.set(self.mask + p - p.detach())
            self.scores.grad = None
            causal_lm_loss(self.model, self.ids, lean=True).backward()

    def run(self, step: str) -> None:
        """One ``step`` (see the module docstring)."""
        if step == "forward":
            with torch.inference_mode():
                self.model(self.forward_ids, use_cache=False)
        elif step == "forward_backward":
            self.model.zero_grad(set_to_none=True)
            for p in self.model.parameters():
                p.requires_grad_(True)
            self.model(self.ids, labels=self.ids, use_cache=False).loss.float().backward()
            self.model.zero_grad(set_to_none=True)
        else:
            self.gate_step()


def measure(reps: int, seq_len: int, forward_len: int) -> dict[str, Any]:
    """Median seconds per (dtype, step), dtypes interleaved, and bf16 / fp32 per step."""
    setups = {dtype: DtypeSetup(seq_len, forward_len, dtype) for dtype in DTYPES}
    for setup in setups.values():  # warm-up
        for step in STEPS:
            setup.run(step)
    seconds: dict[str, dict[str, list[float]]] = {step: {dtype: [] for dtype in DTYPES} for step in STEPS}
    for _ in range(reps):
        for step in STEPS:
            for dtype, setup in setups.items():
                seconds[step][dtype].append(timed(lambda: setup.run(step)))
    steps = {}
    for step in STEPS:
        median = {dtype: statistics.median(seconds[step][dtype]) for dtype in DTYPES}
        steps[step] = {"median_s": median, "bf16_over_fp32_time": median["bfloat16"] / median["float32"], "seconds": seconds[step]}
    return steps


def main() -> None:
    """Time the steps (in a child process limited to ``--isa`` kernels, if given) and add the run to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens of the training steps")
    parser.add_argument("--forward-len", type=int, default=512, help="tokens of the inference forward")
    parser.add_argument("--isa", choices=sorted(ISA_ENV), help="run in a child process limited to these CPU kernels")
    parser.add_argument("--out", default="benchmarks/results/dtype_speed.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.isa and not args.child:
        cmd = [sys.executable, __file__, "--child", "--isa", args.isa, "--reps", str(args.reps), "--seq-len", str(args.seq_len)]
        cmd += ["--forward-len", str(args.forward_len), "--out", args.out]
        sys.exit(subprocess.run(cmd, env={**os.environ, **ISA_ENV[args.isa]}).returncode)
    run = {
        "hardware": hardware_info("cpu"),
        "isa_limit": ISA_ENV.get(args.isa or "", {}),
        "protocol": {
            "model": "smollm2-135m",
            "seq_len": args.seq_len,
            "forward_len": args.forward_len,
            "batch_size": 1,
            "reps": args.reps,
            "timing": "dtypes interleaved in one process, medians",
        },
        "software": software_versions(),
        "load_average_before": os.getloadavg(),
        "steps": measure(args.reps, args.seq_len, args.forward_len),
        "load_average_after": os.getloadavg(),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    for step, result in run["steps"].items():
        median = result["median_s"]
        print(
            f"{run['hardware']['cpu_capability']:>7} {step:>16}: fp32 {median['float32']:.3f} s, bf16 {median['bfloat16']:.3f} s, "
            f"bf16/fp32 time {result['bf16_over_fp32_time']:.2f}x",
            flush=True,
        )
    write_json_atomic(args.out, {"runs": with_run(Path(args.out), run)})


if __name__ == "__main__":
    main()
