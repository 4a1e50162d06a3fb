"""``pruneframe compare`` end to end on a tiny saved Llama: outputs, fairness, protocol stamps, cache/resume."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest

from pruneframe.cli import main
from pruneframe.harness import runner
from pruneframe.harness.report import ZEROSHOT_HOWTO
from pruneframe.harness.summary import summarise
from pruneframe.harness.cache import package_digest


def compare_settings(ws: dict[str, Path], out: Path, zeroshot: bool = False) -> dict[str, Any]:
    """A small, fast comparison of ``random`` and ``magnitude`` at two budgets."""
    return {
        "model": str(ws["model"]),
        "methods": {"random": {}, "magnitude": {"norm": "l1"}},
        "budgets": [0.8, 0.5],
        "calibration": {"data": str(ws["calib"])},
        "evaluation": {
            "perplexity": {"sources": [str(ws["eval"]), str(ws["other"])], "seq_len": 32, "num_windows": 4},
            "zeroshot": {"tasks": [str(ws["task"])], "limit": 3, "batch_size": 4} if zeroshot else None,
            "speed": {"prefill_len": 16, "decode_tokens": 4, "warmup": 0, "repeats": 1},
        },
        "out": str(out),
    }


def write_config(path: Path, settings: dict[str, Any]) -> Path:
    path.write_text(json.dumps(settings))
    return path


@pytest.fixture(scope="module")
def full_run(workspace: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One comparison with every evaluator (zero-shot included), shared by the output checks."""
    out = tmp_path_factory.mktemp("full") / "out"
    settings = {**compare_settings(workspace, out, zeroshot=True), "method_seeds": {"random": [0, 1]}}
    config = write_config(out.parent / "compare.json", settings)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRUNEFRAME_DATA_DIR", str(workspace["data_dir"]))
        assert main(["compare", "--config", str(config), "--quiet"]) == 0
    return out


