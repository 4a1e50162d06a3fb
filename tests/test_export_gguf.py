"""GGUF export: every exportable family, uniform and uneven widths, padding cases and refusals, checked in llama.cpp.

The llama.cpp checks need the optional ``xllamacpp`` package and are skipped without it. The tiny models
get a small byte-level BPE tokenizer trained here, and an output layer scaled up so that their next-token
distributions are peaked (random tiny models otherwise predict nearly uniformly, and top-1 agreement
would measure ties). The real SmolLM2 check is slow (PRUNEFRAME_SLOW=1).
"""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import pytest
import torch

from pruneframe.architectures import discover
from pruneframe.export import ExportRefused, export_gguf, is_pruneframe_gguf, plan_export
from pruneframe.export.llamacpp import available
from pruneframe.export.speed import paired_speedup
from pruneframe.export.tensors import rope_pairs
from pruneframe.export.verify import PROMPTS, verify_gguf
from pruneframe.pipeline.fold import fold
from pruneframe.pipeline.methods import Recalibration
from pruneframe.testing import tiny_model
from pruneframe.pipeline.units import UnitKind

needs_llamacpp = pytest.mark.skipif(not available(), reason="needs xllamacpp (pip install 'pruneframe[deploy]')")


@pytest.fixture(scope="module")
def tokenizer():
    """A byte-level BPE tokenizer (GPT-2 split rule, like SmolLM2's) with a few hundred tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        show_progress=False,
    )
    tok.train_from_iterator(list(PROMPTS) * 4 + ["The quick brown fox jumps over the lazy dog."] * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|endoftext|>")
    fast.chat_template = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"
    return fast


def _model(family: str, vocab: int, **overrides):
    model = tiny_model(family, vocab_size=vocab, **overrides)
    with torch.no_grad():  # peaked next-token distributions (see the module docstring)
        head = model.model.embed_tokens if model.config.tie_word_embeddings else model.lm_head
        head.weight.mul_(20.0)
    return model


def _uneven_mask(units, drop_group_in: int | None = 1, ffn_keep: dict[int, int] | None = None) -> torch.Tensor:
    """Keep different numbers of FFN channels per layer; drop a whole KV group in layer ``drop_group_in``."""
    mask = torch.ones(len(units), dtype=torch.bool)
    for layer in range(units.num_layers):
        ffn = units.slice(layer, UnitKind.FFN)
        keep = (ffn_keep or {}).get(layer, max(1, (ffn.stop - ffn.start) * (layer + 1) // (units.num_layers + 1)))
        mask[ffn.start + keep : ffn.stop] = False
    if drop_group_in is not None:
        kv = units.slice(drop_group_in, UnitKind.KV)
        mask[kv.stop - 1] = False
    return mask


def _uniform_mask(units) -> torch.Tensor:
    mask = torch.ones(len(units), dtype=torch.bool)
    for layer in range(units.num_layers):
        ffn = units.slice(layer, UnitKind.FFN)
        mask[ffn.start + (ffn.stop - ffn.start) // 2 : ffn.stop] = False
        kv = units.slice(layer, UnitKind.KV)
        if kv.stop - kv.start > 1:
            mask[kv.stop - 1] = False
    return mask


def _export_and_verify(model, tokenizer, path: Path, dtype: str = "f32", pad_ffn_to: int | None = 1):
    """Export (by default with the widths as pruned, which the layout tests read) and check the file in llama.cpp."""
    result = export_gguf(model, path, dtype=dtype, tokenizer=tokenizer, pad_ffn_to=pad_ffn_to)
    check = verify_gguf(result.path, model, tokenizer, dtype, positions=256)
    assert check.positions >= 256, check.summary()
    assert check.passed(), f"{result.plan.arch}: {check.summary()}: {check.failures()}"
    return result, check


def test_paired_speedup_reads_ratios_within_repeats() -> None:
    """Each repeat's ratio is taken between the two files timed together: a slow repeat slows both and cancels."""
    dense = [100.0, 50.0, 100.0]  # the second repeat ran in a slow period of the machine
    pruned = [150.0, 80.0, 140.0]
    assert paired_speedup(dense, pruned) == {"median": 1.5, "low": 1.4, "high": 1.6, "repeats": 3}
    assert paired_speedup([10.0, 20.0], [30.0, 20.0])["median"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="as many repeats"):
        paired_speedup([1.0], [1.0, 2.0])


