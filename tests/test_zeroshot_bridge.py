"""The local-JSONL -> lm-eval bridge (pruneframe.evaluation.zeroshot), offline, on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny import plain_llama, tiny_tokenizer
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from pruneframe.evaluation.base import EvalContext
from pruneframe.evaluation.protocol import ZeroShotProtocol
from pruneframe.evaluation.zeroshot import (
    PROMPT,
    ZeroShotEvaluator,
    jsonl_task_config,
    local_task,
    resolve_task,
    zeroshot,
)

ROWS = [
    {"question": "Which animal barks?", "choices": ["dog", "fish"], "label": 0},
    {"question": "What colour is the sky?", "choices": ["green", "blue", "red"], "label": 1},
    {"question": "Is fire cold?", "choices": ["Yes", "No"], "label": 1},
    {"question": "Which is a number?", "choices": ["seven", "lazy"], "label": 0},
    {"question": "What jumps over the dog?", "choices": ["the fox", "the sky"], "label": 0},
]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """A tiny byte-level BPE tokenizer trained in code."""
    return tiny_tokenizer("tiny-bpe-zs")


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    """A 2-layer random Llama."""
    return plain_llama(max_position_embeddings=256)


@pytest.fixture
def task_file(tmp_path: Path) -> Path:
    """A five-question multiple-choice JSONL file."""
    path = tmp_path / "tiny-mc.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS), encoding="utf-8")
    return path


def test_local_task_config_is_lm_eval_multiple_choice(task_file: Path) -> None:
    task = local_task(task_file)
    assert task.task == "pf_tiny_mc" and task.docs == 5 and task.path == str(task_file.resolve())
    config = jsonl_task_config(task)
    assert config["output_type"] == "multiple_choice" and config["dataset_path"] == "json"
    assert config["dataset_kwargs"] == {"data_files": {"test": str(task_file.resolve())}}
    assert config["doc_to_text"] == PROMPT
    assert [m["metric"] for m in config["metric_list"]] == ["acc", "acc_norm"]
    assert resolve_task(str(task_file)) == task
    assert resolve_task("hellaswag") == "hellaswag"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"choices": ["a", "b"], "label": 0}, r"missing field\(s\) \['question'\]"),
        ({"question": "q", "label": 0}, r"missing field\(s\) \['choices'\]"),
        ({"question": "q", "choices": ["a", "b"]}, r"missing field\(s\) \['label'\]"),
        ({"question": "q", "choices": ["a", "b"], "label": 2}, r"'label' 2 is out of range for 2 choices"),
        ({"question": "q", "choices": ["a", "b"], "label": -1}, r"'label' -1 is out of range"),
        ({"question": "q", "choices": ["a", "b"], "label": True}, r"'label' must be an integer"),
        ({"question": "q", "choices": [], "label": 0}, r"'choices' must be a non-empty list"),
        ({"question": "q", "choices": ["a"], "label": 0}, r"'choices' has 1 entry; .* at least 2"),
        ({"question": "q", "choices": ["a", ""], "label": 0}, r"every entry of 'choices' must be a non-empty string"),
        ({"question": 3, "choices": ["a", "b"], "label": 0}, r"'question' must be a string"),
        (["q", ["a", "b"], 0], r"expected a JSON object"),
    ],
)
def test_malformed_rows_are_named_with_file_and_line(tmp_path: Path, row: object, message: str) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=rf"bad\.jsonl:3: {message}"):
        local_task(bad)


def test_missing_and_empty_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        local_task(tmp_path / "missing.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match=r"empty\.jsonl: no rows"):
        local_task(empty)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(ROWS[0]) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"broken\.jsonl:2: not valid JSON"):
        local_task(broken)


def choice_loglikelihoods(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, row: dict) -> list[float]:
    """log P(" " + choice | "Question: ...\nAnswer:") for every choice, summed over the choice's tokens."""
    context = PROMPT.replace("{{question}}", row["question"])
    context_ids = tokenizer.encode(context)
    out = []
    for choice in row["choices"]:
        ids = tokenizer.encode(context + " " + choice)
        assert ids[: len(context_ids)] == context_ids  # the choice's tokens follow the context's
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), dim=-1)
        out.append(sum(logprobs[pos - 1, ids[pos]].item() for pos in range(len(context_ids), len(ids))))
    return out


def test_accuracy_matches_the_choice_loglikelihoods_by_hand(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, task_file: Path) -> None:
    assert tokenizer.encode("x y") == tokenizer.encode("x y", add_special_tokens=False)  # no BOS to account for
    lls = [choice_loglikelihoods(model, tokenizer, row) for row in ROWS]
    picks = [max(range(len(ll)), key=ll.__getitem__) for ll in lls]
    norm_picks = [max(range(len(ll)), key=lambda i, ll=ll, row=row: ll[i] / len(row["choices"][i])) for ll, row in zip(lls, ROWS)]
    correct = [int(p == row["label"]) for p, row in zip(picks, ROWS)]
    correct_norm = [int(p == row["label"]) for p, row in zip(norm_picks, ROWS)]
    off_by_one = [int(p == (row["label"] + 1) % len(row["choices"])) for p, row in zip(picks, ROWS)]
    assert correct != off_by_one  # so a label read one off would fail below

    result = zeroshot(model, tokenizer, [str(task_file)], batch_size=2)["tasks"]["pf_tiny_mc"]
    assert result["items"] == {"acc": correct, "acc_norm": correct_norm}
    assert result["acc"] == pytest.approx(sum(correct) / len(ROWS))
    assert result["acc_norm"] == pytest.approx(sum(correct_norm) / len(ROWS))
    low, high = result["acc_ci"]
    assert low <= result["acc"] <= high


def test_bridge_scores_every_doc_and_honours_limit(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, task_file: Path) -> None:
    full = zeroshot(model, tokenizer, [str(task_file)], batch_size=4)
    row = full["tasks"]["pf_tiny_mc"]
    assert row["docs"] == 5 and row["source"] == str(task_file.resolve())
    for metric in ("acc", "acc_norm"):
        assert 0.0 <= row[metric] <= 1.0
        assert row[f"{metric}_stderr"] is not None and row[f"{metric}_stderr"] >= 0.0
    protocol = ZeroShotProtocol.model_validate(full["protocol"])
    assert protocol.tasks[0].docs == 5 and protocol.limit is None and protocol.prompt == PROMPT
    limited = ZeroShotEvaluator({"tasks": [str(task_file)], "limit": 3, "batch_size": 2}).evaluate(model, tokenizer, EvalContext(progress=False))
    assert limited["tasks"]["pf_tiny_mc"]["docs"] == 3
    assert limited["protocol"]["limit"] == 3
    json.dumps(limited)
