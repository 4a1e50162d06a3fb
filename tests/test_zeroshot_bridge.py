"""The local-JSONL -> lm-eval bridge (pruneframe.evaluation.zeroshot), offline, on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
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


def test_malformed_rows_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({"question": "q", "choices": ["a", "b"], "label": 2}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        local_task(bad)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        local_task(tmp_path / "missing.jsonl")


def test_bridge_scores_every_doc_and_honours_limit(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, task_file: Path
) -> None:
    full = zeroshot(model, tokenizer, [str(task_file)], batch_size=4)
    row = full["tasks"]["pf_tiny_mc"]
    assert row["docs"] == 5 and row["source"] == str(task_file.resolve())
    for metric in ("acc", "acc_norm"):
        assert 0.0 <= row[metric] <= 1.0
        assert row[f"{metric}_stderr"] is not None and row[f"{metric}_stderr"] >= 0.0
    protocol = ZeroShotProtocol.model_validate(full["protocol"])
    assert protocol.tasks[0].docs == 5 and protocol.limit is None and protocol.prompt == PROMPT
    limited = ZeroShotEvaluator({"tasks": [str(task_file)], "limit": 3, "batch_size": 2}).evaluate(
        model, tokenizer, EvalContext(progress=False)
    )
    assert limited["tasks"]["pf_tiny_mc"]["docs"] == 3
    assert limited["protocol"]["limit"] == 3
    json.dumps(limited)
