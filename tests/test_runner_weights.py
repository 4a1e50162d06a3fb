"""compare keeps one copy of the weights: dense evaluated once, every run reloads the weights from their files."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest

from pruneframe.cli import main
from pruneframe.harness import runner
from test_compare import compare_settings, write_config


@pytest.mark.parametrize("speed", [False, True])
def test_each_run_loads_fresh_weights_after_the_dense_model_is_gone(
    workspace: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, speed: bool
) -> None:
    monkeypatch.setenv("PRUNEFRAME_DATA_DIR", str(workspace["data_dir"]))
    settings = compare_settings(workspace, tmp_path / "out")
    settings.update(methods={"magnitude": {}}, budgets=[0.8, 0.5])
    if not speed:
        settings["evaluation"]["speed"] = None
    dense_ref: list[weakref.ref] = []
    real_run_dense, real_load = runner.run_dense, runner.load_model
    loads: list[tuple[str, bool]] = []

    def spy_run_dense(prep, *args, **kwargs):
        dense_ref.append(weakref.ref(prep.model))
        return real_run_dense(prep, *args, **kwargs)

    def spy_load(spec, dtype, device):
        gc.collect()
        loads.append((spec, dense_ref[0]() is None))
        return real_load(spec, dtype, device)

    monkeypatch.setattr(runner, "run_dense", spy_run_dense)
    monkeypatch.setattr(runner, "load_model", spy_load)
    assert main(["compare", "--config", str(write_config(tmp_path / "c.json", settings)), "--quiet"]) == 0
    # one fresh copy per run (two with the paired speed timings), never while the first dense model lives
    assert loads == [(str(workspace["model"]), True)] * (2 * (2 if speed else 1))