def test_rope_pairs_moves_halves_to_adjacent_pairs() -> None:
    """Row i of a head's first half goes to row 2i, row i of its second half to 2i + 1; heads stay apart."""
    rows = torch.arange(16.0).reshape(16, 1)  # two heads of 8
    got = rope_pairs(rows, 8).flatten().tolist()
    assert got == [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]


@needs_llamacpp
@pytest.mark.parametrize(
    ("family", "arch"), [("llama-gqa", "llama"), ("llama-mha-bias", "llama"), ("mistral", "llama"), ("qwen2", "qwen2"), ("qwen3", "qwen3")]
)
def test_dense_family_matches_llamacpp(family: str, arch: str, tokenizer, tmp_path: Path) -> None:
    """Each family's dense model exports as its own llama.cpp architecture and agrees with transformers in f32."""
    model = _model(family, len(tokenizer))
    result, check = _export_and_verify(model, tokenizer, tmp_path / f"{family}.gguf")
    assert result.plan.arch == arch
    assert check.top1_agreement >= 0.99 and check.tokenizer_ok


@needs_llamacpp
@pytest.mark.parametrize("family", ["llama-gqa", "qwen2", "qwen3"])
def test_uniform_pruned_keeps_own_architecture(family: str, tokenizer, tmp_path: Path) -> None:
    """Uniform widths (half the FFN, one KV group fewer per layer) stay in the family's architecture and agree."""
    model = _model(family, len(tokenizer))
    units = discover(model)
    pruned = fold(model, units, _uniform_mask(units))
    result, _ = _export_and_verify(pruned, tokenizer, tmp_path / f"{family}-uniform.gguf")
    assert result.plan.arch != "deci"
    if family == "qwen2":  # llama.cpp's qwen2 needs a square query projection: zero groups restore it
        assert all(layer.kv_pad == 1 for layer in result.plan.layers)


@needs_llamacpp
@pytest.mark.parametrize("family", ["llama-gqa", "mistral"])
def test_uneven_widths_export_as_deci(family: str, tokenizer, tmp_path: Path) -> None:
    """Per-layer FFN widths and a whole KV group removed in one layer: ``deci`` with per-layer arrays, agreeing."""
    model = _model(family, len(tokenizer))
    units = discover(model)
    pruned = fold(model, units, _uneven_mask(units))
    result, _ = _export_and_verify(pruned, tokenizer, tmp_path / f"{family}-uneven.gguf")
    assert result.plan.arch == "deci"
    fields = gguf.GGUFReader(str(result.path)).fields
    ffn = fields["deci.feed_forward_length"].contents()
    kv = fields["deci.attention.head_count_kv"].contents()
    assert len(set(ffn)) == 3 and kv[1] == kv[0] - 1, (ffn, kv)
    assert fields["general.alignment"].contents() == 4096


@needs_llamacpp
@pytest.mark.parametrize("uniform", [False, True])
def test_pad_ffn_to_aligns_every_width_exactly(uniform: bool, tokenizer, tmp_path: Path) -> None:
    """``pad_ffn_to``: every FFN width written is a multiple of it, the zeros are exact, and the notes say so."""
    model = _model("llama-gqa", len(tokenizer))
    units = discover(model)
    pruned = fold(model, units, _uniform_mask(units) if uniform else _uneven_mask(units))
    own = [w.ffn for w in plan_export(pruned, "f32", pad_ffn_to=1).layers]
    assert any(f % 16 for f in own), own  # the test needs widths that are not aligned already
    result = export_gguf(pruned, tmp_path / "aligned.gguf", dtype="f32", tokenizer=tokenizer, pad_ffn_to=16)
    written = [lp.ffn for lp in result.plan.layers]
    assert all(f % 16 == 0 for f in written) and [lp.ffn - lp.ffn_pad for lp in result.plan.layers] == own
    assert any("multiples of 16" in note for note in result.plan.notes)
    check = verify_gguf(result.path, pruned, tokenizer, "f32", positions=256)
    assert check.passed(), check.summary()
    with pytest.raises(ExportRefused, match="pad_ffn_to 0"):
        plan_export(pruned, "f32", pad_ffn_to=0)


