"""Tampered checkpoints fail to load with a message naming the layer and tensor, before any weight is read."""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM
from transformers.utils import logging as hf_logging

from pruneframe.architectures import discover
from pruneframe.checkpoint import CheckpointError, load_pruned, save
from pruneframe.checkpoint.modeling_pruneframe import pruned_classes
from pruneframe.cli import main
from pruneframe.pipeline.fold import fold
from pruneframe.pipeline.units import UnitKind
from workspace_files import make_tokenizer
from tiny import tiny_model, tokens


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid pruned Llama checkpoint with a tokenizer (layer 1 keeps a different FFN width than layer 0)."""
    model = tiny_model("llama-gqa")
    units = discover(model)
    mask = torch.ones(len(units), dtype=torch.bool)
    mask[units.slice(1, UnitKind.FFN)][:7] = False
    mask[units.slice(0, UnitKind.FFN)][:3] = False
    mask[units.slice(2, UnitKind.KV)][:1] = False
    folded = fold(model, units, mask)
    return save(tmp_path_factory.mktemp("good") / "ckpt", folded, report={"method": "test"}, tokenizer=make_tokenizer())


@pytest.fixture
def ckpt(good: Path, tmp_path: Path) -> Path:
    """A private copy of the valid checkpoint, to tamper with."""
    return Path(shutil.copytree(good, tmp_path / "ckpt"))


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def eval_exits_2(folder: Path, capfd) -> str:
    """``pruneframe eval --model folder`` exits with 2 and one message; returns stderr."""
    assert (
        main(
            ["eval", "--model", str(folder), "--zeroshot", "none", "--no-speed", "--eval-data", "embedded", "--eval-windows", "1", "--seq-len", "16", "--quiet"]
        )
        == 2
    )
    err = capfd.readouterr().err
    assert "pruneframe eval: error:" in err and "Traceback" not in err
    return err


def test_a_valid_checkpoint_loads_without_a_single_warning(good: Path, capfd, caplog) -> None:
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()  # another test's --quiet may have silenced transformers in this process
    hf_logging.disable_progress_bar()  # the weight-loading bar is progress, not a warning
    try:
        with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
            warnings.simplefilter("always")
            model, tokenizer = load_pruned(good)
    finally:
        hf_logging.set_verbosity(previous)
        hf_logging.enable_progress_bar()
    err = capfd.readouterr().err
    assert err == "" and [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert [str(w.message) for w in caught] == []
    assert tokenizer is not None and model.model.layers[1].mlp.down_proj.in_features == 40 - 7


def test_config_width_that_disagrees_with_the_tensors(ckpt: Path, capfd) -> None:
    edit_json(ckpt / "config.json", lambda c: c["pruned_layers"][1].update(intermediate_size=40))  # 7 more than stored
    with pytest.raises(
        CheckpointError,
        match=r"layer 1: model\.layers\.1\.mlp\.gate_proj\.weight has shape \(33, 48\) "
        r"in model\.safetensors, config\.json implies \(40, 48\)",
    ):
        load_pruned(ckpt)
    assert "layer 1: model.layers.1.mlp.down_proj.weight" in eval_exits_2(ckpt, capfd)


def test_per_layer_config_that_disagrees_with_the_widths(ckpt: Path, capfd) -> None:
    edit_json(ckpt / "config.json", lambda c: c["per_layer_config"]["1"].update(intermediate_size=30))
    with pytest.raises(
        CheckpointError,
        match=r"per_layer_config disagrees with its pruned_layers: layer 1: "
        r"per_layer_config gives intermediate_size 30, pruned_layers 33",
    ):
        load_pruned(ckpt)
    assert "layer 1: per_layer_config gives intermediate_size 30" in eval_exits_2(ckpt, capfd)


def test_nothing_is_loaded_before_the_checks_pass(ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("weights were read before the checkpoint was checked")

    monkeypatch.setattr(pruned_classes(LlamaForCausalLM)[1], "from_pretrained", refuse)
    edit_json(ckpt / "config.json", lambda c: c["pruned_layers"][0].update(num_key_value_heads=1))
    with pytest.raises(CheckpointError, match=r"layer 0: model\.layers\.0\.self_attn\.k_proj\.weight"):
        load_pruned(ckpt)


@pytest.mark.parametrize("keep", [0.999, 0.5, 0.0])
def test_truncated_weights(ckpt: Path, keep: float, capfd) -> None:
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file .*truncated or corrupt"):
        load_pruned(ckpt)
    assert "model.safetensors: not a readable safetensors file" in eval_exits_2(ckpt, capfd)


def test_missing_weights(ckpt: Path, capfd) -> None:
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        load_pruned(ckpt)
    assert "model.safetensors or model.safetensors.index.json is missing" in eval_exits_2(ckpt, capfd)


def test_index_naming_a_missing_shard(ckpt: Path) -> None:
    keys = load_file(ckpt / "model.safetensors").keys()
    (ckpt / "model.safetensors").unlink()
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: "model-00001-of-00002.safetensors" for k in keys}}))
    with pytest.raises(CheckpointError, match="'model-00001-of-00002.safetensors' named by model.safetensors.index.json is missing"):
        load_pruned(ckpt)


def test_extra_tensor(ckpt: Path, capfd) -> None:
    tensors = load_file(ckpt / "model.safetensors")
    tensors["model.layers.2.mlp.extra_proj.weight"] = torch.zeros(3, 3)
    save_file(tensors, ckpt / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        CheckpointError,
        match=r"layer 2: model\.layers\.2\.mlp\.extra_proj\.weight in model\.safetensors "
        "is not part of the model config.json describes",
    ):
        load_pruned(ckpt)
    assert "extra_proj" in eval_exits_2(ckpt, capfd)


def test_missing_tensor(ckpt: Path, capfd) -> None:
    tensors = load_file(ckpt / "model.safetensors")
    del tensors["model.layers.2.self_attn.k_proj.weight"]
    save_file(tensors, ckpt / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        CheckpointError,
        match=r"layer 2: model\.layers\.2\.self_attn\.k_proj\.weight \(config\.json implies "
        r"shape \(8, 48\)\) is missing from the weights",
    ):
        load_pruned(ckpt)
    assert "k_proj" in eval_exits_2(ckpt, capfd)


def test_report_widths_that_disagree_with_the_weights(ckpt: Path, capfd) -> None:
    edit_json(ckpt / "pruning.json", lambda r: r["layers"][1].update(intermediate_size=40))
    with pytest.raises(
        CheckpointError,
        match=r"pruning\.json disagrees with the weights: layer 1: model\.layers\.1\.mlp\.gate_proj"
        r"\.weight has shape \(33, 48\) in model\.safetensors, pruning\.json 'layers' implies \(40, 48\)",
    ):
        load_pruned(ckpt)
    assert "pruning.json disagrees with the weights" in eval_exits_2(ckpt, capfd)


def test_report_layer_count_and_fields_that_do_not_change_shapes(ckpt: Path) -> None:
    original = json.loads((ckpt / "pruning.json").read_text())
    edit_json(ckpt / "pruning.json", lambda r: r["layers"].pop())
    with pytest.raises(CheckpointError, match="'layers' has 2 entries, config.json's pruned_layers 3"):
        load_pruned(ckpt)
    (ckpt / "pruning.json").write_text(json.dumps(original))
    edit_json(ckpt / "pruning.json", lambda r: r["layers"][2].update(note="hand-edited"))
    with pytest.raises(CheckpointError, match=r"layer 2: pruning\.json records .*'note': 'hand-edited'.*, config\.json"):
        load_pruned(ckpt)


def test_report_parameter_count_that_disagrees_with_the_weights(ckpt: Path) -> None:
    edit_json(ckpt / "pruning.json", lambda r: r.update(parameters=r["parameters"] + 1))
    with pytest.raises(CheckpointError, match=r"pruning\.json records [\d,]+ parameters, the weights hold [\d,]+"):
        load_pruned(ckpt)
    (ckpt / "pruning.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match="pruning.json: not valid JSON"):
        load_pruned(ckpt)


@pytest.mark.parametrize("family", ["llama-mha-bias", "mistral", "qwen2", "qwen3"])
def test_every_family_round_trips_through_the_checks(tmp_path: Path, family: str) -> None:
    model = tiny_model(family)
    units = discover(model)
    mask = torch.rand(len(units), generator=torch.Generator().manual_seed(1)) > 0.3
    mask |= units.kind == UnitKind.KV  # every layer keeps at least one KV group
    folded = fold(model, units, mask)
    loaded, _ = load_pruned(save(tmp_path / "ckpt", folded))
    ids = tokens()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, folded(ids).logits, atol=0, rtol=0)
