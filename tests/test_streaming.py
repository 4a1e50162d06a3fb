"""Layer-streamed calibration: the same statistics, scores and masks as the whole-model pass, one layer at a time."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from tiny import FAMILIES, on_ranks, tiny_model, tokens

import pruneframe
from pruneframe.architectures import adapter_for
from pruneframe.toolkit.collect import Moments, SecondMoments, collect_input_moments, collect_layer_inputs
from pruneframe.toolkit.gates import gated
from pruneframe.pipeline.host import PluginHost
from pruneframe.toolkit.streaming import capture_layer_calls, streamed_backward, streamed_forward

#: every input the methods watch: the MLP and attention inputs and the two output projections' inputs
TARGETS = {
    "mlp_in": lambda m: m.mlp_in,
    "attn_in": lambda m: m.attn_in,
    "down_in": lambda m: m.down_proj,
    "o_in": lambda m: m.o_proj,
}
RTOL = 1e-5


def _assert_same_moments(streamed: dict, whole: dict) -> None:
    for name in whole:
        for i, (s, w) in enumerate(zip(streamed[name], whole[name], strict=True)):
            assert s.count == w.count > 0, f"{name}[{i}]: {s.count} tokens streamed, {w.count} whole"
            for field in ("total", "total_sq") if isinstance(w, Moments) else ("total",):
                torch.testing.assert_close(getattr(s, field), getattr(w, field), rtol=RTOL, atol=1e-8, msg=lambda m, f=field: f"{name}[{i}].{f}: {m}")


@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_moments_equal_the_whole_model_pass(family: str) -> None:
    # 16-token windows: longer than gemma3's sliding window (4), so its sliding and full layers differ
    model, windows = tiny_model(family), tokens(5, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    whole = collect_input_moments(model, windows, TARGETS, batch_size=2, progress=False)
    streamed = collect_input_moments(model, windows, TARGETS, batch_size=2, progress=False, streaming=True, device="cpu")
    _assert_same_moments(streamed, whole)
    full_whole = collect_layer_inputs(model, windows, {"down_in": TARGETS["down_in"]}, SecondMoments.empty, progress=False)
    full_streamed = collect_layer_inputs(model, windows, {"down_in": TARGETS["down_in"]}, SecondMoments.empty, progress=False, streaming=True, device="cpu")
    _assert_same_moments(full_streamed, full_whole)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), f"streaming changed {name}"
    for layer in adapter_for(model).decoder_layers(model):
        assert type(layer).__name__.endswith("DecoderLayer"), "a recorder was left in place of a decoder layer"
        assert not layer._forward_pre_hooks and not layer._forward_hooks
    for mods in adapter_for(model).layer_slices(model):
        assert not mods.down_proj._forward_pre_hooks and not mods.o_proj._forward_pre_hooks


def test_gemma3_layers_get_their_own_masks_and_rotary_tables() -> None:
    """Layer 0's arguments are not reused: gemma3's full-attention layer 1 gets another mask and rotary table."""
    model = tiny_model("gemma3")
    layers = adapter_for(model).decoder_layers(model)
    with torch.inference_mode():
        hidden, calls = capture_layer_calls(model, layers, tokens(2, 16), torch.device("cpu"))
        want = model.get_input_embeddings()(tokens(2, 16))
    torch.testing.assert_close(hidden, want)  # the scaled embeddings are layer 0's input
    sliding, full = calls[0].kwargs, calls[1].kwargs
    assert calls[2].kwargs["position_embeddings"] is sliding["position_embeddings"]
    assert not torch.equal(sliding["position_embeddings"][0], full["position_embeddings"][0])
    assert sliding["attention_mask"] is not full["attention_mask"]


def test_layers_run_one_at_a_time_in_order_over_every_batch() -> None:
    model = tiny_model("llama-gqa")
    layers = adapter_for(model).decoder_layers(model)
    order: list[int] = []
    handles = [layer.register_forward_pre_hook(lambda m, a, i=i: order.append(i)) for i, layer in enumerate(layers)]
    try:
        with torch.inference_mode():
            streamed_forward(model, tokens(5, 8).split(2), "cpu")
    finally:
        for h in handles:
            h.remove()
    assert order == [i for i in range(len(layers)) for _ in range(3)]


def test_streaming_composes_with_gates() -> None:
    """Under gates (GRASPrune's compensation statistics) the streamed pass sees the gated model too."""
    model, windows = tiny_model("qwen2"), tokens(3, 12)
    units = PluginHost.create().discover_units(model)
    mask = torch.rand(len(units), generator=torch.Generator().manual_seed(0)) > 0.4
    with gated(model, units, mask):
        whole = collect_input_moments(model, windows, TARGETS, progress=False)
        streamed = collect_input_moments(model, windows, TARGETS, progress=False, streaming=True, device="cpu")
    _assert_same_moments(streamed, whole)
    dense = collect_input_moments(model, windows, {"down_in": TARGETS["down_in"]}, progress=False)
    assert not torch.allclose(dense["down_in"][1].total_sq, whole["down_in"][1].total_sq)  # the gates did act


@pytest.mark.parametrize("method", ["wanda-sp", "flap"])
@pytest.mark.parametrize("family", ["llama-gqa", "qwen2", "gemma3"])
def test_streamed_method_scores_equal_the_whole_model_path(method: str, family: str) -> None:
    config = {"num_windows": 4, "seq_len": 12, "batch_size": 3}
    calibration = tokens(6, 16, seed=3)
    whole = pruneframe.prune(tiny_model(family), method, 0.6, calibration=calibration, config=config, progress=False)
    streamed = pruneframe.prune(
        tiny_model(family), method, 0.6, calibration=calibration, config={**config, "offload": "cpu", "compute_device": "cpu"}, progress=False
    )
    torch.testing.assert_close(streamed.scores, whole.scores, rtol=RTOL, atol=1e-6)
    assert torch.equal(streamed.mask, whole.mask)
    if method == "flap":
        torch.testing.assert_close(streamed.recalibration.mlp_bias, whole.recalibration.mlp_bias, rtol=RTOL, atol=1e-6)
        torch.testing.assert_close(streamed.recalibration.attn_bias, whole.recalibration.attn_bias, rtol=RTOL, atol=1e-6)


def test_offload_settings_are_validated_and_named() -> None:
    host = PluginHost.create()
    assert host.method("wanda-sp", {"offload": "cpu"}).config.streaming
    assert not host.method("flap").config.streaming
    with pytest.raises(ValidationError, match="offload"):
        host.method("flap", {"offload": "disk"}).config  # noqa: B018
    with pytest.raises(ValidationError, match="compute_device='gpu0'"):
        host.method("wanda-sp", {"offload": "cpu", "compute_device": "gpu0"}).config  # noqa: B018


def _rank_moments(windows: torch.Tensor, streaming: bool) -> list[torch.Tensor]:
    moments = collect_input_moments(tiny_model(), windows, {"down_in": TARGETS["down_in"]}, batch_size=1, progress=False, streaming=streaming, device="cpu")[
        "down_in"
    ]
    return [m.total_sq for m in moments] + [torch.tensor(float(m.count)) for m in moments]


@pytest.mark.ranks
def test_streamed_collection_on_two_ranks_equals_one_process(tmp_path: Path) -> None:
    windows = tokens(5, 10)
    one = _rank_moments(windows, streaming=False)
    for got in on_ranks(2, tmp_path, _rank_moments, windows, True):
        for a, b in zip(got, one, strict=True):
            torch.testing.assert_close(a, b, rtol=RTOL, atol=1e-8)


def test_cli_prune_with_offload_saves_the_whole_model_paths_checkpoint(workspace: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pruneframe.checkpoint import load_pruned, read_report
    from pruneframe.cli import main

    monkeypatch.setenv("PRUNEFRAME_DATA_DIR", str(workspace["data_dir"]))
    folders = {}
    for name, config in (
        ("whole", '{"num_windows": 4, "seq_len": 16}'),
        ("streamed", '{"num_windows": 4, "seq_len": 16, "offload": "cpu", "compute_device": "cpu"}'),
    ):
        folders[name] = tmp_path / name
        assert (
            main(
                [
                    "prune",
                    "--model",
                    str(workspace["model"]),
                    "--method",
                    "wanda-sp",
                    "--budget",
                    "0.6",
                    "--method-config",
                    config,
                    "--calib",
                    str(workspace["calib"]),
                    "--out",
                    str(folders[name]),
                    "--quiet",
                ]
            )
            == 0
        )
    assert read_report(folders["streamed"]).config["offload"] == "cpu"
    whole, streamed = (load_pruned(folders[k])[0].state_dict() for k in ("whole", "streamed"))
    assert whole.keys() == streamed.keys()
    for key in whole:
        assert whole[key].shape == streamed[key].shape, f"{key}: streamed kept other units"
        torch.testing.assert_close(streamed[key], whole[key], rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_backward_gives_the_whole_model_loss_and_gradients(family: str) -> None:
    """Weight gradients of every decoder layer and the loss equal a whole-model backward pass."""
    from pruneframe.toolkit.losses import causal_lm_loss, hidden_state_loss

    model, ids = tiny_model(family), tokens(3, 16, seed=2)
    adapter = adapter_for(model)
    weights = [p for layer in adapter.decoder_layers(model) for p in layer.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    for w in weights:
        w.requires_grad_(True)
    whole_loss = causal_lm_loss(model, ids)
    (whole_loss * 0.5).backward()
    whole = [w.grad.clone() for w in weights]
    for w in weights:
        w.grad = None
    streamed_loss = streamed_backward(model, ids, hidden_state_loss(model, ids), "cpu", scale=0.5)
    torch.testing.assert_close(streamed_loss, whole_loss.detach(), rtol=RTOL, atol=1e-7)
    assert not streamed_loss.requires_grad
    for i, (w, want) in enumerate(zip(weights, whole, strict=True)):
        assert w.grad is not None, f"parameter {i} got no gradient"
        torch.testing.assert_close(w.grad, want, rtol=RTOL, atol=1e-7, msg=lambda m, i=i: f"parameter {i}: {m}")


def test_streamed_forward_with_final_norm_gives_the_decoders_output() -> None:
    model, ids = tiny_model("gemma3"), tokens(4, 16)
    with torch.inference_mode():
        want = model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
        got = streamed_forward(model, ids.split(3), "cpu", final_norm=True)
    torch.testing.assert_close(torch.cat(got), want, rtol=RTOL, atol=1e-6)


@pytest.mark.parametrize("importance", ["vector", "element1", "element2"])
@pytest.mark.parametrize("family", ["llama-gqa", "qwen2", "gemma3", "phi3"])
def test_streamed_llm_pruner_scores_equal_the_whole_model_path(importance: str, family: str) -> None:
    config = {"num_samples": 4, "seq_len": 12, "batch_size": 3, "importance": importance}
    calibration = tokens(6, 16, seed=3)
    whole = pruneframe.prune(tiny_model(family), "llm-pruner", 0.6, calibration=calibration, config=config, progress=False)
    streamed = pruneframe.prune(
        tiny_model(family), "llm-pruner", 0.6, calibration=calibration, config={**config, "offload": "cpu", "compute_device": "cpu"}, progress=False
    )
    torch.testing.assert_close(streamed.scores, whole.scores, rtol=RTOL, atol=1e-7)
    assert torch.equal(streamed.mask, whole.mask)
    assert streamed.report.method_stats["calibration_loss"] == pytest.approx(whole.report.method_stats["calibration_loss"], rel=RTOL)


GRASPRUNE_FAST = {"num_sequences": 4, "seq_len": 12, "epochs": 2, "batch_size": 2, "rescale_sequences": 2, "lr": 0.05}


@pytest.mark.parametrize(
    ("family", "extra"),
    [
        ("llama-gqa", {}),
        ("qwen2", {"loss": "distill", "rescale_loss": "distill"}),
        ("gemma3", {"bias_compensation": True, "least_squares": True, "rescale_outputs": True}),
        ("phi3", {}),
    ],
    ids=["lm", "distill", "compensated", "fused"],
)
def test_streamed_grasprune_trains_the_whole_model_paths_gates_and_scales(family: str, extra: dict) -> None:
    config = {**GRASPRUNE_FAST, **extra}
    calibration = tokens(8, 16, seed=4)
    whole = pruneframe.prune(tiny_model(family), "grasprune", 0.6, calibration=calibration, config=config, progress=False)
    streamed = pruneframe.prune(
        tiny_model(family), "grasprune", 0.6, calibration=calibration, config={**config, "offload": "cpu", "compute_device": "cpu"}, progress=False
    )
    # several optimiser steps: allow float reassociation to compound slightly
    torch.testing.assert_close(streamed.scores, whole.scores, rtol=1e-4, atol=1e-6)
    assert torch.equal(streamed.mask, whole.mask)
    torch.testing.assert_close(streamed.recalibration.scales, whole.recalibration.scales, rtol=1e-4, atol=1e-6)
    for stage in ("gates", "rescale"):
        got, want = streamed.report.method_stats[stage], whole.report.method_stats[stage]
        assert got["steps"] == want["steps"] > 0
        assert got["last_loss"] == pytest.approx(want["last_loss"], rel=1e-4)
    assert streamed.report.method_stats["gates"]["kept_cost_per_step"] == whole.report.method_stats["gates"]["kept_cost_per_step"]


def test_streamed_backward_visits_layers_forward_then_in_reverse() -> None:
    model, ids = tiny_model("llama-gqa"), tokens(2, 8)
    layers = adapter_for(model).decoder_layers(model)
    order: list[int] = []
    handles = [layer.register_forward_pre_hook(lambda m, a, i=i: order.append(i)) for i, layer in enumerate(layers)]
    try:
        from pruneframe.toolkit.losses import hidden_state_loss

        for p in model.parameters():
            p.requires_grad_(False)
        streamed_backward(model, ids, hidden_state_loss(model, ids), "cpu")
    finally:
        for h in handles:
            h.remove()
    n = len(layers)
    assert order == list(range(n)) + list(reversed(range(n)))


def _streamed_grasprune(config: dict) -> list[torch.Tensor]:
    result = pruneframe.prune(tiny_model(), "grasprune", 0.6, calibration=tokens(8, 16, seed=4), config=config, progress=False)
    return [result.scores, result.recalibration.scales, result.mask.float()]


@pytest.mark.ranks
def test_streamed_grasprune_on_two_ranks_equals_one_process(tmp_path: Path) -> None:
    config = {**GRASPRUNE_FAST, "offload": "cpu", "compute_device": "cpu"}
    one = _streamed_grasprune(config)
    for got in on_ranks(2, tmp_path, _streamed_grasprune, config):
        for a, b in zip(got, one, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_perplexity_equals_the_whole_model_pass(family: str) -> None:
    from pruneframe.evaluation.perplexity import perplexity

    model, windows = tiny_model(family), tokens(5, 16, seed=6)
    whole = perplexity(model, windows, batch_size=2, progress=False)
    streamed = perplexity(model, windows, batch_size=2, progress=False, stream_device="cpu")
    assert streamed.tokens == whole.tokens and streamed.windows == whole.windows
    torch.testing.assert_close(torch.tensor(streamed.window_nll), torch.tensor(whole.window_nll), rtol=RTOL, atol=1e-6)
    for layer in adapter_for(model).decoder_layers(model):
        assert type(layer).__name__.endswith("DecoderLayer")


def test_cli_eval_scores_perplexity_and_zero_shot_layer_by_layer_with_the_same_result(
    workspace: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from pruneframe.cli import main

    monkeypatch.setenv("PRUNEFRAME_DATA_DIR", str(workspace["data_dir"]))
    records = {}
    # streamed, speed is left out without --no-speed: the whole model would have to be on one device
    for name, extra in (("whole", ["--no-speed"]), ("streamed", ["--eval-compute-device", "cpu"])):
        out = tmp_path / f"{name}.json"
        assert (
            main(
                [
                    "eval",
                    "--model",
                    str(workspace["model"]),
                    "--eval-data",
                    str(workspace["calib"]),
                    "--eval-windows",
                    "3",
                    "--seq-len",
                    "16",
                    "--zeroshot",
                    str(workspace["task"]),
                    "--out",
                    str(out),
                    "--quiet",
                    *extra,
                ]
            )
            == 0
        )
        records[name] = json.loads(out.read_text())
    (whole,), (streamed,) = (list(r["eval"]["perplexity"]["sources"].values()) for r in records.values())
    assert streamed["ppl"] == pytest.approx(whole["ppl"], rel=RTOL)
    tasks = [r["eval"]["zeroshot"]["tasks"] for r in records.values()]
    assert tasks[0] and tasks[1] == tasks[0]  # accuracies and every item's answer
    for evaluator in ("perplexity", "zeroshot"):
        config = records["streamed"]["protocol"]["evaluation"][evaluator]["config"]
        assert config["offload"] == "cpu" and config["compute_device"] == "cpu", evaluator
    assert set(records["streamed"]["eval"]) == set(records["whole"]["eval"]) == {"perplexity", "size", "zeroshot"}


def test_eval_compute_device_leaves_speed_out_unless_asked_for() -> None:
    from pruneframe.cli.common import _evaluation_flags

    def flags(**kw):
        return _evaluation_flags(argparse.Namespace(**{"speed": None, "eval_compute_device": None, **kw}))

    assert "speed" not in flags()
    assert flags(eval_compute_device="cuda")["speed"] is None
    assert flags(eval_compute_device="cuda", speed=True)["speed"] == {}
    assert flags(speed=False)["speed"] is None


@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_logits_equal_the_whole_model_forward(family: str) -> None:
    from pruneframe.toolkit.streaming import streamed_logits

    model, batches = tiny_model(family), tokens(5, 16, seed=7).split(2)
    with torch.no_grad():
        streamed = list(streamed_logits(model, batches, "cpu"))
        whole = [model(input_ids=b, use_cache=False).logits for b in batches]
    assert len(streamed) == len(whole) == 3
    for s, w in zip(streamed, whole, strict=True):
        torch.testing.assert_close(s, w, rtol=RTOL, atol=1e-5)


def test_streamed_logits_refuse_a_soft_capped_head_before_any_pass() -> None:
    from pruneframe.evaluation.streamed_lm import StreamedHFLM
    from pruneframe.toolkit.streaming import streamed_logits

    model = tiny_model("gemma3", final_logit_softcapping=30.0)
    with pytest.raises(ValueError, match="Gemma3ForCausalLM's logits are more than its output layer's"):
        streamed_logits(model, [tokens(1, 8)], "cpu")
    with pytest.raises(ValueError, match="soft-capping"):
        StreamedHFLM(model, None, 1, "cpu")


def test_streamed_zero_shot_gives_the_same_accuracy_item_by_item(workspace: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pruneframe.evaluation.zeroshot import zeroshot

    model = AutoModelForCausalLM.from_pretrained(workspace["model"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(workspace["model"])
    task = [str(workspace["task"])]
    whole = zeroshot(model, tokenizer, task, batch_size=3)["tasks"]
    streamed = zeroshot(model, tokenizer, task, batch_size=3, stream_device="cpu")["tasks"]
    (name,) = whole
    assert whole[name]["docs"] == streamed[name]["docs"] > 0
    for metric in ("acc", "acc_norm", "items"):
        assert streamed[name][metric] == whole[name][metric], metric


@pytest.mark.parametrize(("per_sweep", "sweeps"), [(64, 1), (2, 2), (1, 3)])
def test_streamed_lm_scores_continuations_like_lm_eval_s_own_model(
    workspace: dict[str, Path], monkeypatch: pytest.MonkeyPatch, per_sweep: int, sweeps: int
) -> None:
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import pruneframe.toolkit.streaming
    from pruneframe.evaluation.streamed_lm import StreamedHFLM

    passes = []
    forward = pruneframe.toolkit.streaming.streamed_forward
    monkeypatch.setattr(pruneframe.toolkit.streaming, "streamed_forward", lambda *a, **k: passes.append(1) or forward(*a, **k))

    model = AutoModelForCausalLM.from_pretrained(workspace["model"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(workspace["model"])
    pairs = [("the quick brown", " fox"), ("over the lazy", " dog jumps"), ("a", " b c d e f")]

    class Request:  # what HFLM.loglikelihood reads of an lm-eval Instance
        def __init__(self, pair: tuple[str, str]) -> None:
            self.args = pair

    whole = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1).loglikelihood([Request(p) for p in pairs])
    lm = StreamedHFLM(model, tokenizer, 1, "cpu", batches_per_sweep=per_sweep)
    streamed = lm.loglikelihood([Request(p) for p in pairs])
    assert len(passes) == lm.sweeps == sweeps  # one sweep of the decoder serves up to per_sweep batches
    assert [greedy for _, greedy in streamed] == [greedy for _, greedy in whole]
    torch.testing.assert_close(torch.tensor([lp for lp, _ in streamed]), torch.tensor([lp for lp, _ in whole]), rtol=RTOL, atol=1e-5)
    assert all(lp < 0 for lp, _ in whole)


def test_compare_with_every_stage_streamed_gives_the_same_report(workspace: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A calibrated method streamed, perplexity and zero-shot streamed: the same numbers as the whole-model job."""
    import json

    from test_compare import compare_settings, write_config

    from pruneframe.cli import main

    monkeypatch.setenv("PRUNEFRAME_DATA_DIR", str(workspace["data_dir"]))
    stream = {"offload": "cpu", "compute_device": "cpu"}
    results = {}
    for name, streamed in (("whole", False), ("streamed", True)):
        settings = compare_settings(workspace, tmp_path / name, zeroshot=True)
        settings["methods"] = {"wanda-sp": {"num_windows": 4, "seq_len": 32, **(stream if streamed else {})}}
        settings["budgets"] = [0.5]
        settings["evaluation"]["speed"] = None
        if streamed:
            settings["evaluation"]["perplexity"].update(stream)
            settings["evaluation"]["zeroshot"].update(stream)
        assert main(["compare", "--config", str(write_config(tmp_path / f"{name}.json", settings)), "--quiet"]) == 0
        results[name] = json.loads((tmp_path / name / "results.json").read_text())
    whole, streamed = results["whole"], results["streamed"]
    for key in ("dense", "runs"):
        a, b = (r if key == "runs" else [r] for r in (whole[key], streamed[key]))
        assert len(a) == len(b) > 0
        for x, y in zip(a, b, strict=True):
            assert y["eval"]["zeroshot"]["tasks"] == x["eval"]["zeroshot"]["tasks"]
            for source, r in x["eval"]["perplexity"]["sources"].items():
                assert y["eval"]["perplexity"]["sources"][source]["ppl"] == pytest.approx(r["ppl"], rel=RTOL)
    (a,), (b,) = whole["runs"], streamed["runs"]
    assert b["prune"]["units"] == a["prune"]["units"] and b["prune"]["kept_params"] == a["prune"]["kept_params"]
    assert b["prune"]["config"]["offload"] == "cpu" and a["prune"]["config"]["offload"] == "none"


def test_streamed_lm_refuses_generation(workspace: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pruneframe.evaluation.streamed_lm import StreamedHFLM

    model = AutoModelForCausalLM.from_pretrained(workspace["model"]).eval()
    lm = StreamedHFLM(model, AutoTokenizer.from_pretrained(workspace["model"]), 1, "cpu")
    with pytest.raises(ValueError, match="generative tasks cannot be scored layer by layer"):
        lm._model_generate(torch.zeros(1, 3, dtype=torch.long), max_length=8, stop=[])