@needs_llamacpp
def test_layer_without_ffn_gets_a_zero_channel(tokenizer, tmp_path: Path) -> None:
    """A layer whose FFN is pruned away entirely is written with one zero channel (deci drops attention otherwise)."""
    model = _model("llama-gqa", len(tokenizer))
    units = discover(model)
    pruned = fold(model, units, _uneven_mask(units, drop_group_in=None, ffn_keep={1: 0}))
    result, _ = _export_and_verify(pruned, tokenizer, tmp_path / "no-ffn.gguf")
    assert result.plan.layers[1].ffn == 1 and result.plan.layers[1].ffn_pad == 1
    assert plan_export(pruned, "f32").layers[1].ffn == 32  # the default multiple


@needs_llamacpp
def test_default_export_pads_ffn_widths_to_32_exactly(tokenizer, tmp_path: Path) -> None:
    """Without ``pad_ffn_to`` every FFN width is written as a multiple of 32 (llama.cpp's fast kernels) and still agrees."""
    model = _model("llama-gqa", len(tokenizer), intermediate_size=80)
    units = discover(model)
    pruned = fold(model, units, _uneven_mask(units))
    own = [w.ffn for w in plan_export(pruned, "f16", pad_ffn_to=1).layers]
    assert any(f % 32 for f in own), own
    result, _ = _export_and_verify(pruned, tokenizer, tmp_path / "default.gguf", dtype="f16", pad_ffn_to=None)
    assert all(lp.ffn % 32 == 0 for lp in result.plan.layers) and [lp.ffn - lp.ffn_pad for lp in result.plan.layers] == own


@needs_llamacpp
@pytest.mark.parametrize("uneven", [False, True])
def test_flap_style_output_biases_are_exact(uneven: bool, tokenizer, tmp_path: Path) -> None:
    """FLAP's bias compensation (new o_proj and down_proj biases) exports and agrees, uniform (llama) and uneven (deci)."""
    model = _model("llama-gqa", len(tokenizer))
    units = discover(model)
    hidden, layers = model.config.hidden_size, units.num_layers
    g = torch.Generator().manual_seed(3)
    rec = Recalibration(mlp_bias=0.1 * torch.randn(layers, hidden, generator=g), attn_bias=0.1 * torch.randn(layers, hidden, generator=g))
    pruned = fold(model, units, _uneven_mask(units) if uneven else _uniform_mask(units), rec)
    result, _ = _export_and_verify(pruned, tokenizer, tmp_path / "flap.gguf")
    assert result.plan.arch == ("deci" if uneven else "llama")


@needs_llamacpp
@pytest.mark.parametrize("dtype", ["f16", "bf16", "q8_0", "q4_0"])
def test_reduced_precision_within_tolerance(dtype: str, tokenizer, tmp_path: Path) -> None:
    """f16, bf16, q8_0 and q4_0 files of an uneven model agree within their documented tolerances."""
    model = _model("llama-gqa", len(tokenizer), hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=96)
    units = discover(model)
    pruned = fold(model, units, _uneven_mask(units))
    result, _ = _export_and_verify(pruned, tokenizer, tmp_path / f"{dtype}.gguf", dtype=dtype)
    if dtype in ("q8_0", "q4_0"):
        assert all(layer.ffn % 32 == 0 for layer in result.plan.layers)


def test_uneven_qwen_is_refused_naming_why(tokenizer, tmp_path: Path) -> None:
    """Uneven Qwen2 widths need q/k/v biases that deci lacks: refused, and nothing is written."""
    model = _model("qwen2", len(tokenizer))
    units = discover(model)
    pruned = fold(model, units, _uneven_mask(units))
    with pytest.raises(ExportRefused, match="deci.*q/k/v biases"):
        export_gguf(pruned, tmp_path / "q.gguf", tokenizer=tokenizer)
    assert not any(tmp_path.iterdir())


def test_families_without_export_are_refused() -> None:
    """Families the exporter does not cover yet are refused by name."""
    with pytest.raises(ExportRefused, match="not exported yet"):
        plan_export(tiny_model("phi3"))


