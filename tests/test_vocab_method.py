"""The ``vocab`` method and ``vocab+METHOD``: one exact total budget, a merge-closed vocabulary, a checkpoint that reloads.

The exactness checks read the session's plan: the pruned model holds at most the total budget
(parameters a recalibration adds aside), what is left is below one token's cost (or every token is
kept) and, passed to the core check as the width units' leftover, lets no dropped unit fit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from vocab_files import TEXTS, calibration_text, model_folder, rich_bpe_tokenizer
from workspace_files import make_tokenizer

from pruneframe.checkpoint import load_pruned, read_report
from pruneframe.cli import main
from pruneframe.pipeline.budget import BudgetError, check_mask
from pruneframe.pipeline.calibration import CalibrationData
from pruneframe.pipeline.host import PluginHost
from pruneframe.pipeline.session import PruneResult, PruneSession
from pruneframe.pipeline.vocab_method import VocabularyComposition
from pruneframe.testing import tiny_model
from pruneframe.vocabulary import addable, is_closed, vocabulary_fingerprint

LLM_PRUNER = {"num_samples": 4, "seq_len": 32}


@pytest.fixture(scope="module")
def tokenizer():
    """The thousand-token byte-level BPE."""
    return rich_bpe_tokenizer()


@pytest.fixture(scope="module")
def calibration(tokenizer) -> CalibrationData:
    """Calibration ids over part of the lexicon (many tokens never occur)."""
    return CalibrationData(torch.tensor(tokenizer(calibration_text())["input_ids"]), name="calib")


def _prune(
    tokenizer, calibration, method: str, budget: float, config: dict | None = None, family: str = "llama-gqa", padding_rows: int = 0
) -> tuple[PruneSession, PruneResult]:
    model = tiny_model(family, vocab_size=len(tokenizer) + padding_rows)
    session = PruneSession(model, method, budget, config, budget_kind="total", tokenizer=tokenizer)
    return session, session.run(calibration, progress=False)


def _check_exact(session: PruneSession, result: PruneResult) -> None:
    """Within the total budget; no dropped addable token and no dropped unit fits in what is left."""
    plan, record = session.vocab_plan, result.report.vocabulary
    assert plan is not None and record is not None and result.kept_tokens is not None
    total = result.report.kept_params - result.report.added_params
    assert total == sum(p.numel() for p in result.model.parameters()) - result.report.added_params
    left = plan.target_total - total
    assert left >= 0
    keep = torch.zeros(plan.tokens, dtype=torch.bool)
    keep[result.kept_tokens] = True
    assert int(keep.sum()) == record.tokens == result.model.get_input_embeddings().num_embeddings == len(result.tokenizer)
    assert is_closed(keep, plan.vocab.merges) and bool(keep[plan.vocab.forced].all())
    assert not bool(addable(keep, plan.vocab.merges).any()) or left < plan.row_cost
    assert record.tokens >= record.initial_tokens
    spent = session.cost_units.budget_cost(result.mask)
    check_mask(result.mask, session.cost_units, spent + left, session.minimum, session.round_to, session.removal, session.removable)
    assert record.fingerprint == vocabulary_fingerprint(plan.vocab.tokens[i] for i in result.kept_tokens.tolist())


@pytest.mark.parametrize("family", ["llama-gqa", "qwen2"])
@pytest.mark.parametrize("budget", [0.9, 0.7])
def test_vocab_alone_meets_the_total_budget_with_every_unit_kept(tokenizer, calibration, family: str, budget: float) -> None:
    session, result = _prune(tokenizer, calibration, "vocab", budget, family=family)
    _check_exact(session, result)
    assert bool(result.mask.all()) and result.report.vocabulary.keep == "budget"
    assert result.report.vocabulary.tokens < len(tokenizer)


@pytest.mark.parametrize(
    ("method", "config"),
    [
        ("vocab+magnitude", None),
        ("vocab+magnitude", {"vocab": {"vocab_keep": "budget"}}),
        ("vocab+magnitude", {"vocab": {"vocab_keep": 0.4}}),
        ("vocab+magnitude@mixed", None),
        ("vocab+magnitude", {"round_to": 4}),
        ("vocab+llm-pruner", LLM_PRUNER),
        ("vocab+llm-pruner+bias", {**LLM_PRUNER, "recalibration": {"num_windows": 4, "seq_len": 32}}),
        ("vocab+llm-pruner+scales", {**LLM_PRUNER, "recalibration": {"num_sequences": 4, "offset_sequences": 4, "seq_len": 32}}),
    ],
)
@pytest.mark.parametrize("budget", [0.75, 0.5])
def test_a_composition_shares_one_exact_total_budget(tokenizer, calibration, method: str, config: dict | None, budget: float) -> None:
    session, result = _prune(tokenizer, calibration, method, budget, config)
    _check_exact(session, result)
    assert isinstance(session.method, VocabularyComposition) and result.report.pipeline["vocabulary"] == "vocab"
    keep = (config or {}).get("vocab", {}).get("vocab_keep", "balanced")
    assert result.report.vocabulary.keep == str(keep)
    if keep == "balanced":
        assert not bool(result.mask.all()) and result.report.vocabulary.tokens < len(tokenizer)  # both were cut


def test_every_token_kept_leaves_the_units_exact(tokenizer, calibration) -> None:
    """``vocab_keep: 1.0``: no token is dropped, so what is left is the width units' own leftover, below any unit."""
    session, result = _prune(tokenizer, calibration, "vocab+magnitude", 0.95, {"vocab": {"vocab_keep": 1.0}})
    _check_exact(session, result)
    assert result.report.vocabulary.tokens == len(tokenizer) and not bool(result.mask.all())


