"""Hostile command lines and files through every subcommand, in process: never a traceback, one line naming the input.

Every case runs :func:`pruneframe.cli.main` on a valid, cheap command line of one subcommand changed
the way a new user (or an accident) would change it: a real flag of that subcommand (read from the
parser) given a hostile value (numbers out of range; empty, long, non-UTF-8 and unicode strings; a
file where a folder is expected and the reverse; ``/dev/zero``, ``/proc``, a dangling symbolic link,
a read-only folder), a flag given twice, a malformed or wrongly-shaped YAML/JSON settings file or
``results.json``, or a pruned checkpoint with ``model.safetensors``, ``config.json`` or
``pruning.json`` deleted, truncated or garbled. For every case:

- the exit code is 0, 1 or 2, and no exception escapes (nothing prints a traceback);
- a refusal (exit 2) is one line, ``pruneframe COMMAND: error: ...``, that names the input (the flag,
  the value, the file or the setting);
- on a refusal nothing in the sandbox (the case's working folder, holding every file the cases name)
  is created, changed or removed.

The models are the tiny test models (:mod:`pruneframe.testing`), the data the workspace's texts;
nothing is downloaded. The default size keeps ``make test`` short; ``PRUNEFRAME_FUZZ=large`` runs ten
times as many cases per subcommand. The number of cases tried is printed after each subcommand's
test (``pytest -s``) and, for every subcommand, in the terminal summary (``tests/conftest.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import stat
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pruneframe.cli import build_parser, main
from pruneframe.testing import tiny_model
from workspace_files import TASK_ROWS, bpe_tokenizer, random_text

#: Cases per subcommand: the default size, and ten times it with PRUNEFRAME_FUZZ=large.
SCALE = 10 if os.environ.get("PRUNEFRAME_FUZZ", "").lower() == "large" else 1
CASES = {"plugins": 5, "prune": 40, "recover": 25, "eval": 35, "compare": 30, "export": 25, "report": 40}
#: Cases tried per subcommand in this session (printed at the end, and stored for the terminal summary).
TRIED: Counter[str] = Counter()
#: Their exit codes per subcommand.
EXITS: dict[str, Counter[int]] = {}

RESULTS_FIXTURE = Path(__file__).resolve().parent / "data" / "results.json"
LONG = "x" * 300
#: What ``main`` may return.
EXIT_CODES = (0, 1, 2)


# --------------------------------------------------------------------------- the sandbox


def _build_sandbox(root: Path) -> None:
    """The files every case may name: a tiny model and its pruned checkpoint, texts, a task, a results folder and traps."""
    tokenizer = bpe_tokenizer()
    torch.manual_seed(0)
    model = tiny_model("llama-gqa", vocab_size=len(tokenizer))
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    (root / "calib.txt").write_text(random_text(1, 3000))
    (root / "eval.txt").write_text(random_text(2, 1500))
    (root / "other").mkdir()
    (root / "other" / "other.txt").write_text(random_text(3, 1500))
    (root / "task.jsonl").write_text("".join(json.dumps(r) + "\n" for r in TASK_ROWS))
    (root / "results").mkdir()
    shutil.copy(RESULTS_FIXTURE, root / "results" / "results.json")
    (root / "file.txt").write_text("a user's notes\n")
    (root / "empty_dir").mkdir()
    os.symlink(root / "missing", root / "dangling")
    (root / "readonly").mkdir()
    (root / "readonly" / "kept.txt").write_text("kept\n")
    (root / "readonly").chmod(0o555)
    (root / "data").mkdir()  # the shared data folder: empty, so every default is offline


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: kind and mode, and for files size, modification time and content digest."""
    entries: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            info = path.lstat()
            key = str(path.relative_to(root))
            if stat.S_ISREG(info.st_mode):
                entries[key] = ("file", info.st_mode, info.st_size, info.st_mtime_ns, hashlib.sha1(path.read_bytes()).hexdigest())
            elif stat.S_ISLNK(info.st_mode):
                entries[key] = ("link", os.readlink(path))
            else:
                entries[key] = ("dir", info.st_mode)
    return entries