@pytest.fixture(scope="module")
def spm_tokenizer():
    """A SentencePiece-style BPE tokenizer (byte fallback, spaces as ``▁``: Gemma's kind), merges made from every split."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    space = "\u2581"
    trained = Tokenizer(models.BPE())
    trained.normalizer = normalizers.Replace(" ", space)
    trained.train_from_iterator(list(PROMPTS) * 4, trainers.BpeTrainer(vocab_size=240, show_progress=False))
    learned = [t for t, _ in sorted(trained.get_vocab().items(), key=lambda kv: kv[1])]
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + [f"<0x{b:02X}>" for b in range(256)] + learned)}
    # as SentencePiece's scores order them: every split of a token into two pieces, in the token's order
    merges = [(tok[:cut], tok[cut:]) for tok in learned for cut in range(1, len(tok)) if tok[:cut] in vocab and tok[cut:] in vocab]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", space)
    tok.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    tok.decoder = decoders.Sequence([decoders.Replace(space, " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    tok.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<pad>")


def _gemma3(vocab: int, layer_types: list[str]):
    return _model("gemma3", vocab, num_hidden_layers=len(layer_types), layer_types=layer_types)


def test_spm_scores_follow_merge_ranks() -> None:
    """A token scores minus the rank of the first merge that makes it; tokens no merge makes score below all."""
    from pruneframe.export.vocab import spm_scores

    vocab = {"a": 0, "b": 1, "ab": 2, "abb": 3, "zz": 4}
    assert spm_scores(vocab, [("a", "b"), ("ab", "b"), ("a", "bb")], 5) == [-4.0, -4.0, -1.0, -2.0, -4.0]
    assert spm_scores(vocab, ["a b"], 6)[2] == -1.0


def test_spm_space_prefix_reads_the_normalizer() -> None:
    """Gemma's rule (spaces to ``▁``), Llama 2's (a ``▁`` prepended first) and a non-splitting Metaspace; others refused."""
    from pruneframe.export.vocab import spm_space_prefix

    replace = {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}
    prepend = {"type": "Prepend", "prepend": "\u2581"}
    gemma = {"normalizer": replace, "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious"}}
    assert spm_space_prefix(gemma) is False
    assert spm_space_prefix({"normalizer": {"type": "Sequence", "normalizers": [prepend, replace]}, "pre_tokenizer": None}) is True
    assert spm_space_prefix({"normalizer": None, "pre_tokenizer": {"type": "Metaspace", "split": False, "prepend_scheme": "first"}}) is True
    with pytest.raises(ExportRefused, match="normalizer"):
        spm_space_prefix({"normalizer": {"type": "NFKC"}, "pre_tokenizer": None})
    with pytest.raises(ExportRefused, match="pre-tokenizer"):
        spm_space_prefix({"normalizer": replace, "pre_tokenizer": {"type": "Whitespace"}})


@needs_llamacpp
@pytest.mark.parametrize("layer_types", [["sliding_attention"] * 5 + ["full_attention"], ["sliding_attention", "full_attention", "sliding_attention"]])
def test_gemma3_dense_and_uneven_ffn_match_llamacpp(layer_types: list[str], spm_tokenizer, tmp_path: Path) -> None:
    """Gemma 3 exports as ``gemma3`` (norms as 1 + weight, q/k norms, post-norms, its sliding-window pattern, a
    SentencePiece vocabulary) and agrees in f32; uneven FFN widths are zero-padded to the widest layer and agree too."""
    model = _gemma3(len(spm_tokenizer), layer_types)
    assert model.config.sliding_window < 64  # the prompts run past the window: the pattern matters
    result, check = _export_and_verify(model, spm_tokenizer, tmp_path / "dense.gguf")
    assert result.plan.arch == "gemma3" and check.tokenizer_ok
    fields = gguf.GGUFReader(str(result.path)).fields
    assert fields["tokenizer.ggml.model"].contents() == "llama"
    assert list(fields["gemma3.attention.sliding_window_pattern"].contents()) == [t == "sliding_attention" for t in layer_types]
    units = discover(model)
    pruned = fold(model, units, _uneven_mask(units, drop_group_in=None))
    result, _ = _export_and_verify(pruned, spm_tokenizer, tmp_path / "uneven.gguf")
    widths = [layer.mlp.down_proj.in_features for layer in pruned.model.layers]
    assert len(set(widths)) > 1 and {lp.ffn for lp in result.plan.layers} == {max(widths)}
    assert [lp.ffn_pad for lp in result.plan.layers] == [max(widths) - w for w in widths]
    assert "zero channels" in result.plan.notes[0]


@needs_llamacpp
def test_gemma3_without_whole_layers_keeps_its_pattern(spm_tokenizer, tmp_path: Path) -> None:
    """Whole layers removed: fewer layers, the survivors' own sliding/global pattern written, agreeing in llama.cpp."""
    model = _gemma3(len(spm_tokenizer), ["sliding_attention"] * 5 + ["full_attention"])
    units = discover(model)
    mask = torch.ones(len(units), dtype=torch.bool)
    for layer in (1, 3):
        for kind in (UnitKind.FFN, UnitKind.KV):
            s = units.slice(layer, kind)
            mask[s.start : s.stop] = False
    pruned = fold(model, units, mask)
    assert pruned.config.layer_types == ["sliding_attention"] * 3 + ["full_attention"]
    result, _ = _export_and_verify(pruned, spm_tokenizer, tmp_path / "shallow.gguf")
    assert result.plan.arch == "gemma3" and len(result.plan.layers) == 4


