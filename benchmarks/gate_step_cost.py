"""Cost of one GRASPrune gate-training step on SmolLM2-135M, by attention kernel and loss path.

Configurations: attention ``eager`` or ``sdpa``; loss the plain ``cross_entropy(lm_head(hidden))``,
the memory-lean :func:`pruneframe.toolkit.losses.linear_cross_entropy` the training loops use, or the
``distill`` objective (:func:`pruneframe.toolkit.losses.linear_kl_divergence` against cached dense hidden
states). A step is what GRASPrune does every step: gates on every unit (frozen backbone) carrying a
keep-0.8 mask that meets the budget, forward, backward to the gate scores; the dense forward is the
GRASPrune benchmark's (batch 1, inference mode, full logits). The mask matters: with every unit off
the logits are extreme and the softmax runs into subnormal numbers, which are many times slower.

Time: one process runs a dense forward and a step of every configuration in turn, ``--reps`` times
(interleaved, so slow phases of a shared machine hit every configuration alike) and reports medians.
Memory: each configuration then runs in a fresh process (freed memory stays in a process's RSS and
would blur the next peak): peak RSS of dense forwards against peak RSS of steps.

    python benchmarks/gate_step_cost.py --out benchmarks/results/gate_step_cost.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from pruneframe.util.io import write_json_atomic
from pruneframe.toolkit.memory import PeakMemory
from pruneframe.architectures import discover
from pruneframe.pipeline.budget import project
from pruneframe.checkpoint import software_versions
from pruneframe.toolkit.gates import UnitGates
from pruneframe.models import load_model
from pruneframe_grasprune.training import attention_implementation, causal_lm_loss, distillation_loss, frozen

CONFIGS = [("eager", "plain"), ("eager", "lean"), ("sdpa", "plain"), ("sdpa", "lean"), ("sdpa", "distill")]


class GateStepSetup:
    """The model (in ``dtype``), its units, one batch and the fp32 gate scores, shared by every measurement."""

    def __init__(self, seq_len: int, dtype: str = "float32") -> None:
        self.model, _ = load_model("smollm2-135m", dtype=dtype)
        self.units = discover(self.model)
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, self.model.config.vocab_size, (1, seq_len), generator=g)
        self.scores = torch.zeros(len(self.units), requires_grad=True)
        target = int(0.8 * self.units.prunable_params)
        self.mask = project(torch.rand(len(self.units), generator=g), self.units.cost, target, groups=self.units.groups).float()
        with torch.inference_mode():
            self.teacher = self.model.get_decoder()(input_ids=self.ids, use_cache=False).last_hidden_state[:, :-1].clone()

    def forward(self) -> None:
        with torch.inference_mode():
            self.model(self.ids, use_cache=False)

    def step(self, attention: str, loss_path: str) -> None:
        with frozen(self.model), attention_implementation(self.model, attention), UnitGates(self.model, self.units, fused_glu=True) as gates:
            p = torch.sigmoid(self.scores / 1.5)
            gates.set(self.mask + p - p.detach())
            self.scores.grad = None
            if loss_path == "distill":
                distillation_loss(self.model, self.ids, self.teacher).backward()
            else:
                causal_lm_loss(self.model, self.ids, lean=loss_path == "lean").backward()


def _timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_all(reps: int, seq_len: int) -> dict[str, Any]:
    """Median seconds of a dense forward and of a step per configuration, interleaved ``reps`` times."""
    s = GateStepSetup(seq_len)
    s.forward()
    for cfg in CONFIGS:  # warm-up
        s.step(*cfg)
    times: dict[str, list[float]] = {"forward": []}
    for _ in range(reps):
        times["forward"].append(_timed(s.forward))
        for cfg in CONFIGS:
            times.setdefault("/".join(cfg), []).append(_timed(lambda: s.step(*cfg)))
    return {k: statistics.median(v) for k, v in times.items()} | {"all_seconds": times}


def memory_one(attention: str, loss_path: str, steps: int, seq_len: int) -> dict[str, int]:
    """Peak RSS of dense forwards, then of gate steps, in this (fresh) process."""
    s = GateStepSetup(seq_len)
    with PeakMemory() as fwd:
        for _ in range(steps):
            s.forward()
    with PeakMemory() as train:
        for _ in range(steps):
            s.step(attention, loss_path)
    return {"peak_rss_forward_bytes": fwd.report.peak_rss, "peak_rss_train_bytes": train.report.peak_rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=6, help="interleaved repetitions for the timing")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--out", default="benchmarks/results/gate_step_cost.json")
    parser.add_argument("--memory-of", nargs=2, metavar=("ATTENTION", "LOSS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:
        print(json.dumps(memory_one(*args.memory_of, steps=2, seq_len=args.seq_len)))
        return
    medians = time_all(args.reps, args.seq_len)
    out: dict[str, Any] = {
        "protocol": {
            "model": "smollm2-135m fp32",
            "seq_len": args.seq_len,
            "reps": args.reps,
            "batch_size": 1,
            "threads": torch.get_num_threads(),
            "tokens": "uniform random ids (cost does not depend on them)",
            "timing": "interleaved in one process, medians",
            "memory": "one fresh process per configuration",
        },
        "software": software_versions(),
        "dense_forward_seconds": medians["forward"],
        "all_seconds": medians["all_seconds"],
        "runs": [],
    }
    for attention, loss_path in CONFIGS:
        cmd = [sys.executable, __file__, "--memory-of", attention, loss_path, "--seq-len", str(args.seq_len)]
        mem = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
        step_s = medians[f"{attention}/{loss_path}"]
        run = {
            "attention": attention,
            "loss": loss_path,
            "step_seconds": step_s,
            "step_to_forward_throughput": medians["forward"] / step_s,
            **mem,
            "rss_ratio": mem["peak_rss_train_bytes"] / mem["peak_rss_forward_bytes"],
        }
        out["runs"].append(run)
        print(
            f"attention {attention:5s} loss {loss_path:5s}: step throughput / forward {run['step_to_forward_throughput']:.3f}, "
            f"peak RSS step / forward {run['rss_ratio']:.2f}",
            flush=True,
        )
        write_json_atomic(args.out, out)


if __name__ == "__main__":
    main()
