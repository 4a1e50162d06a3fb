"""Inputs that once printed a traceback, each now refused in one line naming it (exit 2), with nothing written.

Every case runs in a fresh working folder (``tmp_path``), so a default output path (``results/...``)
would land there; the refusal must leave the folder exactly as it was.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import pruneframe.data.sources as sources
from pruneframe.cli import main
from workspace_files import cli_flags

LONG = "x" * 300
RESULTS_FIXTURE = Path(__file__).resolve().parent / "data" / "results.json"


@pytest.fixture
def ws(workspace: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """The workspace with an empty shared-data folder and no hub; the working folder is ``tmp_path/cwd``."""
    monkeypatch.setenv("PRUNEFRAME_DATA_DIR", str(workspace["data_dir"]))
    monkeypatch.setattr(sources, "_probe_hub", lambda endpoint, timeout_s: "offline in this test")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return workspace


def listing(folder: Path) -> list[tuple[str, int]]:
    """Every path under ``folder`` with its size (0 for folders)."""
    return sorted((str(p.relative_to(folder)), p.stat().st_size if p.is_file() else 0) for p in folder.rglob("*"))


def refused(argv: list[str], capfd: pytest.CaptureFixture[str], *expected: str) -> str:
    """``argv`` exits 2 with one line naming ``expected``, and the working folder is left as it was."""
    before = listing(Path.cwd())
    assert main(argv) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pruneframe") and ": error: " in err and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    assert listing(Path.cwd()) == before
    return err


def prune_flags(ws: dict[str, Path], out: str, *extra: str) -> list[str]:
    return ["prune", "--model", str(ws["model"]), "--method", "random", "--budget", "0.5", "--calib", str(ws["calib"]), "--out", out, "--quiet", *extra]


# --------------------------------------------------------------------------- output paths


def test_a_name_longer_than_the_file_system_holds_is_refused_by_every_command(ws: dict[str, Path], capfd, tmp_path: Path, exportable: Path) -> None:
    too_long = "a path component is 300 bytes long; file systems allow at most 255"
    refused(prune_flags(ws, LONG), capfd, f"--out {LONG!r}", too_long)
    refused(cli_flags("compare", ws, Path(LONG)), capfd, too_long)
    refused(cli_flags("eval", ws, Path(LONG)), capfd, too_long)
    refused(cli_flags("eval", {**ws, "model": Path(LONG)}, Path("e.json")), capfd, LONG, "name too long")
    refused(cli_flags("eval", {**ws, "eval": Path(LONG)}, Path("e.json")), capfd, LONG, "name too long")
    refused(prune_flags(ws, "out", "--calib", LONG), capfd, LONG, "name too long")
    assert main(prune_flags(ws, str(tmp_path / "ckpt"))) == 0
    refused(["recover", str(tmp_path / "ckpt"), "--recover", "none", "--out", LONG], capfd, too_long)
    refused(["export", str(exportable), "--out", LONG + ".gguf", "--no-verify"], capfd, "a path component is 305 bytes long")
    shutil.copy(RESULTS_FIXTURE, Path.cwd() / "results.json")
    refused(["report", ".", "--out", LONG], capfd, too_long)


@pytest.mark.parametrize("where", ["file.txt/sub", "/proc/pruneframe-out"])
def test_an_output_under_a_file_or_in_proc_is_refused_before_any_work(ws: dict[str, Path], capfd, tmp_path: Path, exportable: Path, where: str) -> None:
    Path("file.txt").write_text("notes")
    assert main(prune_flags(ws, str(tmp_path / "ckpt"))) == 0
    expected = "'file.txt' is a file, not a folder" if where.startswith("file") else "nothing can be written in '/proc'"
    refused(prune_flags(ws, where), capfd, f"--out {where!r}", expected)
    refused(["recover", str(tmp_path / "ckpt"), "--recover", "none", "--out", where], capfd, expected)
    refused(["export", str(exportable), "--out", where + ".gguf", "--no-verify"], capfd, expected)
    refused(cli_flags("compare", ws, Path(where)), capfd, expected)


def test_outputs_of_the_wrong_kind_are_refused_before_the_work(ws: dict[str, Path], capfd, tmp_path: Path) -> None:
    Path("notes.txt").write_text("notes")
    refused(cli_flags("compare", ws, Path("notes.txt")), capfd, "--out 'notes.txt' is a file; expected a folder")
    Path("empty.txt").touch()
    refused(cli_flags("compare", ws, Path("empty.txt")), capfd, "--out 'empty.txt' is a file; expected a folder")
    Path("folder").mkdir()
    refused(cli_flags("eval", ws, Path("folder")), capfd, "--out 'folder' is a folder; expected a file")
    refused(cli_flags("eval", ws, Path("/dev/zero")), capfd, "--out '/dev/zero' is neither a regular file nor a folder")
    os.symlink(tmp_path / "nowhere", "dangling")
    refused(prune_flags(ws, "dangling"), capfd, "--out 'dangling' is a symbolic link to nothing")
    # bytes of the command line that are not UTF-8 (the libraries that write models and tokenizers need UTF-8 names)
    refused(cli_flags("eval", ws, Path("e-\udcff.json")), capfd, "--out 'e-\\udcff.json': the name is not UTF-8 text")
    refused(prune_flags(ws, "ckpt-\udcff"), capfd, "out: Input should be a valid string")


# --------------------------------------------------------------------------- settings files


#: Settings files only ``compare`` reads all of (``eval`` reads the model and evaluation settings), and what the refusal says.
COMPARE_FILES = [
    (b"methods: {magnitude: 5}\n", "method_configs.magnitude: Input should be a valid dictionary"),
    (b"method_configs: 7\n", "method_configs: Input should be a valid dictionary"),
    (b"budgets: [true]\n", "budgets.0: expected a number, got the boolean True"),
    (b"seeds: [9999999999999999999999999]\n", "a seed must lie in [-2**63, 2**64 - 1]"),
]
#: Settings files both ``compare`` and ``eval`` refuse, and what the refusal says.
BAD_FILES = [
    (b"evaluation: [1, 2]\n", "evaluation: Input should be a valid dictionary"),
    (b"evaluation: perplexity\n", "evaluation: Input should be a valid dictionary"),
    (b"evaluation: {perplexity: [1]}\n", "evaluation.perplexity: Input should be a valid dictionary"),
    (b"\xff\xfe", "is not UTF-8 text (byte 0 is 0xff)"),
    (b"a: [1\nb: 2\n", "not valid YAML/JSON: while parsing a flow sequence"),
    (b"[" * 600, "nested too deeply"),
    (b"- a list\n", "expected a mapping at the top level, got list"),
    (
        b"a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        + b"".join(b"b%d: &b%d [%s]\n" % (i, i, b", ".join([b"*a" if i == 0 else b"*b%d" % (i - 1)] * 10)) for i in range(6)),
        "more than 100,000 values",
    ),
]


@pytest.mark.parametrize(
    "command,text,expected",
    [("compare", *case) for case in COMPARE_FILES + BAD_FILES] + [("eval", *case) for case in BAD_FILES],
)
def test_settings_files_of_the_wrong_shape_are_refused_naming_the_setting(ws: dict[str, Path], capfd, command: str, text: bytes, expected: str) -> None:
    Path("c.yaml").write_bytes(text)
    err = refused([command, "--config", "c.yaml", "--out", "o"], capfd, "c.yaml", expected)
    assert err.count(":") < 20  # one line, not a YAML error's mark drawn over several


def test_a_settings_file_that_is_a_device_or_too_large_is_refused_unread(ws: dict[str, Path], capfd) -> None:
    refused(["compare", "--config", "/dev/zero", "--out", "o"], capfd, "config file '/dev/zero' is not a regular file")
    with open("big.yaml", "wb") as handle:
        handle.truncate(64 * 2**20 + 1)
    refused(["eval", "--config", "big.yaml"], capfd, "config file 'big.yaml' holds more than 67,108,864 bytes")


def test_bare_pruneframe_says_what_is_missing_in_one_line(capfd) -> None:
    assert main([]) == 2
    err = capfd.readouterr().err
    assert err == "pruneframe: error: name a command: plugins, prune, recover, eval, compare, export, report (see pruneframe --help)\n"
    assert main(["prune", "--budget", "half"]) == 2
    assert capfd.readouterr().err.count("\n") == 1


# --------------------------------------------------------------------------- report


@pytest.mark.parametrize(
    "change,expected",
    [
        (lambda d: d.pop("units"), "units: Field required"),
        (lambda d: d.update(units="x"), "units: Input should be a valid dictionary"),
        (lambda d: d.update(runs=[1]), "runs.0: Input should be a valid dictionary"),
        (lambda d: d.update(runs=[None]), "runs.0: Input should be a valid dictionary"),
        (lambda d: d.update(summary={"sources": [1]}), "summary.sources.0: Input should be a valid dictionary"),
        (lambda d: d["dense"]["eval"]["perplexity"]["sources"]["eval"].update(window_tokens=0), "window_tokens: Input should be greater than or equal to 1"),
        (lambda d: d["runs"][0]["eval"]["zeroshot"]["tasks"]["pf_tiny_mc"].update(acc_ci=[0.5]), "acc_ci: List should have at least 2 items"),
        (lambda d: d["runs"][0].update(prune={"kept_params": "many"}), "runs.0.prune: Value error, not a prune report"),
    ],
)
@pytest.mark.parametrize("figures_only", [False, True])
def test_a_malformed_results_json_is_refused_naming_the_value(ws: dict[str, Path], capfd, change, expected: str, figures_only: bool) -> None:
    data = json.loads(RESULTS_FIXTURE.read_text())
    change(data)
    Path("r").mkdir()
    Path("r/results.json").write_text(json.dumps(data))
    refused(["report", "r", *(["--figures-only"] if figures_only else [])], capfd, "r/results.json", "not a comparison's results.json", expected)


def test_report_refuses_outputs_that_are_not_folders_and_suffixes_that_are_paths(ws: dict[str, Path], capfd, tmp_path: Path) -> None:
    Path("r").mkdir()
    shutil.copy(RESULTS_FIXTURE, "r/results.json")
    Path("notes.txt").write_text("notes")
    os.symlink(tmp_path / "nowhere", "dangling")
    refused(["report", "r", "--out", "notes.txt"], capfd, "--out 'notes.txt' is a file; expected a folder")
    refused(["report", "r", "--out", "/dev/null"], capfd, "--out '/dev/null' is neither a regular file nor a folder")
    refused(["report", "r", "--out", "dangling"], capfd, "--out 'dangling' is a symbolic link to nothing")
    for suffix in ("/../../escaped", "a/b", "x" * 300):
        refused(["report", "r", "--figures-only", "--out", "figs", "--suffix", suffix], capfd, f"--suffix {suffix!r}", "not a path")
    assert main(["report", "r", "--figures-only", "--out", "figs", "--suffix", "_ok"]) == 0
    assert sorted(p.name for p in Path("figs").iterdir()) == [
        "acc_vs_params_ok.png",
        "ppl_vs_params_ok.png",
        "quality_vs_speed_keep-0.5-of-prunable-params_ok.png",
        "quality_vs_speed_keep-0.8-of-prunable-params_ok.png",
    ]


# --------------------------------------------------------------------------- compare and eval


def test_compare_refused_after_its_settings_checked_creates_no_folder(ws: dict[str, Path], capfd) -> None:
    Path("bad.jsonl").write_text('{"question": "q"}\n')
    flags = [*cli_flags("compare", ws, Path("nested/a/b/cmp"), "--methods", "random"), "--zeroshot", "bad.jsonl", "--overwrite"]
    refused(flags, capfd, "bad.jsonl")
    default = [t for t in flags if t not in ("--out", "nested/a/b/cmp")]
    refused(default, capfd, "bad.jsonl")  # the default results/compare-<model> is not created either
    refused([*cli_flags("compare", ws, Path("cmp")), "--seeds", "9999999999999999999999999"], capfd, "a seed must lie in")
    text = str(ws["calib"])  # a text file is no zero-shot task: refused before the dense model is scored
    refused([*cli_flags("compare", ws, Path("cmp")), "--zeroshot", text], capfd, f"zero-shot task file {text!r} is neither a .jsonl file")


def test_eval_refuses_windows_its_texts_cannot_fill_and_devices_it_lacks(ws: dict[str, Path], capfd, tmp_path: Path) -> None:
    flags = cli_flags("eval", ws, Path("e.json"))
    refused([*flags, "--seq-len", "999999999"], capfd, "evaluation.perplexity", "0 full windows of 999999999")
    short = tmp_path / "short.txt"
    short.write_text("the river city .\n")
    refused(cli_flags("eval", {**ws, "eval": short}, Path("e.json")), capfd, "evaluation.perplexity", "short.txt")
    if not torch.cuda.is_available():
        refused([*flags, "--eval-compute-device", "cuda"], capfd, "evaluation.perplexity", "device 'cuda' is not available")


def test_prune_refuses_a_seed_torch_cannot_take(ws: dict[str, Path], capfd) -> None:
    refused(prune_flags(ws, "out", "--seed", "9999999999999999999999999"), capfd, "seed: a seed must lie in [-2**63, 2**64 - 1]")
    refused(prune_flags(ws, "out", "--method-config", '{"seed": 3}'), capfd, "method_settings.seed")


# --------------------------------------------------------------------------- export


def test_export_refuses_unknown_models_and_broken_checkpoints(ws: dict[str, Path], capfd, tmp_path: Path, exportable: Path) -> None:
    refused(["export", "nosuch/model", "--out", "o.gguf", "--no-verify"], capfd, "nosuch/model", "the hub is unreachable")
    for content, expected in (
        ([1, 2], "holds a JSON list, not an object"),
        ({"model_type": "pruneframe_nosuch", "pruned_family": "nosuch.Model"}, "no installed plugin handles Model"),
        ({"model_type": "bert"}, "no installed plugin handles BertLMHeadModel"),
    ):
        broken = tmp_path / "broken"
        shutil.rmtree(broken, ignore_errors=True)
        shutil.copytree(exportable, broken)
        (broken / "config.json").write_text(json.dumps(content))
        refused(["export", str(broken), "--out", "o.gguf", "--no-verify"], capfd, str(broken), expected)
    refused(["export", str(exportable), "--out", "o.gguf", "--pad-ffn-to", "1000000"], capfd, "--pad-ffn-to must lie in [1, 4096]")
