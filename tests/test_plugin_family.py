"""A family from a plugin package is one adapter, end to end: prune, uneven checkpoint, both loaders, method checks, GGUF export.

The plugin (``tests/family_plugin/pruneframe_olmo.py``) adds OLMo, a family pruneframe does not ship,
with one adapter and nothing else; it is installed here as a package would be (importable, with an
entry point in the ``pruneframe`` group).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType

import pytest
import torch
from transformers import AutoModelForCausalLM, OlmoForCausalLM

import pruneframe
from pruneframe.architectures import adapter_for, builtin_adapters
from pruneframe.checkpoint import MODELING_FILE, load_pruned, save
from pruneframe.export import ExportRefused, export_gguf, plan_export
from pruneframe.pipeline.host import DISABLE_AUTOLOAD_ENV, PLUGINS_ENV, PluginHost
from pruneframe.testing import check_method, tiny_families, tiny_model, tokens

PLUGIN_DIR = Path(__file__).with_name("family_plugin")


def _import_plugin(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    return importlib.import_module("pruneframe_olmo")


@pytest.fixture
def olmo_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The OLMo plugin package, installed: importable, and declared by an entry point of a distribution."""
    site = tmp_path / "site"
    dist = site / "pruneframe_olmo-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: pruneframe-olmo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[pruneframe]\nolmo = pruneframe_olmo\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv(PLUGINS_ENV, raising=False)
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
    return _import_plugin(monkeypatch)


def test_olmo_is_not_a_built_in_family() -> None:
    assert not any("OlmoForCausalLM" in adapter.architectures for adapter in builtin_adapters())
    assert "olmo" not in tiny_families(PluginHost.create(entry_points=False))


def test_a_plugin_family_prunes_unevenly_saves_and_reloads_through_both_loaders(olmo_plugin: ModuleType, tmp_path: Path) -> None:
    model = tiny_model("olmo")  # the plugin adapter's tiny model
    assert isinstance(model, OlmoForCausalLM)
    result = pruneframe.prune(model, method="magnitude", budget=0.6, calibration=tokens(4, 16), progress=False)
    assert isinstance(result.units.adapter, olmo_plugin.OlmoAdapter)
    widths = result.units.adapter.layer_widths(result.model)
    assert len({(w.ffn, w.kv_heads) for w in widths}) > 1, "the prune should leave uneven layers"

    folder = result.save(tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "pruneframe_olmo"
    assert config["pruned_family"] == "transformers.models.olmo.modeling_olmo.OlmoForCausalLM"
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_pruneframe.PrunedOlmoForCausalLM"
    shipped = (folder / "modeling_pruneframe.py").read_text()
    assert shipped.startswith(MODELING_FILE.read_text()) and "import OlmoForCausalLM as _Family" in shipped

    ids = tokens(2, 10, seed=4)
    loaded, _ = load_pruned(folder)
    remote = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    assert isinstance(loaded, OlmoForCausalLM) and isinstance(remote, OlmoForCausalLM)
    with torch.no_grad():
        want = result.model(ids).logits
        for name, got in (("load_pruned", loaded(ids).logits), ("trust_remote_code", remote(ids).logits)):
            diff = (got - want).abs().max().item()
            assert diff <= 1e-5, f"{name}: logits differ from the folded model's by {diff}"
    assert result.units.adapter.layer_widths(loaded) == widths


def test_a_plugin_family_gets_the_same_method_checks_as_the_built_in_ones(olmo_plugin: ModuleType, tmp_path: Path) -> None:
    assert "olmo" in tiny_families()
    check_method("magnitude", "olmo", tmp_path)


def test_gguf_export_asks_the_plugin_adapter_and_names_it_when_refused(olmo_plugin: ModuleType, tmp_path: Path) -> None:
    """The exporter takes a family's GGUF layout from its adapter; the OLMo plugin describes none, so export is refused naming the adapter."""
    model = tiny_model("olmo")
    assert isinstance(adapter_for(model), olmo_plugin.OlmoAdapter)
    with pytest.raises(ExportRefused, match=r"^OlmoForCausalLM: OlmoAdapter \(family 'olmo'\) describes no GGUF layout, so it is not exported yet$"):
        plan_export(model)
    out = tmp_path / "olmo.gguf"
    with pytest.raises(ExportRefused, match="OlmoAdapter"):
        export_gguf(model, out, tokenizer=object())  # refused before the tokenizer is read
    assert not out.exists()


def test_a_checkpoint_of_an_unregistered_family_is_refused_until_its_plugin_is_there(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    plugin = _import_plugin(monkeypatch)  # importable, but not installed as an entry point
    host = PluginHost.create(plugins=[plugin])
    model = tiny_model("olmo", host=host)
    result = pruneframe.prune(model, method="magnitude", budget=0.6, calibration=tokens(4, 16), progress=False, host=host)
    folder = save(tmp_path / "ckpt", result.model, adapter=result.units.adapter)
    with pytest.raises(NotImplementedError, match="no installed plugin handles OlmoForCausalLM; supported: .*LlamaForCausalLM"):
        load_pruned(folder)
    loaded, _ = load_pruned(folder, host=host)
    ids = tokens(2, 10, seed=6)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, result.model(ids).logits, atol=0, rtol=0)
