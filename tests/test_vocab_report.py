"""A comparison where some run trimmed the vocabulary ranks by bits per byte; one where none did reads as before."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pruneframe.architectures.gguf import ExportRefused
from pruneframe.evaluation.base import EvalContext
from pruneframe.harness.records import evaluate_model
from pruneframe.harness.report import csv_text, markdown, rows
from pruneframe.harness.summary import summarise, vocabulary_differs
from pruneframe.pipeline.prune_report import VocabularyRecord
from conftest import load_benchmark
from test_summary import PRUNE_REPORT

WINDOWS, TOKENS = 30, 31
DOMAINS = {"wiki": "wikitext-2", "book": "literature", "docs": "embedded"}
META = {
    "model": {"spec": "m"},
    "calibration": {"name": "c", "origin": "o", "split": "validation", "domain": "wikitext-2", "tokens": 10, "fingerprint": "f"},
    "evaluation": {"perplexity": {"config": {"seq_len": 32, "protocol": "custom"}}},
    "config": {"dtype": "float32", "budget_kind": "total"},
    "budgets": {"0.5": 50},
    "units": {"total_params": 200, "prunable_params": 150},
}


def _report(vocabulary: VocabularyRecord | None) -> dict[str, Any]:
    """The summary tests' prune record at a total budget, with ``vocabulary``."""
    return {**PRUNE_REPORT, "budget": {"kind": "total", "keep": 0.5}, "vocabulary": vocabulary.model_dump(mode="json") if vocabulary else None}


TRIMMED = VocabularyRecord(
    tokens=600, dense_tokens=1000, dense_rows=1000, row_cost=96, params=57600, budget_params=57650, initial_tokens=500, keep="balanced", fingerprint="abc"
)


def _sources(nll: dict[str, np.ndarray], window_bytes: dict[str, np.ndarray], tokenizer: str) -> dict[str, Any]:
    out = {}
    for label, values in nll.items():
        out[label] = {
            "ppl": math.exp(values.sum() / (TOKENS * len(values))),
            "window_nll": values.tolist(),
            "window_tokens": TOKENS,
            "window_bytes": window_bytes[label].tolist(),
            "bytes": int(window_bytes[label].sum()),
            "bits_per_byte": float(values.sum() / math.log(2) / window_bytes[label].sum()),
            "domain": DOMAINS[label],
            "protocol": {
                "seq_len": TOKENS + 1,
                "num_windows": len(values),
                "offset_windows": 0,
                "tokenizer_fingerprint": tokenizer,
                "data": {"fingerprint": label},
            },
        }
    return {"sources": out, "protocol": {"kind": "perplexity_set"}}


def _record(method: str, nll, window_bytes, tokenizer: str = "t", vocabulary: VocabularyRecord | None = None) -> dict[str, Any]:
    return {
        "run_id": f"{method}-0.5-s0",
        "kind": "pruned",
        "status": "ok",
        "eval": {"perplexity": _sources(nll, window_bytes, tokenizer)},
        "protocol": {"method": {"name": method}, "budget": {"label": "keep 0.5"}, "seed": 0},
        "prune": _report(vocabulary),
    }


@pytest.fixture
def data() -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    nll = {label: rng.uniform(60, 120, size=WINDOWS) for label in DOMAINS}
    window_bytes = {label: rng.integers(100, 140, size=WINDOWS).astype(float) for label in DOMAINS}
    dense = {"run_id": "dense", "kind": "dense", "status": "ok", "eval": {"perplexity": _sources(nll, window_bytes, "t")}}
    return dense, nll, window_bytes


def test_a_trimmed_vocabulary_switches_the_ranking_to_bits_per_byte(data) -> None:
    dense, nll, window_bytes = data
    rng = np.random.default_rng(1)
    width = _record("width", {k: v + 30 + rng.normal(0, 1, WINDOWS) for k, v in nll.items()}, window_bytes)
    # the trimmed tokenizer cuts the same text into more tokens: its windows cover fewer bytes, each token is easier
    short = {k: v * 0.8 for k, v in window_bytes.items()}
    vocab = _record("vocab+width", {k: v * 0.8 + 5 + rng.normal(0, 1, WINDOWS) for k, v in nll.items()}, short, tokenizer="t2", vocabulary=TRIMMED)
    assert vocabulary_differs(vocab, dense) and not vocabulary_differs(width, dense)
    summary = summarise(dense, [width, vocab], calibration_domain="wikitext-2")
    assert summary.bits_per_byte and summary.ranking_key == "bpb"
    groups = {g.method: g for g in summary.groups}
    assert "ood" not in groups["vocab+width"].measures and "ood" in groups["width"].measures
    for name, record in (("width", width), ("vocab+width", vocab)):
        ratios = {
            label: record["eval"]["perplexity"]["sources"][label]["bits_per_byte"] / dense["eval"]["perplexity"]["sources"][label]["bits_per_byte"]
            for label in DOMAINS
        }
        assert groups[name].measures["bpb:wiki"].value() == pytest.approx(ratios["wiki"], rel=1e-9)
        assert groups[name].measures["bpb"].value() == pytest.approx(math.sqrt(ratios["book"] * ratios["docs"]), rel=1e-9)
        low, high = groups[name].measures["bpb"].interval()
        assert low <= groups[name].measures["bpb"].value() <= high
    assert groups["vocab+width"].ranks["bpb"] == 1 and groups["width"].ranks["bpb"] == 2
    table = rows(dense, [width, vocab], 200, summary)
    assert table[0]["bpb_ood_ratio"] == 1.0 and table[2]["bpb_ratio_book"] == pytest.approx(groups["vocab+width"].measures["bpb:book"].value())
    assert table[2]["bpb_wiki"] == vocab["eval"]["perplexity"]["sources"]["wiki"]["bits_per_byte"]
    text = markdown(table, META, dense, summary)
    header = [c.strip() for c in next(line for line in text.splitlines() if line.startswith("| method")).strip("|").split("|")]
    assert "wiki bpb/dense" in header and "OOD bpb geomean" in header and "Bits per byte:" in text
    body = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| vocab+width") or line.startswith("| width")]
    assert body[0][0] == "vocab+width" and body[0][header.index("rank")] == "1"  # ordered and ranked by bits per byte
    assert body[0][header.index("OOD geomean")] == "-" and body[0][header.index("OOD bpb geomean")].startswith("**")
    assert summary.as_dict()["ranked_by"] == "bits per byte"


