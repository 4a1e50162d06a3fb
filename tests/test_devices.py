"""Device and dtype resolution (CUDA and MPS simulated by mocking torch's availability checks)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pruneframe import devices
from pruneframe.cli import main
from pruneframe.devices import DeviceUnavailableError, available_devices, checkpoint_dtype, resolve_device, resolve_dtype
from pruneframe.models import load_model
from tiny import tiny_model, tiny_tokenizer


def _machine(monkeypatch: pytest.MonkeyPatch, cuda: int = 0, mps: bool = False) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
    monkeypatch.setattr(devices, "_mps_available", lambda: mps)


def test_auto_picks_cuda_when_present_and_the_cpu_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, cuda=2)
    assert resolve_device("auto") == torch.device("cuda", 0) == resolve_device(None)
    assert resolve_device("cuda") == torch.device("cuda", 0) and resolve_device("CUDA:1") == torch.device("cuda", 1)
    assert available_devices() == ["cpu", "cuda:0", "cuda:1"]
    _machine(monkeypatch, cuda=0, mps=True)
    assert resolve_device("auto") == torch.device("cpu")  # mps only when asked for
    assert resolve_device("mps") == torch.device("mps")


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "mps"])
def test_a_missing_device_names_those_that_exist(monkeypatch: pytest.MonkeyPatch, spec: str) -> None:
    _machine(monkeypatch)
    with pytest.raises(DeviceUnavailableError, match=rf"{spec}.*this machine has: cpu$"):
        resolve_device(spec)


def test_a_cuda_index_past_the_last_device_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, cuda=2)
    with pytest.raises(DeviceUnavailableError, match="cuda:2.*cpu, cuda:0, cuda:1"):
        resolve_device("cuda:2")
    with pytest.raises(DeviceUnavailableError, match="not a device name"):
        resolve_device("tpu-ish")


def test_auto_dtype_is_the_stored_one_on_an_accelerator_and_float32_on_the_cpu() -> None:
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert resolve_dtype("auto", cuda, torch.bfloat16) is torch.bfloat16
    assert resolve_dtype("auto", cpu, torch.bfloat16) is torch.float32
    assert resolve_dtype(None, cuda, None) is torch.float32  # the checkpoint does not say
    assert resolve_dtype("bf16", cpu, torch.float32) is torch.bfloat16
    with pytest.raises(ValueError, match="int8"):
        resolve_dtype("int8", cpu)


def test_checkpoint_dtype_reads_either_config_key(tmp_path: Path) -> None:
    model = tiny_model().to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    assert checkpoint_dtype(tmp_path) is torch.bfloat16
    assert checkpoint_dtype({"torch_dtype": "float16"}) is torch.float16
    assert checkpoint_dtype({"dtype": "int8"}) is None and checkpoint_dtype(tmp_path / "nothing") is None


def test_load_model_reads_the_weights_straight_into_the_target_dtype(tmp_path: Path) -> None:
    model = tiny_model()
    model.save_pretrained(tmp_path)
    tiny_tokenizer("t").save_pretrained(tmp_path)
    auto, _ = load_model(str(tmp_path), dtype="auto", device="cpu")
    half, _ = load_model(str(tmp_path), dtype="bfloat16", device="auto")
    assert next(auto.parameters()).dtype is torch.float32 and next(half.parameters()).device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert all(p.dtype is torch.bfloat16 for p in half.parameters())
    ids = torch.arange(10)[None]
    with torch.no_grad():
        torch.testing.assert_close(auto(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_the_command_line_exits_2_naming_the_devices_there_are(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    _machine(monkeypatch)
    tiny_model().save_pretrained(tmp_path / "m")
    tiny_tokenizer("t").save_pretrained(tmp_path / "m")
    for command in (["prune", "--method", "magnitude", "--budget", "0.5", "--out", str(tmp_path / "x")],
                    ["eval"], ["compare", "--methods", "magnitude"]):
        assert main([*command, "--model", str(tmp_path / "m"), "--device", "cuda:1", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "cuda:1" in err and "this machine has: cpu" in err, err
    assert main(["prune", "--device", "gpu", "--method", "magnitude", "--budget", "0.5", "--out", str(tmp_path / "x")]) == 2
    assert "device" in capsys.readouterr().err