def test_padding_rows_no_token_uses_are_dropped_and_counted(tokenizer, calibration) -> None:
    session, result = _prune(tokenizer, calibration, "vocab+magnitude", 0.6, padding_rows=24)
    _check_exact(session, result)
    assert result.report.vocabulary.dense_rows == len(tokenizer) + 24 and result.report.vocabulary.dense_tokens == len(tokenizer)


def test_balanced_cuts_tokens_and_units_by_about_the_same_share(tokenizer, calibration) -> None:
    session, result = _prune(tokenizer, calibration, "vocab+magnitude", 0.6)
    plan = session.vocab_plan
    token_share = plan.initial_tokens / plan.tokens
    unit_share = session.target / session.units.prunable_params
    assert token_share <= unit_share + 1e-12
    assert (plan.initial_tokens + 1) / plan.tokens > (session.target - plan.row_cost) / session.units.prunable_params


def test_the_checkpoint_reloads_and_its_tokenizer_round_trips(tokenizer, calibration, tmp_path: Path) -> None:
    """Logits on remapped ids equal the dense model's at the kept columns; text round-trips byte for byte; kept text tokenizes as before."""
    dense = tiny_model("llama-gqa", vocab_size=len(tokenizer))
    session = PruneSession(tiny_model("llama-gqa", vocab_size=len(tokenizer)), "vocab", 0.8, budget_kind="total", tokenizer=tokenizer)
    result = session.run(calibration, progress=False)
    folder = result.save(tmp_path / "ckpt", tokenizer)  # the dense tokenizer given is replaced by the rebuilt one
    kept = result.kept_tokens
    ids = kept[torch.randint(0, kept.numel(), (2, 16), generator=torch.Generator().manual_seed(0))]
    new_ids = torch.searchsorted(kept, ids)
    with torch.no_grad():
        want = dense(input_ids=ids).logits[..., kept]
        for model in (AutoModelForCausalLM.from_pretrained(folder), load_pruned(folder)[0]):
            assert torch.allclose(model(input_ids=new_ids).logits, want, atol=1e-5, rtol=1e-5)
    report = read_report(folder)
    assert report.vocabulary is not None and report.vocabulary.tokens == kept.numel()
    stored = json.loads((folder / "pruning.json").read_text())["vocabulary"]
    assert stored["fingerprint"] == result.report.vocabulary.fingerprint and stored["tokens"] == kept.numel()
    for saved in (AutoTokenizer.from_pretrained(folder), load_pruned(folder)[1]):
        assert len(saved) == kept.numel()
        for text in TEXTS + (calibration_text()[:400],):
            encoded = saved(text, add_special_tokens=False)["input_ids"]
            assert saved.decode(encoded).encode("utf-8") == text.encode("utf-8")
            old = tokenizer(text, add_special_tokens=False)["input_ids"]
            if bool(torch.isin(torch.tensor(old), kept).all()):
                assert encoded == torch.searchsorted(kept, torch.tensor(old)).tolist()
        assert saved.convert_ids_to_tokens(saved.eos_token_id) == "<|endoftext|>"


def test_the_calibration_texts_tokens_and_the_script_floors_are_kept(tokenizer, calibration) -> None:
    _, result = _prune(tokenizer, calibration, "vocab", 0.85)
    kept = set(result.kept_tokens.tolist())
    frequent = torch.bincount(calibration.tokens, minlength=len(tokenizer)).argsort(descending=True)[:50]
    assert set(frequent.tolist()) <= kept
    for word in ("мир", "λόγος"):  # unseen scripts: their floor keeps them in few tokens
        assert len(result.tokenizer(word, add_special_tokens=False)["input_ids"]) <= len(word)