def test_without_a_trimmed_vocabulary_the_outputs_have_no_bits_per_byte(data) -> None:
    dense, nll, window_bytes = data
    width = _record("width", {k: v + 30 for k, v in nll.items()}, window_bytes)
    summary = summarise(dense, [width], calibration_domain="wikitext-2")
    assert not summary.bits_per_byte and summary.ranking_key == "ood" and "ranked_by" not in summary.as_dict()
    table = rows(dense, [width], 200, summary)
    assert "bpb" not in csv_text(table) and "bpb" not in markdown(table, META, dense, summary) and "Bits per byte" not in markdown(table, META, dense, summary)


def test_an_evaluator_that_refuses_the_model_is_recorded_and_reported_not_fatal(data) -> None:
    """An export refused inside ``llamacpp-speed`` (uneven widths, say) leaves the run's other evaluations standing."""

    class Measures:
        def evaluate(self, model: Any, tokenizer: Any, context: EvalContext) -> dict[str, Any]:
            return {"value": 1}

    class Refuses:
        def evaluate(self, model: Any, tokenizer: Any, context: EvalContext) -> dict[str, Any]:
            raise ExportRefused("layers have different widths")

    logged: list[str] = []
    results, walls = evaluate_model(None, None, {"a": Measures(), "llamacpp-speed": Refuses(), "b": Measures()}, EvalContext(), logged.append, "run")
    assert results == {"a": {"value": 1}, "llamacpp-speed": {"refused": "layers have different widths"}, "b": {"value": 1}}
    assert set(walls) == {"a", "llamacpp-speed", "b"} and "[run] llamacpp-speed refused: layers have different widths" in logged
    dense, nll, window_bytes = data
    width = _record("width", {k: v + 30 for k, v in nll.items()}, window_bytes)
    width["eval"]["llamacpp-speed"] = results["llamacpp-speed"]
    summary = summarise(dense, [width], calibration_domain="wikitext-2")
    text = markdown(rows(dense, [width], 200, summary), META, dense, summary)
    assert "- `width-0.5-s0` llamacpp-speed: layers have different widths" in text

    class Fails:
        def evaluate(self, model: Any, tokenizer: Any, context: EvalContext) -> dict[str, Any]:
            raise ValueError("not this")

    with pytest.raises(ValueError, match="not this"):  # anything else still fails the run
        evaluate_model(None, None, {"x": Fails()}, EvalContext(), logged.append, "r")


def test_the_vocabulary_rows_are_the_stored_reports_numbers() -> None:
    """``docs_report.py vocabulary`` reads each stored comparison's own measures: bits per byte, tokens, speed per byte."""
    studies = load_benchmark("report_studies")
    folder = Path(__file__).resolve().parent.parent / "docs" / "runs" / "compare-vocab-gemma3-270m-keep0.5"
    results = json.loads((folder / "results.json").read_text())
    table = {row["method"]: row for row in studies.vocabulary_rows(results)}
    groups = {g["method"]: g for g in results["summary"]["groups"]}
    by_row = {r["run_id"]: r for r in results["rows"]}
    for method, row in table.items():
        assert row["budget"] == 0.5 and row["budget_kind"] == "total" and row["ood_bpb_ratio"] == groups[method]["measures"]["bpb"]["value"]
        run = by_row[f"{method}-0.5-s0"]
        assert row["hf_decode_speedup_per_byte"] == pytest.approx(run["decode_speedup"] * run["bytes_per_token"] / by_row["dense"]["bytes_per_token"])
    assert table["vocab"]["vocab_size"] < table["vocab+llm-pruner"]["vocab_size"] < 262_144
    assert "| 0.5 | `vocab` | 52,692 |" in studies.render_vocabulary(list(table.values()), [])
