"""Bad input through the command line: one message on stderr, exit 2, no output; through the API: a named error."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

import pruneframe
from pruneframe.pipeline.budget import BudgetError
from pruneframe.pipeline.calibration import InsufficientCalibrationError
from pruneframe.cli import main
from pruneframe.settings import loading as inputs
from pruneframe.harness.config import CalibrationSettings, InputError
from pruneframe.harness.inputs import input_phase
from pruneframe.pipeline.host import UnknownNameError, UnsupportedModelError
from tiny import tiny_model, tokens
from workspace_files import make_tokenizer


@pytest.fixture
def ws(workspace: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    monkeypatch.setenv("PRUNEFRAME_DATA_DIR", str(workspace["data_dir"]))
    return workspace


def refused(argv: list[str], capfd, out: Path) -> str:
    """Run the CLI; it must exit 2 with one message on stderr, no traceback and no output; returns stderr."""
    assert main(argv) == 2
    err = capfd.readouterr().err
    assert f"pruneframe {argv[0]}: error:" in err and "Traceback" not in err
    assert not out.exists()
    return err


def prune(ws: dict[str, Path], out: Path, model: Path | None = None, calib: Path | None = None, method: str = "random", *extra: str) -> list[str]:
    return [
        "prune",
        "--model",
        str(model or ws["model"]),
        "--method",
        method,
        "--budget",
        "0.5",
        "--calib",
        str(calib or ws["calib"]),
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


def saved(folder: Path, model) -> Path:
    model.save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


# models -------------------------------------------------------------------------------------------


def test_an_unsupported_decoder_is_named(ws: dict[str, Path], tmp_path: Path, capfd) -> None:
    gpt2 = saved(tmp_path / "gpt2", GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=60, bos_token_id=0, eos_token_id=0)))
    out = tmp_path / "out"
    err = refused(prune(ws, out, gpt2), capfd, out)
    assert "no installed plugin handles GPT2LMHeadModel; supported: " in err and "LlamaForCausalLM" in err
    err = refused(
        [
            "eval",
            "--model",
            str(gpt2),
            "--eval-data",
            str(ws["eval"]),
            "--seq-len",
            "16",
            "--eval-windows",
            "1",
            "--zeroshot",
            "none",
            "--out",
            str(out),
            "--quiet",
        ],
        capfd,
        out,
    )
    assert "GPT2LMHeadModel" in err


def test_an_encoder_only_model_is_refused_before_loading(ws: dict[str, Path], tmp_path: Path, capfd) -> None:
    bert = saved(
        tmp_path / "bert", BertForMaskedLM(BertConfig(num_hidden_layers=1, hidden_size=16, num_attention_heads=2, intermediate_size=32, vocab_size=60))
    )
    out = tmp_path / "out"
    err = refused(prune(ws, out, bert), capfd, out)
    assert "config.json names BertForMaskedLM, not a causal language model" in err


def test_missing_and_corrupt_model_folders(ws: dict[str, Path], tmp_path: Path, capfd) -> None:
    out = tmp_path / "out"
    assert "does not exist" in refused(prune(ws, out, tmp_path / "nowhere"), capfd, out)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds neither config.json nor pruning.json" in refused(prune(ws, out, empty), capfd, out)
    corrupt = Path(shutil.copytree(ws["model"], tmp_path / "corrupt"))
    (corrupt / "config.json").write_text("{ not json")
    assert "config.json is not readable JSON" in refused(prune(ws, out, corrupt), capfd, out)
    truncated = Path(shutil.copytree(ws["model"], tmp_path / "truncated"))
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    assert "model.safetensors: not a readable safetensors file" in refused(prune(ws, out, truncated), capfd, out)
    (truncated / "model.safetensors").unlink()
    assert "model.safetensors" in refused(prune(ws, out, truncated), capfd, out)


def test_a_gguf_file_is_refused_with_a_way_forward(ws: dict[str, Path], tmp_path: Path, capfd) -> None:
    import gguf

    path = tmp_path / "gpt2.gguf"
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    out = tmp_path / "out"
    err = refused(prune(ws, out, path), capfd, out)
    assert "is a GGUF file" in err and "Convert it to a Hugging Face folder" in err
    folder = tmp_path / "gguf-folder"
    folder.mkdir()
    shutil.copy(path, folder)
    assert "holds neither config.json nor pruning.json" in refused(prune(ws, out, folder), capfd, out)


@pytest.mark.parametrize(
    "change,expected",
    [
        ({"intermediate_size": 50}, "model.layers.0.mlp.down_proj.weight: shape (48, 40) in the weights, config.json implies (48, 50)"),
        ({"num_hidden_layers": 2}, "model.layers.2.input_layernorm.weight: in the weights but not in the model config.json describes"),
        ({"num_hidden_layers": 4}, "model.layers.3.input_layernorm.weight: missing from the weights"),
    ],
)
def test_a_config_that_does_not_match_its_weights(ws: dict[str, Path], tmp_path: Path, capfd, change, expected) -> None:
    folder = Path(shutil.copytree(ws["model"], tmp_path / "model"))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    out = tmp_path / "out"
    err = refused(prune(ws, out, folder), capfd, out)
    assert "do not match its config.json" in err and expected in err


# data ---------------------------------------------------------------------------------------------


def test_missing_empty_and_binary_calibration_files(ws: dict[str, Path], tmp_path: Path, capfd) -> None:
    out = tmp_path / "out"
    assert "not found" in refused(prune(ws, out, calib=tmp_path / "nope.txt"), capfd, out)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert "is empty" in refused(prune(ws, out, calib=empty), capfd, out)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(bytes(range(256)) * 40)
    err = refused(prune(ws, out, calib=binary), capfd, out)
    assert str(binary) in err and ("binary" in err or "UTF-8" in err)


def test_too_little_calibration_text_says_found_and_needed(ws: dict[str, Path], tmp_path: Path, capfd) -> None:
    short = tmp_path / "short.txt"
    short.write_text("the river city .\n" * 5)
    out = tmp_path / "out"
    err = refused(prune(ws, out, None, short, "wanda-sp", "--method-config", '{"num_windows": 4, "seq_len": 16}'), capfd, out)
    assert "method 'wanda-sp': calibration source" in err and "has 20 tokens; 4 windows of 16 after 0 windows need 64" in err
    with pytest.raises(InsufficientCalibrationError, match="has 32 tokens.*need 64"):
        pruneframe.prune(tiny_model(), "wanda-sp", 0.5, calibration=tokens(2, 16), config={"num_windows": 4, "seq_len": 16}, progress=False)


# method configs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings,field,message",
    [
        ({"bogus": 1}, "bogus", "Extra inputs are not permitted"),
        ({"num_windows": "many"}, "num_windows", "Input should be a valid integer"),
        ({"num_windows": -3}, "num_windows", "Input should be greater than or equal to 1"),
        ({"allocation": "everywhere"}, "allocation", "Input should be 'global' or 'uniform'"),
    ],
)
def test_bad_method_settings_name_the_field_and_the_method(ws: dict[str, Path], tmp_path: Path, capfd, settings, field, message) -> None:
    out = tmp_path / "out"
    err = refused(prune(ws, out, None, None, "wanda-sp", "--method-config", json.dumps(settings)), capfd, out)
    assert "method 'wanda-sp'" in err and f"{field}: {message}" in err
    with pytest.raises(ValidationError) as caught:
        pruneframe.prune(tiny_model(), "wanda-sp", 0.5, calibration=tokens(), config=settings, progress=False)
    text = str(caught.value)
    assert "for method 'wanda-sp' (WandaSPConfig)" in text and f"\n{field}\n" in text and message in text


# input errors and bugs ----------------------------------------------------------------------------


def _validation_error() -> ValidationError:
    try:
        CalibrationSettings.model_validate({"max_tokens": "many"})
    except ValidationError as exc:
        return exc
    raise AssertionError("max_tokens='many' validated")


@pytest.mark.parametrize(
    "error,message",
    [
        (ValueError("keep ratio must be a number in (0, 1]"), "keep ratio must be a number"),
        (BudgetError("budget 3 is infeasible"), "budget 3 is infeasible"),
        (UnknownNameError("unknown method 'magnitud'"), "unknown method 'magnitud'"),
        (UnsupportedModelError("no installed plugin handles GPT2LMHeadModel"), "no installed plugin handles GPT2LMHeadModel"),
        (FileNotFoundError("model spec 'nowhere' does not exist"), "model spec 'nowhere' does not exist"),
        (IsADirectoryError("calib is a folder"), "calib is a folder"),
        (_validation_error(), "invalid CalibrationSettings settings: max_tokens: Input should be a valid integer"),
    ],
)
def test_an_input_phase_reports_input_errors_naming_the_input(error: Exception, message: str) -> None:
    with pytest.raises(InputError, match=rf"^the input: {re.escape(message)}") as caught:
        with input_phase("the input"):
            raise error
    assert caught.value.__cause__ is error


@pytest.mark.parametrize(
    "error",
    [
        KeyError("config_sha256"),
        OSError(28, "No space left on device"),
        PermissionError(13, "Permission denied"),
        ConnectionError("reset by peer"),
        NotImplementedError("abstract"),
        RuntimeError("CUDA error"),
        TypeError("bad call"),
    ],
)
def test_an_input_phase_lets_any_other_error_through_unchanged(error: Exception) -> None:
    with pytest.raises(type(error)) as caught:
        with input_phase("the input"):
            raise error
    assert caught.value is error


def test_a_genuine_input_error_exits_2_with_one_line_naming_the_input(ws: dict[str, Path], tmp_path: Path, capfd) -> None:
    out, nowhere = tmp_path / "out", tmp_path / "nowhere"
    err = refused(prune(ws, out, nowhere), capfd, out)
    assert err.strip().count("\n") == 0 and f"model {str(nowhere)!r}" in err and "does not exist" in err


@pytest.mark.parametrize("error", [KeyError("weights_fingerprint"), OSError(28, "No space left on device")])
def test_an_internal_error_inside_an_input_phase_is_not_reported_as_input(
    ws: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    def broken(spec: str) -> dict:
        raise error

    monkeypatch.setattr(inputs, "model_identity", broken)
    out = tmp_path / "out"
    with pytest.raises(type(error)) as caught:
        main(prune(ws, out))
    assert caught.value is error and not out.exists()


@pytest.mark.subprocess
def test_an_internal_error_keeps_its_traceback_and_exits_1(ws: dict[str, Path], tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "import pruneframe.settings.loading as inputs\n"
        "def broken(spec):\n"
        "    return {}['weights_fingerprint']\n"
        "inputs.model_identity = broken\n"
        "from pruneframe.cli import main\n"
        f"sys.exit(main({prune(ws, tmp_path / 'out')!r}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env={**os.environ, "PRUNEFRAME_DATA_DIR": str(ws["data_dir"])}
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback (most recent call last)" in done.stderr and "KeyError: 'weights_fingerprint'" in done.stderr
    assert "pruneframe prune: error:" not in done.stderr