def test_gemma3_refusals_name_why(spm_tokenizer, tmp_path: Path) -> None:
    """A removed block, output biases and settings llama.cpp's gemma3 lacks are refused, and nothing is written."""
    model = _gemma3(len(spm_tokenizer), ["sliding_attention"] * 5 + ["full_attention"])
    units = discover(model)
    mask = torch.ones(len(units), dtype=torch.bool)
    s = units.slice(2, UnitKind.FFN)
    mask[s.start : s.stop] = False
    with pytest.raises(ExportRefused, match="removed attention or MLP block"):
        export_gguf(fold(model, units, mask), tmp_path / "g.gguf", tokenizer=spm_tokenizer)
    bias = torch.zeros(units.num_layers, model.config.hidden_size)
    biased = fold(model, units, _uneven_mask(units, drop_group_in=None), Recalibration(mlp_bias=bias))
    with pytest.raises(ExportRefused, match="biases"):
        export_gguf(biased, tmp_path / "g.gguf", tokenizer=spm_tokenizer)
    softcapped = _gemma3(len(spm_tokenizer), ["full_attention"] * 2)
    softcapped.config.attn_logit_softcapping = 50.0
    with pytest.raises(ExportRefused, match="soft-capping"):
        plan_export(softcapped)
    assert not any(tmp_path.iterdir())


def test_unknown_pre_tokenizer_is_refused(tokenizer, tmp_path: Path) -> None:
    """A tokenizer whose split rule llama.cpp does not know by name is refused (it would tokenize differently)."""
    from tokenizers import pre_tokenizers

    odd = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer.__class__.from_str(tokenizer.backend_tokenizer.to_str()))
    odd.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    with pytest.raises(ExportRefused, match="pre-tokenizer"):
        export_gguf(_model("llama-gqa", len(tokenizer)), tmp_path / "t.gguf", tokenizer=odd)


def test_output_never_replaces_foreign_files(tokenizer, tmp_path: Path) -> None:
    """A file pruneframe did not write is refused; its own file needs overwrite=True; the result carries the template."""
    model = _model("llama-gqa", len(tokenizer))
    foreign = tmp_path / "mine.gguf"
    foreign.write_text("user data")
    with pytest.raises(FileExistsError, match="did not write"):
        export_gguf(model, foreign, tokenizer=tokenizer)
    assert foreign.read_text() == "user data"
    out = tmp_path / "model.gguf"
    export_gguf(model, out, tokenizer=tokenizer)
    assert is_pruneframe_gguf(out)
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_gguf(model, out, tokenizer=tokenizer)
    export_gguf(model, out, tokenizer=tokenizer, overwrite=True)
    fields = gguf.GGUFReader(str(out)).fields
    assert "<|im_start|>" in fields["tokenizer.chat_template"].contents()
    assert fields["tokenizer.ggml.eos_token_id"].contents() == tokenizer.eos_token_id
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