def test_refusals_name_why(tokenizer, calibration) -> None:
    word_level = make_tokenizer()
    with pytest.raises(ValueError, match="WordLevel"):
        PruneSession(tiny_model("llama-gqa"), "vocab", 0.9, budget_kind="total", tokenizer=word_level)
    with pytest.raises(ValueError, match="pass the model's tokenizer"):
        PruneSession(tiny_model("llama-gqa", vocab_size=len(tokenizer)), "vocab", 0.9, budget_kind="total")
    with pytest.raises(BudgetError, match="vocabulary alone cannot meet the budget"):
        PruneSession(tiny_model("llama-gqa", vocab_size=len(tokenizer)), "vocab", 0.3, budget_kind="total", tokenizer=tokenizer)
    with pytest.raises(ValueError, match="compose one"):
        PruneSession(tiny_model("llama-gqa", vocab_size=len(tokenizer)), "vocab", 0.9, {"vocab_keep": 0.5}, budget_kind="total", tokenizer=tokenizer)
    with pytest.raises(BudgetError, match="fewer than the"):
        PruneSession(
            tiny_model("llama-gqa", vocab_size=len(tokenizer)), "vocab+magnitude", 0.6, {"vocab": {"vocab_keep": 0.1}}, budget_kind="total", tokenizer=tokenizer
        )
    with pytest.raises(ValueError, match="hidden dimension"):
        PruneSession(tiny_model("llama-gqa", vocab_size=len(tokenizer)), "vocab+minitron", 0.6, budget_kind="total", tokenizer=tokenizer)
    host = PluginHost.create()
    with pytest.raises(KeyError, match="vocabulary method composes with a width method"):
        host.method("vocab+vocab")
    with pytest.raises(KeyError, match="VOCAB"):
        host.method("vocab+")


def test_names_settings_and_code_digest(tokenizer) -> None:
    host = PluginHost.create()
    method = host.method("vocab+llm-pruner+scales@mixed", {"vocab": {"vocab_keep": 0.8, "floor_per_class": 4}, "num_samples": 2})
    assert method.name == "vocab+llm-pruner+scales@mixed" and method.config.removal == "mixed"
    assert method.config.vocab.vocab_keep == 0.8 and method.config.vocab.floor_per_class == 4 and method.config.num_samples == 2
    again = host.method("vocab+llm-pruner+scales", method.config.model_dump(mode="json"))
    assert again.config.vocab == method.config.vocab
    from pruneframe.pipeline.recalibration import method_code_digest

    assert method_code_digest(method) != method_code_digest(host.method("llm-pruner+scales"))
    assert [type(p).__name__ for p in method.code_parts()] == ["Vocab", "LLMPruner", "Scales"]


def test_prune_command_trims_the_vocabulary_end_to_end(tmp_path: Path, capsys) -> None:
    folder = model_folder(tmp_path)
    out = tmp_path / "ckpt"
    flags = [
        "prune",
        "--model",
        str(folder),
        "--method",
        "vocab",
        "--budget",
        "0.7",
        "--budget-kind",
        "total",
        "--calib",
        str(tmp_path / "calib.txt"),
        "--quiet",
    ]
    assert main([*flags, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "vocabulary: 1,000 -> " in printed
    report = read_report(out)
    assert report.kept_params <= int(0.7 * report.dense_params) and report.vocabulary.tokens < 1000
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert len(tokenizer) == model.config.vocab_size == report.vocabulary.tokens
    for text in TEXTS:
        assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text
    assert main([*flags, "--out", str(tmp_path / "other"), "--recover", "lora"]) == 2
    assert "recovery after it is not supported" in capsys.readouterr().err
    heal = ["recover", str(out), "--recover-tokens", "128", "--recover-config", '{"seq_len": 16, "lora": {"rank": 2}}', "--quiet"]
    heal += ["--recover-data", str(tmp_path / "calib.txt")]
    assert main([*heal, "--recover", "distill", "--out", str(tmp_path / "distilled")]) == 2
    assert "the dense teacher reads other token ids" in capsys.readouterr().err and not (tmp_path / "distilled").exists()
    assert main([*heal, "--recover", "lora", "--out", str(tmp_path / "healed")]) == 0  # trains on the trimmed tokenizer's own ids
    healed = AutoModelForCausalLM.from_pretrained(tmp_path / "healed")
    assert healed.config.vocab_size == report.vocabulary.tokens == len(AutoTokenizer.from_pretrained(tmp_path / "healed"))


def test_prune_command_refuses_a_tokenizer_that_is_not_bpe(ws: dict[str, Path], tmp_path: Path, capsys) -> None:
    flags = ["prune", "--model", str(ws["model"]), "--method", "vocab", "--budget", "0.9", "--budget-kind", "total", "--calib", str(ws["calib"])]
    assert main([*flags, "--out", str(tmp_path / "ckpt"), "--quiet"]) == 2
    assert "WordLevel" in capsys.readouterr().err and not (tmp_path / "ckpt").exists()
