"""The ``pruneframe`` command line: plugins listing, prune/eval round trip, flags over files, exit code 2 on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import pruneframe.pipeline.host as host_module
from pruneframe.checkpoint import load_pruned, read_report
from pruneframe.cli import main
from pruneframe.harness import CompareConfig
from pruneframe.pipeline.host import PluginHost
from workspace_files import cli_flags

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "compare_smollm2.yaml"


class BrokenEntryPoint:
    """An installed plugin whose import fails."""

    name = "broken-plugin"

    def load(self) -> None:
        raise ImportError("needs a library that is not installed")


@pytest.fixture
def offline_data(workspace: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """The workspace, with an empty shared-data folder so defaults never reach real data."""
    monkeypatch.setenv("PRUNEFRAME_DATA_DIR", str(workspace["data_dir"]))
    return workspace


def test_plugins_lists_core_plugins_hooks_and_failures(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    real = host_module.metadata.entry_points
    monkeypatch.setattr(host_module.metadata, "entry_points", lambda group: [*real(group=group), BrokenEntryPoint()])
    assert main(["plugins"]) == 0
    text = capsys.readouterr().out
    for expected in (
        "pruneframe.pipeline.builtins",
        "pruneframe.evaluation.builtin",
        "register_architectures",
        "register_evaluators",
        "perplexity, size, speed, zeroshot",
        "magnitude",
        "failed to load (1)",
        "broken-plugin: ImportError: needs a library",
    ):
        assert expected in text
    assert main(["plugins", "--json"]) == 0
    infos = {i["name"]: i for i in json.loads(capsys.readouterr().out)}
    assert "project" in infos["pruneframe.pipeline.builtins"]["hooks"]
    assert infos["pruneframe.evaluation.builtin"]["evaluators"] == ["llamacpp-perplexity", "llamacpp-speed", "perplexity", "size", "speed", "zeroshot"]
    assert infos["broken-plugin"]["error"].startswith("ImportError")


def test_bad_budget_exits_2_with_one_message(capsys) -> None:
    assert main(["compare", "--budgets", "0.8,1.5", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "budgets[1] = 1.5" in err and "(0, 1]" in err and "Traceback" not in err
    assert main(["compare", "--budgets", "half"]) == 2
    assert "not a number: 'half'" in capsys.readouterr().err


def test_unknown_method_suggests_the_close_name(offline_data: dict[str, Path], tmp_path: Path, capsys) -> None:
    assert main([*cli_flags("compare", offline_data, tmp_path / "o"), "--methods", "magnitude,randon"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'random'" in err and "Traceback" not in err


def test_missing_data_file_lists_the_paths_tried(offline_data: dict[str, Path], tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nowhere" / "calib.txt"
    flags = cli_flags("compare", offline_data, tmp_path / "o")
    flags[flags.index("--calib") + 1] = str(missing)
    assert main([*flags, "--methods", "random"]) == 2
    err = capsys.readouterr().err
    assert "calibration data" in err and str(missing) in err and "Tried:" in err


def test_overlapping_calibration_and_evaluation_text_is_refused(offline_data: dict[str, Path], tmp_path: Path, capsys) -> None:
    flags = cli_flags("compare", offline_data, tmp_path / "o")
    flags[flags.index("--eval-data") + 1] = str(offline_data["calib"])
    assert main([*flags, "--methods", "random"]) == 2
    assert "must not overlap" in capsys.readouterr().err


def test_bad_settings_are_named(offline_data: dict[str, Path], tmp_path: Path, capsys) -> None:
    flags = [*cli_flags("compare", offline_data, tmp_path / "o"), "--methods", "magnitude"]
    assert main([*flags, "--method-config", 'magnitude={"norm": "l3"}']) == 2
    assert "method 'magnitude'" in capsys.readouterr().err
    assert main([*flags, "--method-config", "magnitude={oops"]) == 2
    assert "not JSON" in capsys.readouterr().err
    assert main([*flags, "--budget-kind", "params", "--budgets", "10"]) == 2  # below the per-layer minimum
    assert "mandatory minimum" in capsys.readouterr().err
    config = tmp_path / "bad.yaml"
    config.write_text("budgets: [0.5]\nevaluaton: {}\n")
    assert main(["compare", "--config", str(config)]) == 2
    assert "evaluaton: Extra inputs are not permitted" in capsys.readouterr().err
    assert main(["compare", "--no-such-flag"]) == 2


def test_flags_override_the_config_file(offline_data: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "o"
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump({"methods": {"magnitude": {"norm": "l1"}, "random": {}}, "budgets": [0.8], "evaluation": {"perplexity": {"num_windows": 3}}})
    )
    assert main([*cli_flags("compare", offline_data, out), "--config", str(config), "--methods", "magnitude", "--budgets", "0.5"]) == 0
    assert "(runs: 1 computed, 0 cached, 0 failed; dense computed)" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert [r["run_id"] for r in results["runs"]] == ["magnitude-0.5-s0"]
    assert results["runs"][0]["protocol"]["method"]["config"]["norm"] == "l1"
    assert results["evaluation"]["perplexity"]["config"]["num_windows"] == 2  # the flag beat the file
    assert set(results["evaluation"]) == {"perplexity", "size"}


def test_prune_saves_a_checkpoint_that_eval_reads(offline_data: dict[str, Path], tmp_path: Path, capsys) -> None:
    ckpt = tmp_path / "ckpt"
    assert (
        main(
            [
                "prune",
                "--model",
                str(offline_data["model"]),
                "--method",
                "magnitude",
                "--budget",
                "0.5",
                "--method-config",
                '{"norm": "l1"}',
                "--calib",
                str(offline_data["calib"]),
                "--out",
                str(ckpt),
                "--quiet",
            ]
        )
        == 0
    )
    assert "pruned with magnitude to keep 0.5 of prunable params" in capsys.readouterr().out
    report = read_report(ckpt)
    assert report.config["norm"] == "l1" and report.calibration_source["origin"] == str(offline_data["calib"].resolve())
    model, tokenizer = load_pruned(ckpt)
    assert tokenizer is not None and sum(p.numel() for p in model.parameters()) == report.kept_params

    out = tmp_path / "eval.json"
    assert main(cli_flags("eval", {**offline_data, "model": ckpt}, out, "--dense", str(offline_data["model"]))) == 0
    record = json.loads(out.read_text())
    assert record["model"]["kind"] == "pruned" and record["pruning"]["method"] == "magnitude"
    assert record["eval"]["perplexity"]["sources"]["eval"]["protocol"]["num_windows"] == 2
    ratio = record["perplexity_ratios"]["eval"]
    assert ratio["value"] == pytest.approx(record["eval"]["perplexity"]["sources"]["eval"]["ppl"] / ratio["dense_ppl"])
    assert ratio["low"] <= ratio["value"] <= ratio["high"]
    assert record["eval"]["size"]["params"]["total"] == report.kept_params
    assert 0 < record["eval"]["size"]["kept_fraction"] < 1 and record["eval"]["size"]["checkpoint_bytes"]["weights"] > 0
    assert main(["prune", "--method", "magnitude,random", "--budget", "0.5", "--out", str(tmp_path / "x")]) == 2
    assert "exactly one value" in capsys.readouterr().err


def test_example_config_is_valid_for_the_installed_methods() -> None:
    config = CompareConfig.model_validate(yaml.safe_load(EXAMPLE.read_text()))
    host = PluginHost.create()
    assert set(config.methods) == {"grasprune", "magnitude", "llm-pruner", "wanda-sp", "flap", "random"}
    for name in config.methods:
        host.method(name, config.method_configs.get(name))
    for name, settings in config.enabled_evaluators().items():
        host.evaluator(name, settings)
    assert config.budgets == [0.8, 0.5] and config.evaluation["perplexity"]["num_windows"] == 8
    assert config.seeds_for("grasprune") == [0] and config.seeds_for("random") == [0] and config.seeds_for("flap") == [0]
    # GRASPrune's benchmark schedule with the objective chosen on development text (docs/results.md)
    assert config.method_configs["grasprune"] == {
        "num_sequences": 64,
        "seq_len": 256,
        "epochs": 2,
        "rescale_sequences": 64,
        "loss": "distill",
        "rescale_loss": "distill",
    }


def test_methods_flag_narrows_the_files_per_method_settings(tmp_path: Path) -> None:
    """``--methods`` over a config file drops the file's settings, seeds and recovery choices of the methods left out."""
    from pruneframe.cli import build_parser
    from pruneframe.cli.compare_cmd import compare_config

    file = tmp_path / "compare.yaml"
    file.write_text(EXAMPLE.read_text() + "method_seeds: {grasprune: [0, 1], random: [0, 1]}\n")
    flags = ["compare", "--config", str(file), "--out", "x", "--methods", "llm-pruner+scales,random"]
    config = compare_config(build_parser().parse_args([*flags, "--method-config", 'llm-pruner+scales={"recalibration": {"epochs": 2}}']))
    assert config.methods == ["llm-pruner+scales", "random"]
    assert config.method_configs == {"llm-pruner+scales": {"recalibration": {"epochs": 2}}, "random": {}}
    assert config.method_seeds == {"random": [0, 1]} and config.recovery_methods == []


