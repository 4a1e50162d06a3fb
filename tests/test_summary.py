"""The comparison summary (pruneframe.harness.summary) and its Markdown, on hand-made run records."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from pruneframe.harness.report import ZEROSHOT_HOWTO, markdown, rows
from pruneframe.harness.summary import summarise
from pruneframe.pipeline.prune_report import MemoryRecord, PruneReport, Timings

WINDOWS, TOKENS = 40, 31
DOMAINS = {"wiki": "wikitext-2", "book": "literature", "docs": "embedded"}


def ppl_block(nll: dict[str, np.ndarray]) -> dict[str, Any]:
    sources = {}
    for label, values in nll.items():
        sources[label] = {
            "ppl": math.exp(values.sum() / (TOKENS * len(values))),
            "window_nll": values.tolist(),
            "window_tokens": TOKENS,
            "domain": DOMAINS[label],
            "protocol": {"seq_len": TOKENS + 1, "num_windows": len(values), "offset_windows": 0, "tokenizer_fingerprint": "t", "data": {"fingerprint": label}},
        }
    return {"sources": sources, "protocol": {"kind": "perplexity_set"}}


def record(method: str, seed: int, nll: dict[str, np.ndarray], items: list[int] | None = None) -> dict[str, Any]:
    ev: dict[str, Any] = {"perplexity": ppl_block(nll)}
    if items is not None:
        ev["zeroshot"] = {"tasks": {"mc": {"acc": float(np.mean(items)), "acc_stderr": 0.1, "items": {"acc": items}}}}
    return {
        "run_id": f"{method}-0.5-s{seed}",
        "kind": "pruned",
        "status": "ok",
        "eval": ev,
        "protocol": {"method": {"name": method}, "budget": {"label": "keep 0.5"}, "seed": seed},
        "prune": PRUNE_REPORT,
    }


#: A run's prune record as the runner stores it (a typed report, serialised).
PRUNE_REPORT = PruneReport(
    method="m",
    config={},
    budget={"kind": "prunable", "keep": 0.5},
    budget_label="keep 0.5",
    budget_prunable_params=50,
    kept_prunable_params=50,
    prunable_params=100,
    kept_params=100,
    dense_params=200,
    kept_fraction_of_prunable=0.5,
    kept_fraction_of_total=0.5,
    architecture="LlamaForCausalLM",
    units=10,
    timings=Timings(score_s=0.5, project_recalibrate_s=0.25, fold_s=0.25, total_s=1.0),
    memory=MemoryRecord(start_rss_bytes=1, peak_rss_bytes=2, delta_rss_bytes=1, source="sampling"),
    device="cpu",
    dtype="float32",
).model_dump(mode="json")


@pytest.fixture
def dense_nll() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {label: rng.uniform(60, 120, size=WINDOWS) for label in DOMAINS}


def shifted(base: dict[str, np.ndarray], shifts: dict[str, float], noise: float = 0.0, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: v + shifts[k] + rng.normal(0, noise, size=v.size) for k, v in base.items()}


def test_in_domain_marking_ood_geomean_and_ranks(dense_nll: dict[str, np.ndarray]) -> None:
    dense = {"run_id": "dense", "kind": "dense", "status": "ok", "eval": {"perplexity": ppl_block(dense_nll)}}
    # "fits" wins in domain but loses out of domain; "robust" is the other way round
    fits = record("fits", 0, shifted(dense_nll, {"wiki": 5.0, "book": 40.0, "docs": 50.0}, noise=1.0))
    robust = record("robust", 0, shifted(dense_nll, {"wiki": 20.0, "book": 10.0, "docs": 12.0}, noise=1.0, seed=2))
    summary = summarise(dense, [fits, robust], calibration_domain="wikitext-2")
    assert [(s.label, s.in_domain) for s in summary.sources] == [("wiki", True), ("book", False), ("docs", False)]
    assert summary.summary_scope == "out-of-domain"
    groups = {g.method: g for g in summary.groups}
    for group, rec in ((groups["fits"], fits), (groups["robust"], robust)):
        ratios = {label: rec["eval"]["perplexity"]["sources"][label]["ppl"] / dense["eval"]["perplexity"]["sources"][label]["ppl"] for label in DOMAINS}
        assert group.measures["ratio:wiki"].value() == pytest.approx(ratios["wiki"], rel=1e-9)
        assert group.measures["ood"].value() == pytest.approx(math.sqrt(ratios["book"] * ratios["docs"]), rel=1e-9)
        low, high = group.measures["ood"].interval()
        assert low < group.measures["ood"].value() < high
    assert groups["robust"].ranks["ood"] == 1 and groups["fits"].ranks["ood"] == 2
    assert groups["fits"].ranks["ratio:wiki"] == 1 and groups["robust"].ranks["ratio:wiki"] == 2
    assert summary.taus["keep 0.5"]["wiki ~ book"] == pytest.approx(-1.0)
    assert summary.taus["keep 0.5"]["book ~ docs"] == pytest.approx(1.0)

    meta = {
        "model": {"spec": "m"},
        "calibration": {"name": "c", "origin": "o", "split": "validation", "domain": "wikitext-2", "tokens": 10, "fingerprint": "f"},
        "evaluation": {"perplexity": {"config": {"seq_len": 32, "protocol": "custom"}}},
        "config": {"dtype": "float32", "budget_kind": "prunable"},
        "budgets": {"0.5": 50},
        "units": {"total_params": 200, "prunable_params": 150},
    }
    table = rows(dense, [fits, robust], 200, summary)
    text = markdown(table, meta, dense, summary)
    header = next(line for line in text.splitlines() if line.startswith("| method"))
    assert "wiki (in-domain) ppl/dense" in header and "book ppl/dense" in header and "OOD geomean" in header
    body = [line for line in text.splitlines() if line.startswith("| robust") or line.startswith("| fits")]
    assert body[0].startswith("| robust")  # ordered by the OOD summary
    robust_cells = [c.strip() for c in body[0].strip("|").split("|")]
    fits_cells = [c.strip() for c in body[1].strip("|").split("|")]
    ood = [c.strip() for c in header.strip("|").split("|")].index("OOD geomean")
    assert robust_cells[ood].startswith("**") and not fits_cells[ood].startswith("**")
    assert ZEROSHOT_HOWTO in text and "wiki ~ book -1.00" in text
    assert table[1]["ratio_book_low"] < table[1]["ratio_book"] < table[1]["ratio_book_high"]


def test_differences_inside_the_intervals_are_ties(dense_nll: dict[str, np.ndarray]) -> None:
    dense = {"run_id": "dense", "kind": "dense", "status": "ok", "eval": {"perplexity": ppl_block(dense_nll)}}
    shifts = {"wiki": 10.0, "book": 10.0, "docs": 10.0}
    a = record("a", 0, shifted(dense_nll, shifts, noise=8.0, seed=5))
    b = record("b", 0, shifted(dense_nll, shifts, noise=8.0, seed=6))
    summary = summarise(dense, [a, b], calibration_domain="wikitext-2")
    assert {g.method: g.ranks["ood"] for g in summary.groups} == {"a": 1, "b": 1}


def test_seeds_combine_and_accuracy_ranks_use_paired_items(dense_nll: dict[str, np.ndarray]) -> None:
    dense = {"run_id": "dense", "kind": "dense", "status": "ok", "eval": {"perplexity": ppl_block(dense_nll)}}
    good_items, bad_items = [1] * 180 + [0] * 20, [1] * 100 + [0] * 100
    runs = [record("x", s, shifted(dense_nll, {k: 5.0 + s for k in DOMAINS}), good_items) for s in (0, 1)]
    runs += [record("y", s, shifted(dense_nll, {k: 6.0 + s for k in DOMAINS}), bad_items) for s in (0, 1)]
    summary = summarise(dense, runs, calibration_domain="nowhere")
    assert summary.summary_scope == "out-of-domain" and not any(s.in_domain for s in summary.sources)
    x = next(g for g in summary.groups if g.method == "x")
    ood = x.measures["ood"]
    seed_values = [math.exp(5.0 / TOKENS), math.exp(6.0 / TOKENS)]
    assert ood.seed_range() == pytest.approx((min(seed_values), max(seed_values)), rel=1e-9)
    assert ood.value() == pytest.approx(math.sqrt(seed_values[0] * seed_values[1]), rel=1e-9)
    assert x.measures["acc:mc"].value() == pytest.approx(0.9)
    assert x.ranks["acc:mc"] == 1 and next(g for g in summary.groups if g.method == "y").ranks["acc:mc"] == 2
    # x (shifts 5, 6) and y (6, 7): the seed ranges overlap, so neither ranks above the other
    assert {g.method: g.ranks["ood"] for g in summary.groups} == {"x": 1, "y": 1}


def test_no_out_of_domain_source_summarises_all(dense_nll: dict[str, np.ndarray]) -> None:
    only = {"wiki": dense_nll["wiki"]}
    dense = {"run_id": "dense", "kind": "dense", "status": "ok", "eval": {"perplexity": ppl_block(only)}}
    summary = summarise(dense, [record("a", 0, {"wiki": only["wiki"] + 3})], calibration_domain="wikitext-2")
    assert summary.summary_scope == "all"
    assert summary.groups[0].measures["ood"].value() == pytest.approx(math.exp(3 / TOKENS))


def test_llamacpp_speedups_get_columns_only_when_measured(dense_nll: dict[str, np.ndarray]) -> None:
    """The llamacpp-speed evaluator's speedups appear as columns (measured / ideal) only when a run has them."""
    dense = {"run_id": "dense", "kind": "dense", "status": "ok", "eval": {"perplexity": ppl_block(dense_nll)}}
    timed = record("timed", 0, shifted(dense_nll, {"wiki": 5.0, "book": 5.0, "docs": 5.0}))
    timed["eval"]["llamacpp-speed"] = {
        "measured_speedup": {"prefill_256": 1.83, "prefill_512": 1.71, "decode": 1.55},
        "ideal_speedup": {"prefill": 2.0, "decode": 1.65},
    }
    meta = {
        "model": {"spec": "m"},
        "calibration": {"name": "c", "origin": "o", "split": "validation", "domain": "wikitext-2", "tokens": 10, "fingerprint": "f"},
        "evaluation": {"perplexity": {"config": {"seq_len": 32, "protocol": "custom"}}},
        "config": {"dtype": "float32", "budget_kind": "prunable"},
        "budgets": {"0.5": 50},
        "units": {"total_params": 200, "prunable_params": 150},
    }
    plain = record("plain", 0, shifted(dense_nll, {"wiki": 6.0, "book": 6.0, "docs": 6.0}))
    summary = summarise(dense, [plain], calibration_domain="wikitext-2")
    assert "llama.cpp" not in markdown(rows(dense, [plain], 200, summary), meta, dense, summary)

    summary = summarise(dense, [timed, plain], calibration_domain="wikitext-2")
    table = rows(dense, [timed, plain], 200, summary)
    text = markdown(table, meta, dense, summary)
    header = [c.strip() for c in next(line for line in text.splitlines() if line.startswith("| method")).strip("|").split("|")]
    cells = {
        line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| timed") or line.startswith("| plain")
    }
    decode = header.index("llama.cpp decode speedup (meas / ideal)")
    assert header.index("llama.cpp prefill 256 speedup (meas / ideal)") < header.index("llama.cpp prefill 512 speedup (meas / ideal)") < decode
    assert cells["timed"][decode] == "1.55x / 1.65x" and cells["plain"][decode] == "-"
    assert cells["timed"][header.index("llama.cpp prefill 512 speedup (meas / ideal)")] == "1.71x / 2.00x"
    assert next(r for r in table if r.get("method") == "timed")["llamacpp_decode_speedup"] == pytest.approx(1.55)
