"""``pruneframe prune --recover`` and ``pruneframe recover``: the recovery is recorded, the shape kept, the input
folder never changed, and bad input exits 2 naming it."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from pruneframe import load_pruned
from pruneframe.cli import main

SMALL = '{"seq_len": 16, "batch_size": 4}'


@pytest.fixture(scope="module")
def ws(recovery_workspace: dict[str, Path]) -> dict[str, Path]:
    return recovery_workspace


@pytest.fixture(autouse=True)
def _no_shared_data(ws: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRUNEFRAME_DATA_DIR", str(ws["data_dir"]))


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def distilled(ws: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pruned") / "magnitude-0.5-distill"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRUNEFRAME_DATA_DIR", str(ws["data_dir"]))
        code = main(
            [
                "prune",
                "--model",
                str(ws["model"]),
                "--method",
                "magnitude",
                "--budget",
                "0.5",
                "--calib",
                str(ws["calib"]),
                "--recover",
                "distill",
                "--recover-tokens",
                "256",
                "--recover-config",
                SMALL,
                "--recover-data",
                str(ws["recover"]),
                "--out",
                str(out),
                "--quiet",
            ]
        )
    assert code == 0
    return out


def test_prune_with_recovery_records_it_and_keeps_the_pruned_shape(distilled: Path) -> None:
    report = json.loads((distilled / "pruning.json").read_text())
    recovery = report["recovery"]
    assert recovery["name"] == "distill" and recovery["tokens"] == 256 and recovery["steps"] == 4
    assert recovery["data"]["origin"].endswith("recover.txt") and len(recovery["data"]["stream_sha256"]) == 16
    assert recovery["params"] == report["kept_params"] == report["parameters"]
    model, _ = load_pruned(distilled)
    assert sum(p.numel() for p in model.parameters()) == report["kept_params"]


def test_recover_writes_a_new_folder_and_never_changes_its_input(
    ws: dict[str, Path], distilled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _digest(distilled)
    out = tmp_path / "lora"
    code = main(
        [
            "recover",
            str(distilled),
            "--recover",
            "lora",
            "--recover-tokens",
            "128",
            "--recover-config",
            SMALL,
            "--recover-data",
            str(ws["recover"]),
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0 and "parameters unchanged" in capsys.readouterr().out
    assert _digest(distilled) == before
    report = json.loads((out / "pruning.json").read_text())
    assert report["recovery"]["name"] == "lora" and report["recovery"]["tokens"] == 128
    assert report["method"] == "magnitude" and report["kept_params"] == report["parameters"]
    healed, _ = load_pruned(out)
    original, _ = load_pruned(distilled)
    assert [p.shape for p in healed.parameters()] == [p.shape for p in original.parameters()]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--recover", "lora", "--recover-tokens", "100000000"], "exceeds recovery text"),
        (["--recover", "lora", "--recover-config", '{"lora": {"target_modules": ["qkv"]}}'], r"target_modules \['qkv'\]"),
        (["--recover", "distil"], "did you mean 'distill'"),
        (["--recover", "lora", "--recover-config", '{"rank": 4}'], "rank"),
    ],
)
def test_recover_bad_input_exits_2_naming_it(
    ws: dict[str, Path], distilled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code = main(["recover", str(distilled), *args, "--recover-data", str(ws["recover"]), "--out", str(tmp_path / "x"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and re.search(message, err), err


def test_recover_refuses_its_own_input_and_a_folder_that_is_not_a_checkpoint(ws: dict[str, Path], distilled: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recover", str(distilled), "--recover", "lora", "--out", str(distilled)]) == 2
    assert "is the input checkpoint" in capsys.readouterr().err
    assert main(["recover", str(ws["model"]), "--recover", "lora", "--out", str(ws["model"].parent / "y")]) == 2
    assert "is not a pruneframe checkpoint" in capsys.readouterr().err


def test_recovery_text_overlapping_an_evaluation_source_exits_2(
    ws: dict[str, Path], distilled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pruneframe.data import resolve_text

    test_half = tmp_path / "embedded-test.txt"
    test_half.write_text(resolve_text("embedded", "test").text)
    code = main(["recover", str(distilled), "--recover", "lora", "--recover-data", str(test_half), "--out", str(tmp_path / "x")])
    assert code == 2 and "overlaps evaluation source 'embedded'" in capsys.readouterr().err
