"""lm-eval's own command line evaluates a pruned checkpoint folder (uneven widths: trust_remote_code)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tiny import plain_llama, tiny_tokenizer, tokens

import pruneframe
from pruneframe.evaluation.zeroshot import jsonl_task_config, local_task, zeroshot

ROWS = [
    {"question": "Which animal barks?", "choices": ["dog", "fish"], "label": 0},
    {"question": "What colour is the sky?", "choices": ["green", "blue", "red"], "label": 1},
    {"question": "Is fire cold?", "choices": ["Yes", "No"], "label": 1},
]


@pytest.mark.subprocess
def test_lm_eval_cli_scores_a_pruned_folder(tmp_path: Path) -> None:
    model = plain_llama(max_position_embeddings=256)
    result = pruneframe.prune(model, method="magnitude", budget=0.6, calibration=tokens(2, 16, vocab=320), progress=False)
    folder = result.save(tmp_path / "pruned", tokenizer=tiny_tokenizer("tiny-bpe-cli"))
    assert "auto_map" in json.loads((folder / "config.json").read_text())  # uneven layers: the shipped class
    data = tmp_path / "tiny-mc.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS), encoding="utf-8")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    config = jsonl_task_config(local_task(data))
    (tasks / "pf_tiny_mc.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "results"
    command = [
        str(Path(sys.executable).with_name("lm_eval")),  # the console script pip installs with lm-eval
        "--model",
        "hf",
        "--model_args",
        f"pretrained={folder},trust_remote_code=True,dtype=float32",
        "--tasks",
        config["task"],
        "--include_path",
        str(tasks),
        "--device",
        "cpu",
        "--batch_size",
        "2",
        "--output_path",
        str(out),
    ]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    files = list(out.rglob("results*.json"))
    assert files, f"lm-eval wrote no results under {out}: {run.stdout[-2000:]}"
    scores = json.loads(files[0].read_text())["results"][config["task"]]
    assert json.loads(files[0].read_text())["n-samples"][config["task"]]["effective"] == len(ROWS)
    # the folder lm-eval loaded scores as the folded model in memory does
    in_memory = zeroshot(result.model, tiny_tokenizer("tiny-bpe-cli"), [str(data)], batch_size=2)["tasks"][config["task"]]
    assert scores["acc,none"] == pytest.approx(in_memory["acc"], abs=1e-12)
    assert scores["acc_norm,none"] == pytest.approx(in_memory["acc_norm"], abs=1e-12)