class Sandbox:
    """The working folder of the cases, put back as it was after every case that changed it."""

    def __init__(self, root: Path, pristine: Path) -> None:
        self.root, self.pristine = root, pristine
        self.clean = _snapshot(root)

    def restore(self) -> None:
        """Remove what a case left and copy the pristine files back (only when anything differs)."""
        if _snapshot(self.root) == self.clean:
            return
        if (self.root / "readonly").is_dir():
            (self.root / "readonly").chmod(0o755)
        for entry in list(self.root.iterdir()):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        for entry in self.pristine.iterdir():
            if entry.is_symlink():
                os.symlink(os.readlink(entry), self.root / entry.name)
            elif entry.is_dir():
                shutil.copytree(entry, self.root / entry.name, symlinks=True)
            else:
                shutil.copy2(entry, self.root / entry.name)
        assert _snapshot(self.root) == self.clean


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Sandbox:
    """The sandbox with a pruned checkpoint (``ckpt``), built once for the module; a pristine copy restores it."""
    root = tmp_path_factory.mktemp("cli-fuzz") / "box"
    root.mkdir()
    _build_sandbox(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("PRUNEFRAME_DATA_DIR", str(root / "data"))
        assert main(["prune", "--model", "model", "--method", "random", "--budget", "0.5", "--calib", "calib.txt", "--out", "ckpt", "--quiet"]) == 0
    pristine = root.parent / "pristine"
    shutil.copytree(root, pristine, symlinks=True)
    return Sandbox(root, pristine)


@pytest.fixture
def box(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    """The sandbox as the working folder, with its empty shared-data folder, and the hub unreachable (nothing is downloaded)."""
    import pruneframe.data.sources as sources

    monkeypatch.chdir(sandbox.root)
    monkeypatch.setenv("PRUNEFRAME_DATA_DIR", str(sandbox.root / "data"))
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sources, "_probe_hub", lambda endpoint, timeout_s: "the hub is out of this test's reach")
    return sandbox


# --------------------------------------------------------------------------- hostile values


#: Values any flag may receive: numbers out of range, odd strings, paths of the wrong kind.
ANY_VALUE = [
    "",
    " ",
    "-1",
    "0",
    "1.5",
    "1e309",
    "nan",
    "-inf",
    "99999999999999999999999999",
    "0x10",
    LONG,
    "a/" + LONG,
    "\udcff\udcfe",  # bytes that are not UTF-8, as Python decodes them from argv
    "ü名🙂\u202e",
    "~nosuchuser/x",
    "../../..",
    "/dev/zero",
    "/dev/null",
    "/proc/pruneframe-out",
    "file.txt",
    "file.txt/sub",
    "empty_dir",
    "dangling",
    "readonly",
    "readonly/out",
    "model",
    "ckpt",
    "results",
    "none",
    "all",
    ",",
    '{"a": 1}',
    "{",
    "=",
    "-",
    "--quiet",
]
NUMBERS = [
    "0",
    "1",
    "2",
    "-3",
    "0.0",
    "0.5",
    "1.0000001",
    "3.7",
    "1e-320",
    "1e12",
    "2e9",
    "999999999",
    "18446744073709551616",
    "nan",
    "inf",
    "true",
    "1,1",
    "0.5,0.5",
]
PATHS_IN = [
    "missing.txt",
    "empty_dir",
    "file.txt",
    "dangling",
    "/dev/zero",
    "/dev/null",
    "/proc/self/nonexistent",
    "model",
    "ckpt",
    "results",
    LONG,
    "a/" + LONG,
]
PATHS_OUT = ["out", "nested/a/b/out", "file.txt", "file.txt/sub", "empty_dir", "dangling", "readonly", "readonly/out", "/proc/pruneframe-out", "/dev/zero"]
PATHS_OUT += ["/dev/null", "model", "ckpt", "results", LONG, "a/" + LONG, "ü名", "\udcff", "", "~nosuchuser/out"]
NAMES = ["random", "magnitude", "nosuch", "random,random", "magnitude,random", "RANDOM", " ", "none", "lora", "distill", "cuda", "cuda:7", "mps", "meta", "cpu"]
NAMES += ["auto", "bf16", "float64", "custom", "wikitext2-2048", "llm-pruner-128", "params", "total"]
JSONS = ["{}", '{"bogus": 1}', '{"seed": 3}', '{"num_windows": -1}', '{"seq_len": 1e9}', "[1, 2]", "null", '{"a": ' * 200 + "1" + "}" * 200, "{oops"]
JSONS += ["random={}", 'random={"removal": "layers"}', "random=[1]", "magnitude=", '{"offload": "cpu", "compute_device": "cuda"}', '{"tokens": 0}']

#: Flags whose values are read as paths of existing inputs, paths to write, numbers, names or JSON.
KINDS = {
    "--config": PATHS_IN,
    "--model": PATHS_IN,
    "--dense": PATHS_IN,
    "--teacher": PATHS_IN,
    "--calib": PATHS_IN + ["embedded", "wikitext-2", "hf:nosuch/nosuch"],
    "--eval-data": PATHS_IN + ["embedded", "eval.txt,eval.txt", "calib.txt"],
    "--recover-data": PATHS_IN + ["embedded", "eval.txt"],
    "--zeroshot": ["none", "task.jsonl", "missing.jsonl", "file.txt.jsonl", "calib.txt", "task.jsonl,task.jsonl"],
    "--out": PATHS_OUT,
    "--method-config": JSONS,
    "--recover-config": JSONS,
    "--suffix": ["_x", "/../../escaped", "a/b", LONG, "..", "\udcff", " "],
    # the recoveries that train (lora, distill) take seconds each: their own tests cover them
    "--recover": ["none", "NONE", "nosuch", "distil", "lora,none", "", " "],
    # submitit and ray start real jobs: their own tests (tests/test_executors.py) cover them
    "--executor": ["local", "LOCAL", "slurm", "nosuch", "", " "],
    "--executor-option": ["partition=gpu", "gpus=1", "nosuch=1", "cluster=moon", "x", "=1", "address=", LONG],
}
NUMBER_FLAGS = {"--budget", "--budgets", "--seed", "--seeds", "--seq-len", "--eval-windows", "--calib-tokens", "--zeroshot-limit", "--recover-tokens"}
NUMBER_FLAGS |= {"--pad-ffn-to", "--threads"}
#: The other names a message may use for a flag (the setting it fills).
ALIASES = {
    "--budget": ["budget"],
    "--budgets": ["budget"],
    "--seed": ["seed"],
    "--seeds": ["seed"],
    "--seq-len": ["seq_len", "window"],
    "--eval-windows": ["num_windows", "window"],
    "--eval-data": ["evaluation", "text source", "overlap"],
    "--calib": ["calibration", "text source", "overlap"],
    "--calib-tokens": ["max_tokens", "calibration"],
    "--zeroshot": ["zeroshot", "task"],
    "--zeroshot-limit": ["limit"],
    "--method": ["method"],
    "--methods": ["method"],
    "--method-config": ["method", "method_settings", "method_configs"],
    "--recover": ["recover", "recovery"],
    "--recover-config": ["recover", "recovery", "recovery_settings"],
    "--recover-tokens": ["recover", "recovery", "tokens"],
    "--recover-data": ["recover", "recovery", "recovery_data"],
    "--eval-compute-device": ["device"],
    "--device": ["device"],
    "--protocol": ["protocol"],
    "--budget-kind": ["budget"],
    "--model": ["model"],
    "--dense": ["model"],
    "--teacher": ["model", "teacher"],
    "--out": ["out"],
    "--config": ["config"],
    "--executor": ["executor"],
    "--executor-option": ["executor", "executor_options"],
}

#: A valid, cheap command line of each subcommand (paths relative to the sandbox).
EVAL_FLAGS = ["--eval-data", "eval.txt", "--seq-len", "16", "--eval-windows", "1", "--zeroshot", "none", "--no-speed"]
BASE: dict[str, list[str]] = {
    "plugins": ["plugins"],
    "prune": ["prune", "--model", "model", "--method", "random", "--budget", "0.5", "--calib", "calib.txt", "--out", "out", "--quiet"],
    "recover": ["recover", "ckpt", "--recover", "none", "--out", "out", "--quiet"],
    "eval": ["eval", "--model", "ckpt", *EVAL_FLAGS, "--out", "out.json", "--quiet"],
    "compare": ["compare", "--model", "model", "--methods", "random", "--budgets", "0.5", "--calib", "calib.txt", *EVAL_FLAGS, "--out", "cmp", "--quiet"],
    "export": ["export", "ckpt", "--out", "out.gguf", "--dtype", "f32", "--no-verify", "--quiet"],
    "report": ["report", "results", "--out", "rep"],
}
#: Flags a case never drops: without them a case would load the real default model.
KEEP = {"--model", "--quiet"}


def _flags(command: str) -> list[argparse.Action]:
    """The subcommand's own optional flags, as its parser declares them (``--help`` left out)."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return [a for a in sub.choices[command]._actions if a.option_strings and a.option_strings[0] not in ("-h", "--help")]


def _values_for(flag: str) -> st.SearchStrategy[str]:
    """Hostile values for ``flag``: mostly of its kind, sometimes anything."""
    typed = KINDS.get(flag) or (NUMBERS if flag in NUMBER_FLAGS else NAMES)
    text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
    return st.one_of(st.sampled_from(typed), st.sampled_from(typed), st.sampled_from(ANY_VALUE), text)


def _drop(argv: list[str], flag: str) -> list[str]:
    """``argv`` without ``flag`` and the value after it (if any)."""
    out, skip = [], False
    for i, token in enumerate(argv):
        if skip:
            skip = False
        elif token == flag:
            skip = i + 1 < len(argv) and not argv[i + 1].startswith("--")
        else:
            out.append(token)
    return out


def _set(argv: list[str], flag: str, value: str | None, joined: bool) -> list[str]:
    """``argv`` with ``flag`` replaced (or added) by ``flag value`` (``flag=value`` when ``joined``; no value for a switch)."""
    out = _drop(argv, flag)
    if value is None:
        return [*out, flag]
    return [*out, f"{flag}={value}"] if joined else [*out, flag, value]


# --------------------------------------------------------------------------- files a case writes


def _nested(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3))


#: Any JSON value (NaN and infinities too), a few levels deep.
HOSTILE_JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=8)), _nested, max_leaves=6)
RAW_FILES = [
    b"",
    b"\xff\xfe\x00garbage",
    b"{",
    b"[" * 600,
    b"a: [1\n",
    b"- just\n- a list\n",
    b"42\n",
    b"methods: {magnitude: 5}\n",
    b"method_configs: 7\n",
    b"evaluation: [1, 2]\n",
    b"evaluation: perplexity\n",
    b"budgets: [true]\n",
    b"seeds: [99999999999999999999999]\n",
    b"a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    + b"".join(b"b%d: &b%d [" % (i, i) + b", ".join([b"*a" if i == 0 else b"*b%d" % (i - 1)] * 10) + b"]\n" for i in range(7)),
    b"evaluation: {perplexity: {sources: 3}}\n",
    b"evaluation: {perplexity: null, zeroshot: {tasks: 5}}\n",
    b"recovery: [{tokens: 5}]\n",
    b"calibration: {data: ''}\n",
    b"out: ''\n",
    b"model: ''\n",
    b"? [1, 2]\n: x\n",
    b"1: 2\n",
]


@st.composite
def config_file(draw: st.DrawFn) -> bytes:
    """A settings file: a valid comparison's with one setting given a hostile value, or raw hostile bytes."""
    if draw(st.booleans()):
        return draw(st.sampled_from(RAW_FILES))
    data: dict[str, Any] = {"methods": ["random"], "budgets": [0.5], "evaluation": {"perplexity": {"num_windows": 1, "seq_len": 16}}}
    keys = ["model", "dtype", "device", "methods", "method_configs", "budgets", "budget_kind", "seeds", "method_seeds", "calibration", "recovery"]
    keys += ["recovery_data", "recovery_methods", "out", "evaluation", "bogus"]
    key = draw(st.sampled_from(keys))
    value = draw(HOSTILE_JSON)
    if key == "evaluation" and draw(st.booleans()):
        data["evaluation"] = {draw(st.sampled_from(["perplexity", "zeroshot", "speed", "size", "nosuch"])): value}
    else:
        data[key] = value
    return json.dumps(data, allow_nan=True).encode() if draw(st.booleans()) else _yaml(data)


def _yaml(data: dict[str, Any]) -> bytes:
    import yaml

    return yaml.safe_dump(data, allow_unicode=True).encode("utf-8", "surrogatepass")


def _json_paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value inside a JSON document."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _json_paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _json_paths(item, (*prefix, index))
    return found


RESULTS = json.loads(RESULTS_FIXTURE.read_text())
RESULT_PATHS = _json_paths(RESULTS)[1:]


@st.composite
def results_file(draw: st.DrawFn) -> bytes:
    """The fixture's ``results.json`` with one value deleted or replaced, or its bytes truncated or garbled."""
    how = draw(st.sampled_from(["replace", "replace", "delete", "truncate", "garble", "raw"]))
    text = RESULTS_FIXTURE.read_bytes()
    if how == "truncate":
        return text[: draw(st.integers(0, len(text) - 1))]
    if how == "garble":
        at = draw(st.integers(0, len(text) - 1))
        return text[:at] + draw(st.binary(min_size=1, max_size=8)) + text[at + 8 :]
    if how == "raw":
        return draw(st.sampled_from(RAW_FILES + [b"[]", b'{"dense": {}, "runs": [1]}', b'{"runs": [null]}', b'{"summary": {"sources": [1]}}']))
    data = json.loads(text)
    path = draw(st.sampled_from(RESULT_PATHS))
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    if how == "delete":
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(HOSTILE_JSON)
    return json.dumps(data, allow_nan=True).encode()


CHECKPOINT_FILES = ["model.safetensors", "config.json", "pruning.json"]
WRONG_JSON = [b"[]", b'{"model_type": "nosuch"}', b'{"model_type": "bert"}', b'{"model_type": "pruneframe_llama", "pruned_family": "os.System"}', b"{}"]


@st.composite
def broken_folder(draw: st.DrawFn) -> Callable[[Path, Path], None]:
    """How to corrupt a copy of a model folder: one of its files deleted, truncated, garbled or replaced by wrong JSON."""
    name = draw(st.sampled_from(CHECKPOINT_FILES))
    how = draw(st.sampled_from(["delete", "truncate", "garble", "wrong"]))
    cut = draw(st.floats(0, 0.99))
    junk = draw(st.binary(min_size=1, max_size=16))
    wrong = draw(st.sampled_from(WRONG_JSON))

    def corrupt(source: Path, target: Path) -> None:
        shutil.copytree(source, target)
        file = target / name
        if not file.exists():
            return
        data = file.read_bytes()
        if how == "delete":
            file.unlink()
        elif how == "truncate":
            file.write_bytes(data[: int(len(data) * cut)])
        elif how == "garble":
            at = int(len(data) * cut)
            file.write_bytes(data[:at] + junk + data[at + len(junk) :])
        else:
            file.write_bytes(wrong)

    corrupt.__name__ = f"{how} {name}"
    return corrupt


# --------------------------------------------------------------------------- one case


@st.composite
def case(draw: st.DrawFn, command: str) -> tuple[list[str], dict[str, Any]]:
    """A command line of ``command`` with one hostile change; returns it and what the case writes first."""
    argv = list(BASE[command])
    setup: dict[str, Any] = {}
    kinds = ["flag", "flag", "flag", "twice"]
    if command in ("compare", "eval"):
        kinds += ["config", "config"]
    if command == "report":
        kinds += ["results", "results", "results"]
    if command in ("recover", "export", "eval", "prune"):
        kinds += ["folder", "folder"]
    if command in ("recover", "export", "report"):
        kinds += ["positional"]
    kind = draw(st.sampled_from(kinds))
    flags = _flags(command)
    named: list[str] = []
    if kind in ("flag", "twice") and flags:
        action = draw(st.sampled_from(flags))
        flag = draw(st.sampled_from(action.option_strings))
        named = [flag]
        if action.nargs == 0:  # a switch
            argv = _set(argv, flag, None, False)
        else:
            value = draw(_values_for(flag))
            named.append(value)
            argv = _set(argv, flag, value, draw(st.booleans()) or value.startswith("-"))
            if kind == "twice":  # given again after it: the later value is the one read
                again = draw(_values_for(flag))
                argv = [*argv, f"{flag}={again}"] if again.startswith("-") else [*argv, flag, again]
                named.append(again)
    elif kind == "config":
        setup["case.yaml"] = draw(config_file())
        argv = [*argv, "--config", "case.yaml"]
        named = ["case.yaml"]
    elif kind == "results":
        setup["results"] = draw(results_file())
        argv = ["report", "case-results", *draw(st.sampled_from([["--out", "rep"], [], ["--figures-only", "--out", "figs"], ["--figures-only"]]))]
        named = ["case-results"]
    elif kind == "positional":  # the folder (or model) the command reads, after "--" so that any text is one
        value = draw(st.one_of(st.sampled_from(PATHS_IN), st.sampled_from(ANY_VALUE)))
        argv = [argv[0], *argv[2:], "--", value]
        named = [value, {"report": "RESULTS_DIR"}.get(command, "CHECKPOINT"), "model"]
    elif kind == "folder":
        setup["folder"] = draw(broken_folder())
        source = "model" if command == "prune" else "ckpt"
        argv = [("case-folder" if token == source else token) for token in argv]
        named = ["case-folder"]
    if draw(st.integers(0, 9)) == 0:  # now and then, drop a flag of the base command line
        droppable = [t for t in argv if t.startswith("--") and t not in KEEP]
        if droppable:
            dropped = draw(st.sampled_from(droppable))
            argv, named = _drop(argv, dropped), [*named, dropped]
    return argv, {"setup": setup, "named": named}


def _write_setup(root: Path, setup: dict[str, Any]) -> None:
    if "case.yaml" in setup:
        (root / "case.yaml").write_bytes(setup["case.yaml"])
    if "results" in setup:
        (root / "case-results").mkdir()
        (root / "case-results" / "results.json").write_bytes(setup["results"])
    if "folder" in setup:
        source = root / ("ckpt" if (root / "ckpt").exists() else "model")
        setup["folder"](source, root / "case-folder")


def _names_the_input(line: str, argv: list[str], named: list[str]) -> bool:
    """Whether the one-line message names an input: what the case changed (a flag, a value, a file), or
    another flag of the command line or the setting it fills (a valid value may not fit the changed one)."""
    values = [t for t in named if t.strip() and not t.startswith("--")]
    if any(value in line or repr(value)[1:-1] in line for value in values):
        return True
    words = []
    for flag in {t.split("=")[0] for t in [*named, *argv] if t.startswith("--")}:
        words += [flag, flag.lstrip("-"), flag.lstrip("-").replace("-", "_"), *ALIASES.get(flag, [])]
    return any(re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", line, re.IGNORECASE) for word in words)


def run_case(box: Sandbox, capfd: pytest.CaptureFixture[str], command: str, argv: list[str], spec: dict[str, Any]) -> None:
    """Run one case and check the exit code, stderr and (on a refusal) that the sandbox is unchanged."""
    TRIED[command] += 1
    try:
        _write_setup(box.root, spec["setup"])
        _check_case(box, capfd, argv, spec)
    finally:
        box.restore()


def _check_case(box: Sandbox, capfd: pytest.CaptureFixture[str], argv: list[str], spec: dict[str, Any]) -> None:
    before = _snapshot(box.root)
    capfd.readouterr()
    try:
        code = main(argv)
    except BaseException as exc:  # a case that raises is the failure this test reports
        pytest.fail(f"{argv!r} ({spec['setup'] and list(spec['setup'])}) raised {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
    err = capfd.readouterr().err
    EXITS.setdefault(argv[0] if argv else "", Counter())[code] += 1
    lines = [line for line in err.splitlines() if line.strip()]
    where = f"{argv!r} with {sorted(spec['setup'])}: exit {code}, stderr {err!r}"
    assert code in EXIT_CODES, where
    assert "Traceback" not in err, where
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("pruneframe"), where
        assert ": error: " in lines[0], where
        assert _names_the_input(lines[0], argv, spec["named"]), where
        assert _snapshot(box.root) == before, f"{where}: the refusal changed the sandbox"
    elif code == 1:
        assert lines and all(line.startswith("pruneframe") for line in lines), where


def _fuzz(command: str, box: Sandbox, capfd: pytest.CaptureFixture[str]) -> None:
    @settings(
        max_examples=CASES[command] * SCALE,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    @given(case(command))
    def check(drawn: tuple[list[str], dict[str, Any]]) -> None:
        argv, spec = drawn
        run_case(box, capfd, command, argv, spec)

    check()


@pytest.mark.parametrize("command", list(CASES))
def test_hostile_command_lines_never_print_a_traceback(command: str, box: Sandbox, capfd: pytest.CaptureFixture[str], record_property) -> None:
    assert main(BASE[command]) == 0, capfd.readouterr().err  # the cases change a command line that works
    box.restore()
    _fuzz(command, box, capfd)
    assert TRIED[command] > 0  # (a small command line, such as plugins', has fewer distinct cases than asked for)
    record_property("cli_fuzz_cases", {command: TRIED[command]})
    exits = ", ".join(f"exit {code}: {n}" for code, n in sorted(EXITS.get(command, Counter()).items()))
    print(f"\ncli fuzz: {TRIED[command]} cases of pruneframe {command} ({exits})")


def test_the_sandbox_catches_a_change(box: Sandbox) -> None:
    """The snapshot the refusals are checked with sees a file rewritten with the same bytes, and a new empty folder."""
    before = _snapshot(box.root)
    notes = box.root / "file.txt"
    text = notes.read_bytes()
    os.utime(notes, ns=(0, 0))
    assert _snapshot(box.root) != before
    notes.write_bytes(text)
    box.restore()
    (box.root / "new").mkdir()
    assert _snapshot(box.root) != box.clean
    box.restore()
    assert _snapshot(box.root) == box.clean