@needs_llamacpp
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("PRUNEFRAME_SLOW") != "1", reason="prunes the real SmolLM2; set PRUNEFRAME_SLOW=1")
@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_smollm2_pruned_at_half(dtype: str, tmp_path_factory) -> None:
    """The real SmolLM2-135M pruned by llm-pruner at keep 0.5 (uneven widths, KV groups removed) agrees in llama.cpp."""
    import pruneframe
    from pruneframe.data import calibration_data
    from pruneframe.models import load_model

    model, tokenizer = load_model("smollm2-135m", dtype="float32", device="cpu")
    calibration = calibration_data("embedded", tokenizer)
    result = pruneframe.prune(model, method="llm-pruner", budget=0.5, calibration=calibration, progress=False)
    out = export_gguf(result.model, tmp_path_factory.mktemp("smol") / f"smol-{dtype}.gguf", dtype=dtype, tokenizer=tokenizer)
    assert out.plan.arch == "deci"
    check = verify_gguf(out.path, result.model, tokenizer, dtype, positions=256)
    print(check.summary())
    assert check.passed(), check.failures()


def _save(model, tokenizer, folder: Path) -> Path:
    import pruneframe.checkpoint as checkpoint

    return checkpoint.save(folder, model, {"method": "hand-made"}, tokenizer=tokenizer)


def test_cli_refuses_inexpressible_model_with_exit_2(tokenizer, tmp_path: Path, capsys) -> None:
    """``pruneframe export`` of an uneven Qwen2 checkpoint exits 2 and names deci's missing biases."""
    from pruneframe.cli import main

    model = _model("qwen2", len(tokenizer))
    units = discover(model)
    folder = _save(fold(model, units, _uneven_mask(units)), tokenizer, tmp_path / "ckpt")
    code = main(["export", str(folder), "--format", "gguf", "--out", str(tmp_path / "q.gguf"), "--no-verify"])
    assert code == 2
    assert "q/k/v biases" in capsys.readouterr().err
    assert not (tmp_path / "q.gguf").exists()


def test_cli_refuses_a_checkpoint_with_residual_shortcuts_with_exit_2(tokenizer, tmp_path: Path, capsys) -> None:
    """SliceGPT's per-layer rotations leave a shortcut matrix on every residual connection: no llama.cpp graph has one."""
    from pruneframe.cli import main
    from pruneframe.pipeline.session import PruneSession
    from pruneframe.testing import tokens

    model = _model("llama-gqa", len(tokenizer))
    config = {"rotation": "per-layer", "num_windows": 4, "seq_len": 16, "norm_windows": 2, "norm_seq_len": 16}
    result = PruneSession(model, "slicegpt", {"kind": "total", "keep": 0.7}, config).run(tokens(8, 32, vocab=len(tokenizer)), progress=False)
    folder = result.save(tmp_path / "ckpt", tokenizer=tokenizer)
    code = main(["export", str(folder), "--format", "gguf", "--out", str(tmp_path / "m.gguf"), "--no-verify"])
    assert code == 2
    assert "shortcut matrices" in capsys.readouterr().err
    assert not (tmp_path / "m.gguf").exists()


