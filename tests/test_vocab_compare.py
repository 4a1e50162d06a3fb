"""``pruneframe compare`` with methods that trim the vocabulary: the prune gets the tokenizer, the run is
evaluated with the rebuilt one, bits per byte and speed per byte appear, and recovery skips or refuses it."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from pruneframe.cli import main
from pruneframe.harness.figures import quality_points, speed_points
from pruneframe.harness.report import read_results
from pruneframe.harness.summary import summarise
from vocab_files import TEXTS, corpus_text, lexicon, model_folder

METHODS = ["vocab", "magnitude", "vocab+magnitude"]
RECOVERY = {"name": "lora", "tokens": 256, "seq_len": 16, "lr": 1e-2, "lora": {"rank": 2}}


def _settings(root: Path, out: Path, **extra: Any) -> dict[str, Any]:
    folder = model_folder(root)
    (root / "eval.txt").write_text(corpus_text(2, 3000))  # the whole lexicon: words calibration never saw
    (root / "other.txt").write_text("\n".join(TEXTS * 40))
    (root / "recover.txt").write_text(corpus_text(3, 2000, lexicon()[:300]))
    return {
        "model": str(folder),
        "methods": {name: {} for name in METHODS},
        "budgets": [0.85],
        "budget_kind": "total",
        "calibration": {"data": str(root / "calib.txt")},
        "evaluation": {
            "perplexity": {"sources": [str(root / "eval.txt"), str(root / "other.txt")], "seq_len": 32, "num_windows": 4},
            "size": {},
            "zeroshot": None,
            "speed": {"prefill_len": 16, "decode_tokens": 2, "warmup": 0, "repeats": 1},
        },
        "recovery": ["none", RECOVERY],
        "recovery_data": {"data": str(root / "recover.txt")},
        "out": str(out),
        **extra,
    }


@pytest.fixture(scope="module")
def vocab_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One comparison of ``vocab``, ``magnitude`` and ``vocab+magnitude`` at keep 0.85 of the total, with a recovery."""
    root = tmp_path_factory.mktemp("vocab-compare")
    out = root / "out"
    config = root / "compare.json"
    config.write_text(json.dumps(_settings(root, out)))
    logged = io.StringIO()
    with contextlib.redirect_stdout(logged), contextlib.redirect_stderr(logged):
        assert main(["compare", "--config", str(config)]) == 0
    return out, logged.getvalue()


def test_trimming_runs_meet_the_total_budget_and_read_text_with_their_own_tokenizer(vocab_run: tuple[Path, str]) -> None:
    out, _ = vocab_run
    results = json.loads((out / "results.json").read_text())
    runs = {r["run_id"]: r for r in results["runs"]}
    dense_params = results["dense"]["eval"]["size"]["params"]["total"]
    dense_fp = next(iter(results["dense"]["eval"]["perplexity"]["sources"].values()))["protocol"]["tokenizer_fingerprint"]
    for name in METHODS:
        record = runs[f"{name}-0.85-s0"]
        assert record["status"] == "ok", record.get("error")
        prune = record["prune"]
        assert prune["kept_params"] <= 0.85 * prune["dense_params"]
        assert prune["dense_params"] == dense_params and record["eval"]["size"]["params"]["total"] == prune["kept_params"]
        fingerprints = {s["protocol"]["tokenizer_fingerprint"] for s in record["eval"]["perplexity"]["sources"].values()}
        if name.startswith("vocab"):
            assert prune["vocabulary"]["tokens"] < prune["vocabulary"]["dense_tokens"] == 1000
            assert fingerprints != {dense_fp}  # evaluated with the rebuilt tokenizer, not the dense one
        else:
            assert prune["vocabulary"] is None and fingerprints == {dense_fp}
    trimmed = runs["vocab-0.85-s0"]["eval"]["perplexity"]["sources"]
    dense = results["dense"]["eval"]["perplexity"]["sources"]
    ratios = {label: (s["bytes"] / s["tokens"]) / (dense[label]["bytes"] / dense[label]["tokens"]) for label, s in trimmed.items()}
    assert max(ratios.values()) <= 1 and ratios["eval"] < 1  # the same text in more tokens where words were never calibrated on


def test_recovery_skips_the_trimming_methods_and_says_so(vocab_run: tuple[Path, str]) -> None:
    out, logged = vocab_run
    run_ids = [r["run_id"] for r in json.loads((out / "results.json").read_text())["runs"]]
    assert run_ids == ["vocab-0.85-s0", "magnitude-0.85-s0", "magnitude-0.85-s0+lora-256", "vocab+magnitude-0.85-s0"]
    assert "vocab, vocab+magnitude trim the vocabulary: no recovery for their runs" in logged


def test_the_report_ranks_by_bits_per_byte_and_gives_speed_per_byte(vocab_run: tuple[Path, str]) -> None:
    out, _ = vocab_run
    md = (out / "results.md").read_text()
    assert "bpb geomean" in md and "hf prefill speedup per byte" in md and "hf decode speedup per byte" in md
    with (out / "results.csv").open() as handle:
        rows = {r["run_id"]: r for r in csv.DictReader(handle)}
    dense_bpt = float(rows["dense"]["bytes_per_token"])
    trimmed = rows["vocab-0.85-s0"]
    assert float(trimmed["bytes_per_token"]) < dense_bpt
    assert float(rows["magnitude-0.85-s0"]["bytes_per_token"]) == pytest.approx(dense_bpt)
    assert float(trimmed["bpb_ood_ratio"]) > 0
    header = next(line for line in md.splitlines() if line.startswith("| method"))
    cells = {line.split("|")[1].strip(): line.split("|") for line in md.splitlines() if line.startswith("| vocab |")}
    column = [c.strip() for c in header.split("|")].index("hf prefill speedup per byte")
    expected = float(trimmed["prefill_speedup"]) * float(trimmed["bytes_per_token"]) / dense_bpt
    assert cells["vocab"][column].strip() == f"{expected:.2f}x"


def test_the_figures_plot_bits_per_byte_against_speed_per_byte(vocab_run: tuple[Path, str]) -> None:
    out, _ = vocab_run
    meta, dense, runs = read_results(out / "results.json")
    summary = summarise(dense, runs, "unknown")
    assert summary.bits_per_byte and {p.method for pts in quality_points(summary, "bpb").values() for p in pts} == set(METHODS)
    budget = summary.groups[0].budget
    per_token = {p.method: p.x for p in speed_points(summary, budget, "prefill", key="bpb")}
    per_byte = {p.method: p.x for p in speed_points(summary, budget, "prefill", key="bpb", dense=dense)}
    assert per_byte["magnitude"] == pytest.approx(per_token["magnitude"]) and per_byte["vocab"] < per_token["vocab"]
    assert (out / "ppl_vs_params.png").stat().st_size > 0 and list(out.glob("quality_vs_speed_*.png"))


def test_recovery_named_for_a_trimming_method_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    config = tmp_path / "compare.json"
    config.write_text(json.dumps(_settings(tmp_path, out, recovery_methods=["vocab", "magnitude"])))
    assert main(["compare", "--config", str(config), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "recovery_methods: 'vocab' trims the vocabulary" in err and not out.exists()
