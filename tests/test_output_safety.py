"""``--out`` never destroys what pruneframe did not write: prune, compare and eval through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pruneframe.checkpoint import read_report, save
from pruneframe.cli import main
from tiny import tiny_model
from workspace_files import prune_flags, cli_flags


def users_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("four years of work")
    return path


def random_compare(ws: dict[str, Path], out: Path) -> list[str]:
    """A fast comparison of ``random`` at keep 0.5 on the tiny workspace."""
    return cli_flags("compare", ws, out, "--methods", "random", "--budgets", "0.5")


def test_prune_refuses_a_folder_that_is_not_a_checkpoint(ws: dict[str, Path], tmp_path: Path, capfd) -> None:
    out = users_folder(tmp_path / "mine")
    for extra in ([], ["--overwrite"]):
        assert main([*prune_flags(ws, out), *extra]) == 2
        err = capfd.readouterr().err
        assert str(out) in err and "is not a pruneframe checkpoint" in err and "Traceback" not in err
        assert (out / "thesis.tex").read_text() == "four years of work"
        assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no half-written sibling left behind


def test_prune_refuses_a_file(ws: dict[str, Path], tmp_path: Path, capfd) -> None:
    out = tmp_path / "notes.txt"
    out.write_text("keep me")
    assert main([*prune_flags(ws, out), "--overwrite"]) == 2
    assert "is a file" in capfd.readouterr().err and out.read_text() == "keep me"


def test_prune_replaces_its_own_checkpoint_only_with_overwrite(ws: dict[str, Path], tmp_path: Path, capfd) -> None:
    out = tmp_path / "ckpt"
    assert main(prune_flags(ws, out, "0.5")) == 0
    first = read_report(out).kept_params
    assert main(prune_flags(ws, out, "0.8")) == 2
    err = capfd.readouterr().err
    assert "is a pruneframe checkpoint already; pass --overwrite" in err and str(out) in err
    assert read_report(out).kept_params == first
    assert main([*prune_flags(ws, out, "0.8"), "--overwrite"]) == 0
    assert read_report(out).kept_params > first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_prune_writes_into_an_empty_folder(ws: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    assert main(prune_flags(ws, out)) == 0
    assert read_report(out).method == "random"


def test_the_library_save_refuses_a_folder_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    out = users_folder(tmp_path / "mine")
    with pytest.raises(FileExistsError, match="not a pruneframe checkpoint"):
        save(out, tiny_model())
    assert (out / "thesis.tex").read_text() == "four years of work"


def test_compare_refuses_a_folder_that_is_not_a_results_folder(ws: dict[str, Path], tmp_path: Path, capfd) -> None:
    out = users_folder(tmp_path / "mine")
    for extra in ([], ["--overwrite"]):
        assert main([*random_compare(ws, out), *extra]) == 2
        err = capfd.readouterr().err
        assert str(out) in err and "not a pruneframe comparison results folder" in err
        assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def test_compare_reuses_its_results_folder_and_overwrite_recomputes_it(ws: dict[str, Path], tmp_path: Path, capfd) -> None:
    out = tmp_path / "results"
    assert main(random_compare(ws, out)) == 0
    assert "(runs: 1 computed, 0 cached, 0 failed; dense computed)" in capfd.readouterr().out
    first = json.loads((out / "runs" / "random-0.5-s0.json").read_text())
    (out / "results.md").write_text("stale")
    assert main(random_compare(ws, out)) == 0
    assert "(runs: 0 computed, 1 cached, 0 failed; dense cached)" in capfd.readouterr().out
    assert main([*random_compare(ws, out), "--overwrite"]) == 0
    assert "(runs: 1 computed, 0 cached, 0 failed; dense computed)" in capfd.readouterr().out
    again = json.loads((out / "runs" / "random-0.5-s0.json").read_text())
    assert again["finished_at"] >= first["finished_at"] and again["cache_key"] == first["cache_key"]
    assert (out / "results.md").read_text() != "stale"
    assert json.loads((out / "results.json").read_text())["config"]["out"] == str(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


def test_compare_overwrite_that_fails_leaves_the_old_results(ws: dict[str, Path], tmp_path: Path, capfd) -> None:
    out = tmp_path / "results"
    assert main(random_compare(ws, out)) == 0
    before = (out / "results.json").read_text()
    flags = random_compare(ws, out)
    flags[flags.index("--calib") + 1] = str(tmp_path / "missing.txt")
    assert main([*flags, "--overwrite"]) == 2
    assert "missing.txt" in capfd.readouterr().err
    assert (out / "results.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


def test_eval_refuses_a_foreign_file_and_replaces_its_record_only_with_overwrite(ws: dict[str, Path], tmp_path: Path, capfd) -> None:
    mine = tmp_path / "data.json"
    mine.write_text('{"mine": true}')
    assert main([*cli_flags("eval", ws, mine), "--overwrite"]) == 2
    err = capfd.readouterr().err
    assert str(mine) in err and "not a pruneframe eval record" in err and mine.read_text() == '{"mine": true}'
    folder = users_folder(tmp_path / "folder")
    assert main(cli_flags("eval", ws, folder)) == 2
    assert "is a folder" in capfd.readouterr().err and (folder / "thesis.tex").exists()

    out = tmp_path / "eval.json"
    assert main(cli_flags("eval", ws, out)) == 0
    first = out.read_text()
    assert main(cli_flags("eval", ws, out)) == 2
    assert "pass --overwrite" in capfd.readouterr().err and out.read_text() == first
    assert main([*cli_flags("eval", ws, out), "--overwrite"]) == 0
    assert json.loads(out.read_text())["eval"]["perplexity"]["sources"] == json.loads(first)["eval"]["perplexity"]["sources"]