@pytest.mark.ranks
def test_prune_under_torchrun_saves_the_one_process_checkpoint(offline_data: dict[str, Path], tmp_path: Path, capsys) -> None:
    settings = json.dumps({"num_sequences": 4, "seq_len": 12, "epochs": 2, "rescale_sequences": 2, "lr": 0.2})
    flags = [
        "prune",
        "--model",
        str(offline_data["model"]),
        "--method",
        "grasprune",
        "--budget",
        "0.5",
        "--method-config",
        settings,
        "--calib",
        str(offline_data["calib"]),
        "--quiet",
    ]
    assert main([*flags, "--out", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # the kernels' sums split as in this process
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "pruneframe", *flags, "--out", str(tmp_path / "two")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("pruned with grasprune") == 1  # rank 0 alone reports and saves
    one, _ = load_pruned(tmp_path / "one")
    two, _ = load_pruned(tmp_path / "two")
    a, b = one.state_dict(), two.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    stats = read_report(tmp_path / "two").method_stats["gates"]
    assert stats["steps"] == 8 and all(c <= stats["budget"] for c in stats["kept_cost_per_step"])


def test_prune_refuses_another_runs_checkpoint_with_exit_2(offline_data: dict[str, Path], tmp_path: Path, capsys) -> None:
    settings = json.dumps({"num_sequences": 4, "seq_len": 12, "epochs": 1, "rescale_sequences": 2, "checkpoint_dir": str(tmp_path / "state")})
    flags = [
        "prune",
        "--model",
        str(offline_data["model"]),
        "--method",
        "grasprune",
        "--method-config",
        settings,
        "--calib",
        str(offline_data["calib"]),
        "--quiet",
    ]
    assert main([*flags, "--budget", "0.5", "--out", str(tmp_path / "a")]) == 0
    assert main([*flags, "--budget", "0.6", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "grasprune-gates.pt' was written by a different run (differs in budget)" in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()
