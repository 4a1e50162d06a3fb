"""The run cache knows the code: an edit anywhere in pruneframe or in a method's plugin package recomputes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pruneframe.util import digests
from pruneframe.cli import main
from pruneframe.harness import cache
from test_compare import compare_settings, count_prunes, write_config


def _copy_package(name: str, into: Path) -> Path:
    root = cache.package_root(name)
    assert root is not None and root.is_dir()
    return Path(shutil.copytree(root, into / name, ignore=shutil.ignore_patterns("__pycache__")))


@pytest.fixture
def fresh_digests():
    cache.clear_digests()
    yield
    cache.clear_digests()


def test_tree_digest_follows_every_file_and_is_computed_once(tmp_path: Path, fresh_digests) -> None:
    copy = _copy_package("pruneframe", tmp_path)
    original = cache.package_digest("pruneframe")
    assert cache.tree_digest(copy) == original  # same files, same relative paths: same digest wherever they live
    (copy / "pipeline" / "projection.py").write_text((copy / "pipeline" / "projection.py").read_text() + "# a comment\n")
    assert cache.tree_digest(copy) == original  # cached for the process: the files are read once
    cache.clear_digests()
    edited = cache.tree_digest(copy)
    assert edited != original
    (copy / "evaluation" / "extra.py").write_text("")
    cache.clear_digests()
    assert cache.tree_digest(copy) not in (original, edited)  # a new file counts too


def test_package_digest_covers_the_methods_whole_plugin_package(tmp_path: Path, fresh_digests) -> None:
    from pruneframe_baselines.magnitude import Magnitude

    assert cache.package_digest(Magnitude) == cache.tree_digest(cache.package_root("pruneframe_baselines"))
    assert cache.package_digest(Magnitude) != cache.package_digest("pruneframe")
    versions = cache.code_identity()["versions"]
    assert {"torch", "transformers", "lm_eval", "pruneframe"} == set(versions)


def test_an_edit_to_core_or_plugin_code_recomputes_the_runs(workspace: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_digests) -> None:
    copies = {name: _copy_package(name, tmp_path / "code") for name in ("pruneframe", "pruneframe_baselines")}
    real_root = digests.package_root
    monkeypatch.setattr(digests, "package_root", lambda name: copies.get(name) or real_root(name))
    monkeypatch.setenv("PRUNEFRAME_DATA_DIR", str(workspace["data_dir"]))
    settings = compare_settings(workspace, tmp_path / "out")
    settings.update(methods={"magnitude": {}}, budgets=[0.5])
    settings["evaluation"]["speed"] = None
    config = write_config(tmp_path / "c.json", settings)
    calls = count_prunes(monkeypatch)

    def rerun() -> tuple[list[str], str]:
        calls.clear()
        cache.clear_digests()  # a new process would read the files again
        assert main(["compare", "--config", str(config), "--quiet"]) == 0
        dense = json.loads((tmp_path / "out" / "runs" / "dense.json").read_text())
        return list(calls), dense["cache_key"]

    first, dense_key = rerun()
    assert first == ["magnitude"]
    assert rerun() == ([], dense_key)  # nothing changed: everything cached

    fold = copies["pruneframe"] / "pipeline" / "fold.py"
    fold.write_text(fold.read_text() + "# an edit to the core\n")
    again, edited_key = rerun()
    assert again == ["magnitude"] and edited_key != dense_key  # the dense evaluation is recomputed too

    plugin = copies["pruneframe_baselines"] / "ranges.py"
    plugin.write_text(plugin.read_text() + "# an edit to a file other than the method's own\n")
    assert rerun() == (["magnitude"], edited_key)  # the method's runs recompute, the dense one stays cached


def test_library_versions_model_files_data_and_settings_each_recompute_the_runs(
    workspace: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    model = Path(shutil.copytree(workspace["model"], tmp_path / "model"))
    calib = tmp_path / "calib.txt"
    calib.write_text(workspace["calib"].read_text())
    monkeypatch.setenv("PRUNEFRAME_DATA_DIR", str(workspace["data_dir"]))
    settings = compare_settings(workspace, tmp_path / "out")
    settings.update(model=str(model), methods={"magnitude": {}}, budgets=[0.5], calibration={"data": str(calib)})
    settings["evaluation"]["speed"] = None
    config = write_config(tmp_path / "c.json", settings)
    calls = count_prunes(monkeypatch)

    def rerun(*flags: str) -> tuple[list[str], str]:
        calls.clear()
        assert main(["compare", "--config", str(config), "--quiet", *flags]) == 0
        return list(calls), json.loads((tmp_path / "out" / "runs" / "dense.json").read_text())["cache_key"]

    first, dense_key = rerun()
    assert first == ["magnitude"] and rerun() == ([], dense_key)

    real_version = cache._version
    monkeypatch.setattr(cache, "_version", lambda name: "0.0-other" if name == "transformers" else real_version(name))
    again, versions_key = rerun()
    assert again == ["magnitude"] and versions_key != dense_key  # another transformers version: everything recomputes
    monkeypatch.setattr(cache, "_version", real_version)
    assert rerun() == (["magnitude"], dense_key)  # back to the real version: recomputed (the files held the other), same key

    weights = next(model.glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert rerun() == ([], dense_key)  # the same bytes rebuilt (a new mtime): the same weights, nothing recomputes
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # the last byte of the last tensor: other weights
    weights.write_bytes(bytes(data))
    again, model_key = rerun()
    assert again == ["magnitude"] and model_key != dense_key  # other weights: everything recomputes

    calib.write_text(calib.read_text() + "the river city music .\n")
    assert rerun() == (["magnitude"], model_key)  # other calibration text: the run recomputes, the dense one stays

    assert rerun("--budget-kind", "total") == (["magnitude"], model_key)  # another setting: another run
