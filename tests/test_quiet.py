"""``--quiet`` prints the final lines and nothing else: no progress bars, warnings or subprocess chatter."""

from __future__ import annotations

from pathlib import Path

import pytest

from pruneframe.cli import main
from workspace_files import cli_flags


@pytest.fixture
def ws(workspace: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Path]:
    """The workspace, run from a folder outside any git checkout (where lm-eval's git lookup complains)."""
    monkeypatch.setenv("PRUNEFRAME_DATA_DIR", str(workspace["data_dir"]))
    monkeypatch.chdir(tmp_path)
    return workspace


def test_eval_quiet_prints_only_the_final_lines(ws: dict[str, Path], tmp_path: Path, capfd) -> None:
    assert main(cli_flags("eval", ws, tmp_path / "loud.json", seq_len=16, zeroshot_limit=3, quiet=False)) == 0
    loud = capfd.readouterr()
    assert "loading model" in loud.err and "Running loglikelihood requests" in loud.err  # what --quiet has to silence
    assert main(cli_flags("eval", ws, tmp_path / "quiet.json", seq_len=16, zeroshot_limit=3)) == 0
    quiet = capfd.readouterr()
    assert quiet.err == ""
    lines = quiet.out.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{ws['model']}: ppl ") and lines[1] == f"written: {tmp_path / 'quiet.json'}"


def test_prune_and_compare_quiet_print_only_the_final_lines(ws: dict[str, Path], tmp_path: Path, capfd) -> None:
    assert (
        main(
            [
                "prune",
                "--model",
                str(ws["model"]),
                "--method",
                "wanda-sp",
                "--budget",
                "0.5",
                "--calib",
                str(ws["calib"]),
                "--method-config",
                '{"num_windows": 2, "seq_len": 16}',
                "--out",
                str(tmp_path / "ckpt"),
                "--quiet",
            ]
        )
        == 0
    )
    pruned = capfd.readouterr()
    assert pruned.err == "" and pruned.out.splitlines()[0] == "pruned with wanda-sp to keep 0.5 of prunable params"
    assert pruned.out.splitlines()[-1] == f"  saved: {tmp_path / 'ckpt'}"
    assert main(cli_flags("compare", ws, tmp_path / "cmp", "--methods", "random", "--budgets", "0.5", seq_len=16, zeroshot_limit=3)) == 0
    compared = capfd.readouterr()
    assert compared.err == ""
    assert compared.out == f"results: {tmp_path / 'cmp'} (runs: 1 computed, 0 cached, 0 failed; dense computed)\n"


def test_quiet_still_shows_the_error(ws: dict[str, Path], tmp_path: Path, capfd) -> None:
    flags = cli_flags("eval", ws, tmp_path / "e.json", seq_len=16, zeroshot_limit=3, quiet=False)
    flags[flags.index("--eval-data") + 1] = str(tmp_path / "missing.txt")
    assert main([*flags, "--quiet"]) == 2
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err.startswith("pruneframe eval: error:") and "missing.txt" in captured.err