def count_prunes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The method names of the prunes the runner starts from now on, in order."""
    calls: list[str] = []

    class CountingSession(runner.PruneSession):
        def run(self, *args, **kwargs):
            calls.append(self.method.name)
            return super().run(*args, **kwargs)

    monkeypatch.setattr(runner, "PruneSession", CountingSession)
    return calls


RUN_IDS = ["random-0.8-s0", "random-0.8-s1", "magnitude-0.8-s0", "random-0.5-s0", "random-0.5-s1", "magnitude-0.5-s0"]
GROUPS = 4  # method x budget, seeds combined


def test_every_output_exists_and_parses(full_run: Path) -> None:
    results = json.loads((full_run / "results.json").read_text())
    assert [r["run_id"] for r in results["runs"]] == RUN_IDS and results["dense"]["kind"] == "dense"
    for run_id in [*RUN_IDS, "dense"]:
        assert json.loads((full_run / "runs" / f"{run_id}.json").read_text())["status"] == "ok"
    with (full_run / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["run_id"] for r in rows] == ["dense", *RUN_IDS]
    assert all(float(r["ppl_eval"]) > 1 and float(r["ppl_other"]) > 1 for r in rows) and rows[1]["acc_pf_tiny_mc"] != ""
    for row in rows[1:]:
        assert float(row["ratio_other_low"]) <= float(row["ratio_other"]) <= float(row["ratio_other_high"])
        assert float(row["ood_ratio"]) == pytest.approx(float(row["ratio_other"]))  # the one out-of-domain source
        assert float(row["acc_pf_tiny_mc_low"]) <= float(row["acc_pf_tiny_mc"]) <= float(row["acc_pf_tiny_mc_high"])
    for plot in ("ppl_vs_params.png", "acc_vs_params.png"):
        assert (full_run / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (full_run / "results.md").read_text()
    assert md.count("\n| ") == 2 + 1 + GROUPS  # header, separator, dense, one row per method and budget
    assert "| random | keep 0.8 of prunable params | 0,1 |" in md and "| magnitude | keep 0.8 of prunable params | 0 |" in md
    assert "prefill speedup (meas ±IQR / ideal)" in md and "acc pf_tiny_mc" in md
    assert "eval (in-domain) ppl/dense" in md and "other ppl/dense" in md and "OOD geomean" in md
    assert "Kendall tau" in md and ZEROSHOT_HOWTO not in md


def test_runs_share_budgets_calibration_and_protocol(full_run: Path) -> None:
    results = json.loads((full_run / "results.json").read_text())
    runs, dense = results["runs"], results["dense"]
    for slug in ("0.8", "0.5"):
        targets = {r["prune"]["budget_prunable_params"] for r in runs if r["run_id"].split("-")[1] == slug}
        assert targets == {results["budgets"][slug]}
        kept = {r["prune"]["kept_prunable_params"] for r in runs if r["run_id"].split("-")[1] == slug}
        assert max(kept) <= results["budgets"][slug]
    assert len({json.dumps(r["protocol"]["calibration"], sort_keys=True) for r in runs}) == 1
    for name in ("perplexity", "zeroshot", "size", "speed"):
        protocols = {json.dumps(r["eval"][name]["protocol"], sort_keys=True) for r in [dense, *runs]}
        assert len(protocols) == 1, name
    assert len({json.dumps(r["protocol"]["evaluation"], sort_keys=True) for r in [dense, *runs]}) == 1
    assert results["comparable"] is True


def test_each_run_is_stamped_with_its_protocol(full_run: Path, workspace: dict[str, Path]) -> None:
    record = json.loads((full_run / "runs" / "magnitude-0.5-s0.json").read_text())
    protocol = record["protocol"]
    assert protocol["model"]["location"] == str(workspace["model"].resolve()) and protocol["model"]["weights_fingerprint"]
    assert protocol["dtype"] == "float32" and protocol["seed"] == 0
    assert protocol["dtype_reason"] == "PRUNEFRAME_NATIVE_BF16=0"  # dtype auto; the suite pins the probe (conftest)
    assert "(float32: PRUNEFRAME_NATIVE_BF16=0)" in (full_run / "results.md").read_text()
    assert protocol["method"]["name"] == "magnitude" and protocol["method"]["config"]["norm"] == "l1"
    assert protocol["method"]["config"]["seed"] == 0 and protocol["method"]["code"] != "unknown"
    assert protocol["budget"] == {"kind": "prunable", "keep": 0.5, "label": "keep 0.5 of prunable params"}
    assert protocol["calibration"]["origin"] == str(workspace["calib"].resolve()) and protocol["calibration"]["tokens"] > 2000
    assert len(protocol["code"]["source"]) == 16 and protocol["code"]["schema"] >= 1
    assert set(protocol["code"]["versions"]) == {"pruneframe", "torch", "transformers", "lm_eval"}
    assert protocol["method"]["code"] == package_digest("pruneframe_baselines")
    for label, folder in (("eval", workspace["eval"].parent), ("other", workspace["other"].parent)):
        source = record["eval"]["perplexity"]["sources"][label]
        ppl = source["protocol"]
        assert (ppl["seq_len"], ppl["num_windows"], ppl["dtype"], ppl["protocol_name"]) == (32, 4, "float32", "custom")
        assert ppl["data"]["fingerprint"] == protocol["evaluation"]["perplexity"]["data"][label]["fingerprint"]
        assert source["domain"] == ppl["data"]["domain"] == f"folder:{folder.resolve()}"
        assert len(source["window_nll"]) == 4 and source["window_tokens"] == 31
        assert math.fsum(source["window_nll"]) / (4 * 31) == pytest.approx(source["mean_nll"], rel=1e-12)
    assert protocol["calibration"]["domain"] == f"folder:{workspace['calib'].parent.resolve()}"
    items = record["eval"]["zeroshot"]["tasks"]["pf_tiny_mc"]["items"]["acc"]
    assert len(items) == 3 and sum(items) / 3 == pytest.approx(record["eval"]["zeroshot"]["tasks"]["pf_tiny_mc"]["acc"])
    assert record["eval"]["zeroshot"]["protocol"]["limit"] == 3
    assert record["prune"]["timings"]["total_s"] > 0 and record["prune"]["memory"]["peak_rss_bytes"] > 0
    assert set(record["eval"]["speed"]) >= {"measured_speedup", "ideal_speedup"}


def test_markdown_bolds_only_separated_leaders_and_ranks_match_the_summary(full_run: Path) -> None:
    results = json.loads((full_run / "results.json").read_text())
    recomputed = summarise(results["dense"], results["runs"], results["calibration"]["domain"]).as_dict()
    assert recomputed["groups"] == results["summary"]["groups"]  # the stored records reproduce the summary
    lines = [line for line in (full_run / "results.md").read_text().splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    body = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert "**" not in " ".join(body[0])  # the dense row is the reference, never ranked
    ood, rank = header.index("OOD geomean"), header.index("rank")
    for group in results["summary"]["groups"]:
        row = next(r for r in body[1:] if r[0] == group["method"] and r[1] == group["budget"])
        assert row[rank] == str(group["ranks"]["ood"])
        peers = [g["ranks"]["ood"] for g in results["summary"]["groups"] if g["budget"] == group["budget"]]
        assert row[ood].startswith("**") == (group["ranks"]["ood"] == 1 and max(peers) > 1)


def test_rerun_recomputes_nothing_and_resumes_one_deleted_run(workspace: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRUNEFRAME_DATA_DIR", str(workspace["data_dir"]))
    out = tmp_path / "out"
    settings = compare_settings(workspace, out)
    settings["evaluation"]["speed"] = None
    config = write_config(tmp_path / "c.json", settings)
    calls = count_prunes(monkeypatch)
    assert main(["compare", "--config", str(config), "--quiet"]) == 0
    assert len(calls) == 4
    first = json.loads((out / "results.json").read_text())

    calls.clear()
    assert main(["compare", "--config", str(config), "--quiet"]) == 0
    assert calls == []
    assert json.loads((out / "results.json").read_text())["runs"] == first["runs"]

    (out / "runs" / "magnitude-0.5-s0.json").unlink()
    (out / "runs" / "random-0.8-s0.json").write_text("{ half-written")
    assert main(["compare", "--config", str(config), "--quiet"]) == 0
    assert sorted(calls) == ["magnitude", "random"]

    calls.clear()  # another method setting is another run; the others stay cached
    assert main(["compare", "--config", str(config), "--quiet", "--method-config", 'magnitude={"norm": "l2"}']) == 0
    assert calls == ["magnitude", "magnitude"]


# --------------------------------------------------------------------------- evaluation settings from files and flags


def parsed_config(argv: list[str]):
    from pruneframe.cli import build_parser
    from pruneframe.cli.compare_cmd import compare_config

    return compare_config(build_parser().parse_args(["compare", *argv]))


def test_default_perplexity_uses_every_available_source(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    monkeypatch.setattr(
        importlib.import_module("pruneframe.evaluation.perplexity"), "eval_source_catalog", lambda online=None: ["wikitext-2", "moby-dick", "embedded", "c4"]
    )
    config = parsed_config([]).resolved()
    ppl = config.evaluation["perplexity"]
    assert ppl == {}  # the evaluator's own defaults apply
    from pruneframe.evaluation.perplexity import PerplexityConfig

    evaluated = PerplexityConfig.model_validate(ppl)
    assert [(s.data, s.split) for s in evaluated.sources] == [("wikitext-2", "test"), ("moby-dick", "test"), ("embedded", "test"), ("c4", "test")]
    assert (evaluated.seq_len, evaluated.num_windows, evaluated.protocol) == (512, 64, "custom")


def test_validating_settings_reads_no_files_and_a_run_records_the_defaults_it_found(monkeypatch: pytest.MonkeyPatch, workspace: dict[str, Path]) -> None:
    import pruneframe.harness.config as config_module
    import pruneframe.settings.text as text_module
    from pruneframe.cli import build_parser
    from pruneframe.cli.prune_settings import prune_config
    from pruneframe.pipeline.host import PluginHost

    def no_disk() -> None:
        raise AssertionError("validating settings looked at the data folder")

    with monkeypatch.context() as mp:
        mp.setattr(config_module, "data_dir", no_disk)
        mp.setattr(text_module, "data_dir", no_disk)
        compare = parsed_config(
            [
                "--model",
                str(workspace["model"]),
                "--methods",
                "random",
                "--eval-data",
                str(workspace["eval"]),
                "--seq-len",
                "32",
                "--eval-windows",
                "2",
                "--zeroshot",
                "none",
                "--no-speed",
            ]
        )
        pruned = prune_config(build_parser().parse_args(["prune", "--method", "magnitude", "--budget", "0.5", "--out", "x", "--recover", "none"]))
        assert compare.calibration.data is None and compare.recovery_data.data is None
        assert pruned.calibration.data is None and pruned.recovery_data.data is None
        with pytest.raises(AssertionError, match="looked at the data folder"):
            compare.resolved()
    monkeypatch.setenv("PRUNEFRAME_DATA_DIR", str(workspace["data_dir"]))  # no WikiText-2 there: the embedded corpus
    assert pruned.calibration.resolved().data == "embedded" == pruned.recovery_data.resolved().data
    prep = runner.prepare(compare.model_copy(update={"evaluation": {**compare.evaluation, "size": None}}), PluginHost.create())
    assert prep.config.calibration.data == "embedded" == prep.config.recovery_data.data
    assert prep.calibration_stamp["name"] == "embedded"
    assert set(prep.config.evaluation) == {"perplexity", "zeroshot", "size", "speed"}
    assert prep.config.evaluation["zeroshot"] is None and prep.config.evaluation["speed"] is None


def test_eval_flags_windows_all_sources_and_protocol(tmp_path: Path) -> None:
    file = write_config(tmp_path / "c.json", {"evaluation": {"perplexity": {"sources": ["embedded", "moby-dick"], "seq_len": 256, "num_windows": 8}}})
    config = parsed_config(["--config", str(file), "--eval-windows", "all"])
    assert config.evaluation["perplexity"] == {"sources": ["embedded", "moby-dick"], "seq_len": 256, "num_windows": "all"}
    config = parsed_config(["--config", str(file), "--eval-data", "wikitext-2,embedded"])
    assert config.evaluation["perplexity"]["sources"] == ["wikitext-2", "embedded"]
    # a named protocol replaces the file's sources and windowing as a whole
    config = parsed_config(["--config", str(file), "--protocol", "wikitext2-2048"])
    assert config.evaluation["perplexity"] == {"protocol": "wikitext2-2048"}
    legacy = write_config(tmp_path / "l.json", {"evaluation": {"perplexity": {"data": "embedded", "split": "test"}}})
    assert parsed_config(["--config", str(legacy), "--eval-data", "moby-dick"]).evaluation["perplexity"] == {"sources": ["moby-dick"]}
    from pruneframe.harness import InputError

    with pytest.raises(InputError, match="protocol 'llm-pruner-128' fixes seq_len = 128"):
        from pruneframe.harness.inputs import build_evaluators
        from pruneframe.pipeline.host import PluginHost

        build_evaluators(PluginHost.create(), parsed_config(["--protocol", "llm-pruner-128", "--seq-len", "512"]))


def test_method_seeds_replace_seeds_for_the_methods_named() -> None:
    from pydantic import ValidationError

    from pruneframe.harness import CompareConfig

    config = CompareConfig(methods=["random", "flap"], seeds=[3], method_seeds={"random": [0, 1]})
    assert config.seeds_for("random") == [0, 1] and config.seeds_for("flap") == [3]
    with pytest.raises(ValidationError, match="method_seeds has seeds for 'grasprune'"):
        CompareConfig(methods=["random"], method_seeds={"grasprune": [0]})
    with pytest.raises(ValidationError, match="method_seeds.random contains duplicates"):
        CompareConfig(methods=["random"], method_seeds={"random": [1, 1]})
