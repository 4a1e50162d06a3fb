"""Recovery as a comparison axis: every run evaluated before and after each recovery, on the same tokens,
cached under keys that cover the recovery, reported with ranks per recovery and the before/after tau."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pruneframe.cli import main
from test_compare import compare_settings, count_prunes, write_config

RECOVERIES = [{"name": "distill", "tokens": 512, "seq_len": 16, "lr": 3e-3}, {"name": "lora", "tokens": 256, "seq_len": 16, "lr": 1e-2, "lora": {"rank": 2}}]


def settings(ws: dict[str, Path], out: Path, recovery: list[Any] | None = None) -> dict[str, Any]:
    base = compare_settings(ws, out)
    base["evaluation"]["speed"] = None
    return {
        **base,
        "methods": {"magnitude": {"norm": "l1"}, "random": {}},
        "recovery": ["none", *(recovery or RECOVERIES)],
        "recovery_data": {"data": str(ws["recover"])},
    }


@pytest.fixture(scope="module")
def ws(recovery_workspace: dict[str, Path]) -> dict[str, Path]:
    return recovery_workspace


def run(ws: dict[str, Path], config: dict[str, Any], path: Path) -> int:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRUNEFRAME_DATA_DIR", str(ws["data_dir"]))
        return main(["compare", "--config", str(write_config(path, config)), "--quiet"])


@pytest.fixture(scope="module")
def recovered_run(ws: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("recovered") / "out"
    assert run(ws, settings(ws, out), out.parent / "c.json") == 0
    return out


def test_every_run_is_evaluated_before_and_after_each_recovery(recovered_run: Path) -> None:
    results = json.loads((recovered_run / "results.json").read_text())
    ids = [r["run_id"] for r in results["runs"]]
    assert ids[:3] == ["magnitude-0.8-s0", "magnitude-0.8-s0+distill-512", "magnitude-0.8-s0+lora-256"]
    assert len(ids) == 2 * 2 * 3 and all(r["status"] == "ok" for r in results["runs"])
    by_id = {r["run_id"]: r for r in results["runs"]}
    streams: dict[str, set[str]] = {}
    for run_id, record in by_id.items():
        if "+" not in run_id:
            continue
        base = by_id[run_id.split("+")[0]]
        assert record["prune"]["kept_params"] == base["prune"]["kept_params"] == record["recovery"]["params"]
        assert record["eval"]["perplexity"]["sources"] != base["eval"]["perplexity"]["sources"]
        streams.setdefault(record["recovery"]["name"], set()).add(record["recovery"]["data"]["stream_sha256"])
    assert all(len(fingerprints) == 1 for fingerprints in streams.values())  # every method trained on the same tokens
    assert by_id["random-0.5-s0+distill-512"]["recovery"]["teacher"]["top_k"] == 64


def test_report_ranks_per_recovery_and_states_the_before_after_tau(recovered_run: Path) -> None:
    md = (recovered_run / "results.md").read_text()
    assert "| method | budget | recovery |" in md and "| distill 512 |" in md and "| lora 256 |" in md
    assert "Does recovery change which method is best?" in md
    summary = json.loads((recovered_run / "results.json").read_text())["summary"]
    taus = summary["kendall_tau_recovery"]
    assert set(taus) == {"keep 0.8 of prunable params", "keep 0.5 of prunable params"}
    assert set(taus["keep 0.5 of prunable params"]) == {"distill 512", "lora 256"}
    groups = summary["groups"]
    assert {g["recovery"] for g in groups} == {"none", "distill 512", "lora 256"}
    for setting in {(g["budget"], g["recovery"]) for g in groups}:  # ranks are among the same budget and recovery
        ranks = [g["ranks"]["ood"] for g in groups if (g["budget"], g["recovery"]) == setting]
        assert min(ranks) == 1 and len(ranks) == 2


def test_rerun_recomputes_nothing_and_a_new_recovery_setting_recovers_again(ws: dict[str, Path], recovered_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = settings(ws, recovered_run)
    prunes = count_prunes(monkeypatch)
    assert run(ws, config, recovered_run.parent / "again.json") == 0
    assert prunes == []
    changed = settings(ws, recovered_run, [RECOVERIES[0], {**RECOVERIES[1], "lr": 5e-3}])
    before = {p.name: p.read_text() for p in (recovered_run / "runs").glob("*.json")}
    assert run(ws, changed, recovered_run.parent / "changed.json") == 0
    assert sorted(prunes) == ["magnitude", "magnitude", "random", "random"]  # re-pruned to recover; unrecovered runs cached
    after = {p.name: p.read_text() for p in (recovered_run / "runs").glob("*.json")}
    rewritten = sorted(name for name in after if after[name] != before.get(name))
    assert rewritten == sorted(f"{m}-{b}-s0+lora-256.json" for m in ("magnitude", "random") for b in ("0.8", "0.5"))


def test_recovery_text_overlapping_an_evaluation_source_exits_2(ws: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = {**settings(ws, tmp_path / "out"), "recovery_data": {"data": str(ws["eval"])}}
    assert run(ws, config, tmp_path / "c.json") == 2
    assert f"recovery data {str(ws['eval'])!r} overlaps evaluation source" in capsys.readouterr().err


@pytest.mark.parametrize(
    "recovery, message",
    [
        ({"name": "distill", "tokens": 10**7, "seq_len": 16}, "recovery 'distill': recovery tokens 10,000,000"),
        ({"name": "lora", "lora": {"target_modules": ["nope"]}}, r"target_modules \['nope'\] are not linear layers"),
        ({"name": "distil"}, "did you mean 'distill'"),
        ({"tokens": 5}, r"recovery\[1\]"),
    ],
)
def test_bad_recovery_settings_exit_2_naming_the_field(
    ws: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], recovery: dict[str, Any], message: str
) -> None:
    assert run(ws, settings(ws, tmp_path / "out", [recovery]), tmp_path / "c.json") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    import re

    assert re.search(message, err), err