@needs_llamacpp
def test_cli_exports_and_verifies_a_checkpoint(tokenizer, tmp_path: Path, capsys) -> None:
    """``pruneframe export CKPT --out F.gguf`` writes deci for an uneven checkpoint and prints a passing check."""
    from pruneframe.cli import main

    model = _model("llama-gqa", len(tokenizer))
    units = discover(model)
    folder = _save(fold(model, units, _uneven_mask(units)), tokenizer, tmp_path / "ckpt")
    out = tmp_path / "m.gguf"
    assert main(["export", str(folder), "--out", str(out), "--dtype", "f32", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "'deci'" in printed and "verify: f32: top-1 agreement" in printed
    assert main(["export", str(folder), "--out", str(out), "--quiet", "--no-verify"]) == 2  # no --overwrite


@needs_llamacpp
def test_llamacpp_speed_evaluator_reports_speedups(tokenizer) -> None:
    """The registered ``llamacpp-speed`` evaluator times a pruned model beside its dense model (shape of the result)."""
    from pruneframe.evaluation.base import EvalContext
    from pruneframe.pipeline.host import PluginHost

    dense = _model("llama-gqa", len(tokenizer))
    units = discover(dense)
    pruned = fold(dense, units, _uneven_mask(units))
    evaluator = PluginHost.create().evaluator("llamacpp-speed", {"prefill_lens": [16, 32], "decode_tokens": 4, "repeats": 2})
    result = evaluator.evaluate(pruned, tokenizer, EvalContext(dense_model=dense))
    assert set(result["measured_speedup"]) == {"prefill_16", "prefill_32", "decode"}
    assert len(result["model"]["decode_samples"]) == 2 and max(result["model"]["decode_samples"]) == result["model"]["decode_tokens_per_s"]
    paired = result["paired_speedup"]["decode"]
    assert paired["repeats"] == 2 and paired["low"] <= paired["median"] <= paired["high"]
    assert result["model"]["decode_tokens_per_s"] > 0
    assert result["ideal_speedup"]["decode"] > 1.0  # the pruned file has fewer weight bytes
    assert result["weight_bytes_per_token"]["model"] < result["weight_bytes_per_token"]["dense"]


@needs_llamacpp
def test_placements_time_fresh_copies_and_remove_them(tokenizer, tmp_path: Path) -> None:
    """With placements, every file is timed from that many fresh copies, repeats each; the copies are gone after."""
    from pruneframe.export.speed import measure_llamacpp_speed

    dense = _model("llama-gqa", len(tokenizer))
    units = discover(dense)
    files = {
        "dense": export_gguf(dense, tmp_path / "dense.gguf", "f32", tokenizer=tokenizer).path,
        "pruned": export_gguf(fold(dense, units, _uneven_mask(units)), tmp_path / "pruned.gguf", "f32", tokenizer=tokenizer).path,
    }
    speeds = measure_llamacpp_speed(files, len(tokenizer), (16,), 4, repeats=3, placements=2)
    for speed in speeds.values():
        assert speed.placements == 2 and speed.repeats == 3
        assert len(speed.decode_samples) == 6 and len(speed.prefill_samples[16]) == 6
        assert speed.decode_tokens_per_s == max(speed.decode_samples)
        assert len(speed.page_runs) == 2 and all(r is None or r >= 1 for r in speed.page_runs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense.gguf", "pruned.gguf"]
    with pytest.raises(ValueError, match="placements"):
        measure_llamacpp_speed(files, len(tokenizer), (16,), 4, repeats=1, placements=0)


@needs_llamacpp
@pytest.mark.parametrize("attention_removed_in", [0, 1])
def test_removed_blocks_export_and_agree(attention_removed_in: int, tokenizer, tmp_path: Path) -> None:
    """Depth pruning: a layer without attention, one without MLP and one removed whole export as deci and agree."""
    model = _model("llama-gqa", len(tokenizer), num_hidden_layers=4)
    units = discover(model)
    mask = _uneven_mask(units, drop_group_in=None)
    mask[units.slice(attention_removed_in, UnitKind.KV)] = False
    mask[units.slice(2, UnitKind.FFN)] = False
    mask[units.slice(3, UnitKind.FFN)] = False
    mask[units.slice(3, UnitKind.KV)] = False
    pruned = fold(model, units, mask)
    assert pruned.config.num_hidden_layers == 3
    result, _ = _export_and_verify(pruned, tokenizer, tmp_path / "depth.gguf")
    assert result.plan.arch == "deci"


@needs_llamacpp
def test_whole_layers_removed_export_as_the_family(tokenizer, tmp_path: Path) -> None:
    """Whole layers removed, the rest untouched: the family's own architecture with fewer layers."""
    model = _model("llama-gqa", len(tokenizer), num_hidden_layers=4)
    units = discover(model)
    mask = torch.ones(len(units), dtype=torch.bool)
    for layer in (1, 2):
        mask[units.slice(layer, UnitKind.FFN)] = False
        mask[units.slice(layer, UnitKind.KV)] = False
    pruned = fold(model, units, mask)
    result, _ = _export_and_verify(pruned, tokenizer, tmp_path / "short.gguf")
    assert result.plan.arch == "llama" and len(result.plan.layers) == 2


@needs_llamacpp
def test_gguf_perplexity_equals_transformers(tokenizer, tmp_path: Path) -> None:
    """llama.cpp's perplexity of an f32 export equals transformers' on the same windows, window by window."""
    from pruneframe.evaluation import perplexity
    from pruneframe.export.perplexity import gguf_perplexity

    model = _model("llama-gqa", len(tokenizer))
    units = discover(model)
    pruned = fold(model, units, _uneven_mask(units))
    path = export_gguf(pruned, tmp_path / "p.gguf", dtype="f32", tokenizer=tokenizer).path
    windows = torch.tensor([tokenizer(p)["input_ids"][:12] for p in PROMPTS[:3]])
    ours, theirs = gguf_perplexity(path, windows, progress=False), perplexity(pruned, windows, progress=False)
    assert ours.tokens == theirs.tokens == 3 * 11
    assert ours.window_nll == pytest.approx(theirs.window_nll, rel=1e-4)
    with pytest.raises(ValueError, match="windows"):
        gguf_perplexity(path, windows[:, :1])


@needs_llamacpp
def test_llamacpp_perplexity_evaluator_scores_the_perplexity_windows(spm_tokenizer, tmp_path: Path) -> None:
    """The evaluator cuts the perplexity evaluator's windows and reports llama.cpp's perplexity beside it (Gemma 3, f32)."""
    from pruneframe.evaluation.base import EvalContext
    from pruneframe.evaluation.llamacpp_perplexity import LlamaCppPerplexityEvaluator
    from pruneframe.evaluation.perplexity import PerplexityEvaluator

    text = tmp_path / "text.txt"
    text.write_text(" ".join(PROMPTS) * 3)
    model = tiny_model("gemma3", vocab_size=len(spm_tokenizer), num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"])
    settings = {"data": str(text), "seq_len": 24, "num_windows": 2}
    ours = LlamaCppPerplexityEvaluator({**settings, "export_dtype": "f32"}).evaluate(model, spm_tokenizer, EvalContext(progress=False))
    theirs = PerplexityEvaluator(settings).evaluate(model, spm_tokenizer, EvalContext(progress=False))
    (label,) = ours["sources"]
    assert ours["protocol"]["arch"] == "gemma3" and ours["sources"][label]["windows"] == 2
    assert ours["sources"][label]["mean_nll"] == pytest.approx(theirs["sources"][label]["mean_nll"], rel=1e-4)


@needs_llamacpp
@pytest.mark.parametrize(("family", "uneven"), [("llama-gqa", False), ("llama-gqa", True), ("qwen3", False)])
def test_a_smaller_hidden_size_exports_in_the_familys_own_layout(family: str, uneven: bool, tokenizer, tmp_path: Path) -> None:
    """Hidden channels cut (24 of 48, norms rescaled) with uniform or uneven widths: the file agrees with transformers."""
    from pruneframe.architectures import adapter_for
    from pruneframe.architectures.hidden import fold_hidden, norm_names

    model = _model(family, len(tokenizer))
    units = discover(model)
    pruned = fold(model, units, _uneven_mask(units) if uneven else _uniform_mask(units))
    keep = torch.zeros(48, dtype=torch.bool)
    keep[torch.randperm(48, generator=torch.Generator().manual_seed(0))[:24]] = True
    adapter = adapter_for(pruned)
    fold_hidden(adapter, pruned, keep, dict.fromkeys(norm_names(adapter, pruned), 1.2))
    result, _ = _export_and_verify(pruned, tokenizer, tmp_path / f"{family}-hidden.gguf")
    assert (result.plan.arch == "deci") == uneven
    arch = result.plan.arch
    assert gguf.GGUFReader(str(result.path)).fields[f"{arch}.embedding_length"].contents() == 24


@needs_llamacpp
def test_gemma3_with_a_smaller_hidden_size_matches_llamacpp(spm_tokenizer, tmp_path: Path) -> None:
    """Gemma 3's embedding scale follows sqrt(hidden_size): the fold compensates it, llama.cpp agrees."""
    from pruneframe.architectures import adapter_for
    from pruneframe.architectures.hidden import fold_hidden, norm_names

    model = _gemma3(len(spm_tokenizer), ["sliding_attention", "full_attention", "sliding_attention"])
    d = model.config.hidden_size
    keep = torch.zeros(d, dtype=torch.bool)
    keep[torch.randperm(d, generator=torch.Generator().manual_seed(0))[: d // 2]] = True
    adapter = adapter_for(model)
    fold_hidden(adapter, model, keep, dict.fromkeys(norm_names(adapter, model), 1.1))
    result, check = _export_and_verify(model, spm_tokenizer, tmp_path / "gemma-hidden.gguf")
    assert result.plan.arch == "gemma3" and check.tokenizer_ok
    assert gguf.GGUFReader(str(result.path)).fields["gemma3.embedding_length"].contents() == d // 2
