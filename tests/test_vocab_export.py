"""A checkpoint with a trimmed vocabulary exports to GGUF with its own tokenizer, and llama.cpp reads and writes text as transformers does.

The llama.cpp checks need the optional ``xllamacpp`` package (skipped without it). The output layer is scaled up, as in
``test_export_gguf.py``, so that the tiny models' next-token distributions are peaked.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest
import torch
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast
from vocab_files import TEXTS, calibration_text, rich_bpe_tokenizer

from pruneframe.checkpoint import load_pruned
from pruneframe.cli import main
from pruneframe.export import ExportRefused
from pruneframe.export.llamacpp import LlamaCppModel, available
from pruneframe.export.vocab import _QWEN2_SPLIT, check_tokenizer, pre_tokenizer_name
from pruneframe.export.verify_tokens import piece_issues, tokenization_issues
from pruneframe.pipeline.calibration import CalibrationData
from pruneframe.pipeline.session import PruneSession
from pruneframe.testing import tiny_model

needs_llamacpp = pytest.mark.skipif(not available(), reason="needs xllamacpp (pip install 'pruneframe[deploy]')")


@pytest.fixture(scope="module")
def tokenizer():
    """The thousand-token byte-level BPE."""
    return rich_bpe_tokenizer()


def _checkpoint(tokenizer, method: str, budget: float, folder: Path, tied: bool = False) -> Path:
    model = tiny_model("llama-gqa", vocab_size=len(tokenizer), tie_word_embeddings=tied)
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    with torch.no_grad():
        head = model.get_input_embeddings() if model.config.tie_word_embeddings else model.get_output_embeddings()
        head.weight.mul_(20.0)
    calibration = CalibrationData(torch.tensor(tokenizer(calibration_text())["input_ids"]), name="calib")
    result = PruneSession(model, method, budget, budget_kind="total", tokenizer=tokenizer).run(calibration, progress=False)
    assert result.report.vocabulary is not None and result.report.vocabulary.tokens < len(tokenizer)
    return result.save(folder)


@needs_llamacpp
@pytest.mark.parametrize(("method", "budget", "tied"), [("vocab", 0.8, True), ("vocab+magnitude", 0.7, False)])
def test_export_writes_the_trimmed_vocabulary_and_verifies(tokenizer, method: str, budget: float, tied: bool, tmp_path: Path, capsys) -> None:
    """``pruneframe export`` reads the checkpoint's own tokenizer: its tokens are the embedding's rows, and ``--verify`` passes."""
    folder = _checkpoint(tokenizer, method, budget, tmp_path / "ckpt", tied)
    out = tmp_path / "m.gguf"
    assert main(["export", str(folder), "--out", str(out), "--dtype", "f32", "--quiet"]) == 0
    assert "tokenizer agrees" in capsys.readouterr().out
    model, trimmed = load_pruned(folder)
    tokens = gguf.GGUFReader(out).fields["tokenizer.ggml.tokens"]
    assert len(tokens.data) == len(trimmed) == model.get_input_embeddings().num_embeddings < len(tokenizer)


@needs_llamacpp
def test_llamacpp_tokenizes_and_detokenizes_as_transformers(tokenizer, tmp_path: Path) -> None:
    """Every text's ids agree exactly and every token's bytes agree; ids swapped between two tokens (same counts) are caught."""
    folder = _checkpoint(tokenizer, "vocab", 0.75, tmp_path / "ckpt")
    out = tmp_path / "m.gguf"
    assert main(["export", str(folder), "--out", str(out), "--dtype", "f32", "--no-verify", "--quiet"]) == 0
    _, trimmed = load_pruned(folder)
    runner = LlamaCppModel(out, n_ctx=256)
    try:
        assert tokenization_issues(runner, trimmed, TEXTS) == []
        assert piece_issues(runner, trimmed) == []
        for text in TEXTS:
            assert trimmed.decode(trimmed(text, add_special_tokens=False)["input_ids"]) == text
        assert "but other ones" in tokenization_issues(runner, _swapped(trimmed, TEXTS[-1]), TEXTS[-1:])[0]
    finally:
        runner.close()


def test_a_byte_level_vocabulary_joining_digits_is_refused() -> None:
    """llama.cpp's rule for a ByteLevel-only tokenizer puts every digit apart: a token such as ``Ġ3`` could never be read."""
    spec = {"pre_tokenizer": {"type": "ByteLevel", "use_regex": True, "add_prefix_space": False}, "model": {"vocab": {"a": 0, "3": 1}}}
    assert pre_tokenizer_name(spec) == "smollm"
    spec["model"]["vocab"]["\u01203"] = 2
    with pytest.raises(ExportRefused, match="joins a digit"):
        pre_tokenizer_name(spec)


def _swapped(tokenizer, text: str):
    """``tokenizer`` with the ids of the first two distinct tokens of ``text`` exchanged: the same counts, other ids."""
    first, second = list(dict.fromkeys(tokenizer(text, add_special_tokens=False)["input_ids"]))[:2]
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    names = {i: t for t, i in vocab.items()}
    vocab[names[first]], vocab[names[second]] = second, first
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), bos_token="<|im_start|>", eos_token="<|endoftext|>")


def test_an_nfc_normalizer_is_accepted_and_others_are_refused() -> None:
    """Qwen2's tokenizer normalizes to NFC, which llama.cpp leaves out (text in NFC reads the same); other normalizers are refused."""
    split = {"type": "Split", "pattern": {"Regex": _QWEN2_SPLIT}, "behavior": "Isolated", "invert": False}
    spec = {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [split, {"type": "ByteLevel", "use_regex": False}]}, "model": {"vocab": {}}}
    assert pre_tokenizer_name({**spec, "normalizer": {"type": "NFC"}}) == "qwen2"
    with pytest.raises(ExportRefused, match=r"normalizer \(NFKC\).*NFC is"):
        pre_tokenizer_name({**spec, "normalizer": {"type": "NFKC"}})


def test_check_tokenizer_refuses_before_writing(tokenizer, ws: dict[str, Path]) -> None:
    assert check_tokenizer(tokenizer) == "smollm"
    with pytest.raises(ExportRefused, match="WordLevel"):
        check_tokenizer(PreTrainedTokenizerFast.from_pretrained(ws["model"]))


def test_a_comparison_whose_tokenizer_cannot_be_exported_is_refused_before_any_run(ws: dict[str, Path], tmp_path: Path, capsys) -> None:
    """``llamacpp-speed`` exports every model: a tokenizer it cannot write is refused up front, naming the evaluator."""
    settings = {
        "model": str(ws["model"]),
        "methods": {"magnitude": {}},
        "budgets": [0.8],
        "calibration": {"data": str(ws["calib"])},
        "evaluation": {"perplexity": {"sources": [str(ws["eval"])], "seq_len": 32, "num_windows": 2}, "llamacpp-speed": {}},
        "out": str(tmp_path / "out"),
    }
    (tmp_path / "c.json").write_text(json.dumps(settings))
    assert main(["compare", "--config", str(tmp_path / "c.json"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "evaluation.llamacpp-speed" in err and "WordLevel" in err and not (tmp_path / "out" / "runs").exists()
