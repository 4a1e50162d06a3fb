"""Device and dtype resolution (CUDA and MPS simulated by mocking torch's availability checks)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pruneframe.util import devices
from pruneframe.cli import main
from pruneframe.util.devices import DeviceUnavailableError, available_devices, checkpoint_dtype, choose_dtype, resolve_device
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


def _cpu(monkeypatch: pytest.MonkeyPatch, capability: str, avx512_bf16: bool = False, amx: bool = False) -> None:
    """A CPU as torch's probes see it; the suite-wide override of the probe is lifted."""
    monkeypatch.delenv(devices.NATIVE_BF16_ENV, raising=False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)


@pytest.mark.parametrize(
    ("capability", "avx512_bf16", "amx", "expected"),
    [
        ("AVX2", False, False, torch.float32),
        ("AVX2", True, True, torch.float32),  # ATen limited to AVX2 kernels (ATEN_CPU_CAPABILITY=avx2): emulated
        ("AVX512", False, False, torch.float32),
        ("AVX512", True, False, torch.bfloat16),
        ("AVX512", False, True, torch.bfloat16),
        ("DEFAULT", False, False, torch.float32),
    ],
)
def test_auto_dtype_is_bf16_only_on_a_cpu_that_runs_it_natively(
    monkeypatch: pytest.MonkeyPatch, capability: str, avx512_bf16: bool, amx: bool, expected: torch.dtype
) -> None:
    _cpu(monkeypatch, capability, avx512_bf16, amx)
    choice = choose_dtype("auto", torch.device("cpu"))
    assert choice.dtype is expected and choose_dtype(None, torch.device("cpu")).dtype is expected
    assert capability in choice.reason and ("natively" in choice.reason) == (expected is torch.bfloat16)
    assert choice.warning is None


def test_auto_dtype_on_cuda_follows_the_gpus_bf16_support(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(devices.NATIVE_BF16_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "GPU-X")
    for supported, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda supported=supported: supported)
        choice = choose_dtype("auto", torch.device("cuda", 0))
        assert choice.dtype is expected and "GPU-X" in choice.reason
    assert choose_dtype("auto", torch.device("mps")).dtype is torch.float32


def test_a_named_dtype_wins_and_bf16_on_an_emulating_cpu_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    _cpu(monkeypatch, "AVX2")
    emulated = choose_dtype("bf16", torch.device("cpu"))
    assert emulated.dtype is torch.bfloat16 and "emulated" in (emulated.warning or "") and "AVX2" in emulated.warning
    assert choose_dtype("float16", torch.device("cpu")).dtype is torch.float16
    assert choose_dtype("float32", torch.device("cpu")) == devices.DtypeChoice(torch.float32, "named in the settings")
    _cpu(monkeypatch, "AVX512", avx512_bf16=True)
    native = choose_dtype("bfloat16", torch.device("cpu"))
    assert native.dtype is torch.bfloat16 and native.warning is None
    assert choose_dtype("float32", torch.device("cpu")).dtype is torch.float32  # named wins over native bf16
    with pytest.raises(ValueError, match="int8"):
        choose_dtype("int8", torch.device("cpu"))


def test_the_environment_overrides_the_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    _cpu(monkeypatch, "AVX2")
    monkeypatch.setenv(devices.NATIVE_BF16_ENV, "1")
    assert choose_dtype("auto", torch.device("cpu")).dtype is torch.bfloat16
    monkeypatch.setenv(devices.NATIVE_BF16_ENV, "0")
    assert str(choose_dtype("auto", torch.device("cpu"))) == f"float32 ({devices.NATIVE_BF16_ENV}=0)"


def test_load_model_warns_when_bf16_is_named_on_an_emulating_cpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _cpu(monkeypatch, "AVX2")
    tiny_model().save_pretrained(tmp_path)
    tiny_tokenizer("t").save_pretrained(tmp_path)
    with pytest.warns(devices.EmulatedDtypeWarning, match="emulated"):
        model, _ = load_model(str(tmp_path), dtype="bfloat16", device="cpu")
    assert next(model.parameters()).dtype is torch.bfloat16


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
    for command in (["prune", "--method", "magnitude", "--budget", "0.5", "--out", str(tmp_path / "x")], ["eval"], ["compare", "--methods", "magnitude"]):
        assert main([*command, "--model", str(tmp_path / "m"), "--device", "cuda:1", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "cuda:1" in err and "this machine has: cpu" in err, err
    assert main(["prune", "--device", "gpu", "--method", "magnitude", "--budget", "0.5", "--out", str(tmp_path / "x")]) == 2
    assert "device" in capsys.readouterr().err


@pytest.mark.parametrize(("given", "canonical"), [("fp32", "float32"), ("bf16", "bfloat16"), ("FP16", "float16"), ("bfloat16", "bfloat16"), ("auto", "auto")])
def test_cli_config_files_and_api_accept_the_same_dtype_names(given: str, canonical: str, tmp_path: Path) -> None:
    from pruneframe.cli import build_parser
    from pruneframe.cli.compare_cmd import compare_config
    from pruneframe.cli.prune_settings import prune_config
    from pruneframe.harness.config import CompareConfig

    assert set(devices.DTYPE_CHOICES) == {"auto", *devices.DTYPES}
    parser = build_parser()
    flags = parser.parse_args(["compare", "--dtype", given])
    assert compare_config(flags).dtype == canonical
    pruned = parser.parse_args(["prune", "--method", "magnitude", "--budget", "0.5", "--out", "x", "--dtype", given])
    assert prune_config(pruned).dtype == canonical
    (tmp_path / "c.yaml").write_text(f"dtype: {given}\n", encoding="utf-8")
    assert compare_config(parser.parse_args(["compare", "--config", str(tmp_path / "c.yaml")])).dtype == canonical
    assert CompareConfig(dtype=given).dtype == canonical
    if canonical != "auto":
        assert devices.parse_dtype(given) is devices.DTYPES[canonical]


def test_an_unknown_dtype_is_refused_everywhere_with_the_accepted_names(tmp_path: Path, capsys) -> None:
    from pydantic import ValidationError

    from pruneframe.harness.config import CompareConfig

    with pytest.raises(ValidationError, match="dtype 'int8' is not supported; expected one of auto, float32, fp32"):
        CompareConfig(dtype="int8")
    with pytest.raises(ValueError, match="dtype 'int8' is not supported"):
        devices.parse_dtype("int8")
    (tmp_path / "c.yaml").write_text("dtype: int8\n", encoding="utf-8")
    assert main(["compare", "--config", str(tmp_path / "c.yaml")]) == 2
    assert "dtype 'int8' is not supported" in capsys.readouterr().err
    assert main(["eval", "--dtype", "int8"]) == 2
    assert "invalid choice: 'int8'" in capsys.readouterr().err


def test_model_device_and_dtype_name_read_the_first_tensor() -> None:
    model = tiny_model().to(torch.bfloat16)
    assert devices.dtype_name(model) == "bfloat16" == devices.dtype_name(torch.bfloat16)
    assert devices.model_device(model) == torch.device("cpu")
    assert devices.dtype_name(torch.nn.ReLU()) == "float32"
    buffered = torch.nn.BatchNorm1d(2, affine=False).to("meta")
    assert devices.model_device(buffered) == torch.device("meta")
