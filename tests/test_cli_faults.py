"""Faults around a command's output: Ctrl-C, a read-only destination, two comparisons into one folder, a full disk.

- SIGINT in the middle of ``prune``, ``recover`` and ``export`` (in a subprocess, paused at a known point
  of the work or of the write) leaves ``--out`` absent or as it was, prints one line, ``interrupted``,
  and exits 130.
- A destination where nothing can be created is refused before any work starts.
- A second comparison into a folder that one is writing is refused naming the folder, and the first
  one's records stay whole.
- A full disk while the output is written (the write raising ``OSError(ENOSPC)``) leaves the previous
  output intact and names the cause in one line (exit 1).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pruneframe.checkpoint as checkpoint
import pruneframe.util.io as io_module
from pruneframe.cli import main
from pruneframe.cli.output_paths import folder_lock
from workspace_files import prune_flags, cli_flags

#: The exit code after Ctrl-C.
INTERRUPTED = 130

#: Run the command line with a pause at one point: the pause writes the marker file, then sleeps (or, with a
#: go file named, waits for it). Points: "prune" (before the prune starts), "save" (inside the checkpoint's
#: temporary folder, its weights written), "gguf" (the GGUF file's tensors written) and "dense" (the
#: comparison's dense record, after its folder is locked).
PAUSED_RUN = """
import sys, time, pathlib
marker, point, go = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
def pause():
    marker.write_text("paused")
    deadline = time.time() + 120
    while time.time() < deadline and not (go and pathlib.Path(go).exists()):
        time.sleep(0.05)
if point == "prune":
    import pruneframe.pipeline.session as session
    run = session.PruneSession.run
    def paused(self, *args, **kwargs):
        pause()
        return run(self, *args, **kwargs)
    session.PruneSession.run = paused
elif point == "save":
    import pruneframe.checkpoint as checkpoint
    write = checkpoint.write_json_atomic
    def paused(path, *args, **kwargs):
        pause()
        return write(path, *args, **kwargs)
    checkpoint.write_json_atomic = paused
elif point == "gguf":
    import gguf
    write = gguf.GGUFWriter.write_tensors_to_file
    def paused(self, *args, **kwargs):
        write(self, *args, **kwargs)
        pause()
    gguf.GGUFWriter.write_tensors_to_file = paused
elif point == "dense":
    import pruneframe.harness.runner as runner
    dense = runner.run_dense
    def paused(*args, **kwargs):
        pause()
        return dense(*args, **kwargs)
    runner.run_dense = paused
from pruneframe.cli import main
sys.exit(main(sys.argv[4:]))
"""


def state(path: Path) -> dict[str, str] | None:
    """The files under ``path`` (or the file itself) by relative name with their SHA-256; ``None`` when it is absent."""
    if not path.exists():
        return None
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path.parent)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def leftovers(folder: Path) -> list[str]:
    """Temporary siblings a writer left in ``folder`` (their names start with a dot)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --------------------------------------------------------------------------- Ctrl-C


def interrupted(tmp_path: Path, point: str, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Start ``argv`` paused at ``point``, send SIGINT once it is there, and return the finished process."""
    marker = tmp_path / f"paused-{point}"
    marker.unlink(missing_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-c", PAUSED_RUN, str(marker), point, "", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
        # an ignored SIGINT is inherited, and Python then leaves it ignored: start from the default disposition
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 300
    while not marker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists(), process.communicate()[1][-3000:]
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def assert_interrupted(done: subprocess.CompletedProcess[str], command: str) -> None:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == INTERRUPTED, done.stderr[-3000:]
    assert lines == [f"pruneframe {command}: interrupted"], done.stderr[-3000:]


@pytest.mark.subprocess
@pytest.mark.parametrize("point", ["prune", "save"])
def test_ctrl_c_during_prune_leaves_no_output_or_the_previous_one(ws: dict[str, Path], tmp_path: Path, point: str) -> None:
    env = {"PRUNEFRAME_DATA_DIR": str(ws["data_dir"])}
    fresh = tmp_path / "fresh"
    assert_interrupted(interrupted(tmp_path, point, prune_flags(ws, fresh), env), "prune")
    assert not fresh.exists()

    previous = tmp_path / "previous"
    assert main(prune_flags(ws, previous, "0.8")) == 0
    before = state(previous)
    assert_interrupted(interrupted(tmp_path, point, [*prune_flags(ws, previous, "0.5"), "--overwrite"], env), "prune")
    assert state(previous) == before
    assert leftovers(tmp_path) == []


@pytest.mark.subprocess
def test_ctrl_c_during_recover_and_export_leaves_the_previous_output(ws: dict[str, Path], exportable: Path, tmp_path: Path) -> None:
    env = {"PRUNEFRAME_DATA_DIR": str(ws["data_dir"])}
    source = tmp_path / "ckpt"
    assert main(prune_flags(ws, source)) == 0
    healed = tmp_path / "healed"
    recover = ["recover", str(source), "--recover", "none", "--out", str(healed), "--quiet"]
    assert_interrupted(interrupted(tmp_path, "save", recover, env), "recover")
    assert not healed.exists()
    assert main(recover) == 0
    before = state(healed)
    assert_interrupted(interrupted(tmp_path, "save", [*recover, "--overwrite"], env), "recover")
    assert state(healed) == before

    gguf_file = tmp_path / "model.gguf"
    export = ["export", str(exportable), "--out", str(gguf_file), "--dtype", "f32", "--no-verify", "--quiet"]
    assert_interrupted(interrupted(tmp_path, "gguf", export, env), "export")
    assert not gguf_file.exists()
    assert main(export) == 0
    before = state(gguf_file)
    assert_interrupted(interrupted(tmp_path, "gguf", [*export, "--dtype", "f16", "--overwrite"], env), "export")
    assert state(gguf_file) == before
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------- a destination nothing can be created in


def test_a_read_only_destination_is_refused_before_any_work(ws: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd) -> None:
    import pruneframe.cli.prune_cmd as prune_cmd

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root writes through permission bits: the file system refuses instead, as a read-only one would
        real_mkdir = os.mkdir

        def read_only(path, *args, **kwargs):
            if str(path).startswith(str(locked)):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(os, "mkdir", read_only)

    def no_work(*args, **kwargs):
        raise AssertionError("the model was loaded before the destination was checked")

    monkeypatch.setattr(prune_cmd, "load_dense", no_work)
    try:
        for out in (locked / "ckpt", locked / "a" / "b" / "ckpt", Path("/proc/pruneframe-ckpt")):
            assert main(prune_flags(ws, out)) == 2
            err = capfd.readouterr().err
            assert err.count("\n") == 1 and f"--out {str(out)!r}: nothing can be written in" in err, err
            assert "Read-only file system" in err or "Permission denied" in err or "No such file or directory" in err
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


# --------------------------------------------------------------------------- two comparisons into one folder


def test_a_second_comparison_into_a_folder_being_written_is_refused(ws: dict[str, Path], tmp_path: Path, capfd) -> None:
    out = tmp_path / "results"
    flags = cli_flags("compare", ws, out, "--methods", "random", "--budgets", "0.5")
    with folder_lock(out):  # as a comparison running in another process holds it
        assert main(flags) == 2
        err = capfd.readouterr().err
        assert err.count("\n") == 1 and f"--out {str(out)!r} is being written by another pruneframe process" in err
        assert list(out.iterdir()) == []
    assert main(flags) == 0  # free again once the other one ends


@pytest.mark.subprocess
def test_two_comparisons_at_once_one_is_refused_and_the_records_stay_whole(ws: dict[str, Path], tmp_path: Path, capfd) -> None:
    out = tmp_path / "results"
    flags = cli_flags("compare", ws, out, "--methods", "random", "--budgets", "0.5")
    marker, go = tmp_path / "paused", tmp_path / "go"
    first = subprocess.Popen(
        [sys.executable, "-c", PAUSED_RUN, str(marker), "dense", str(go), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PRUNEFRAME_DATA_DIR": str(ws["data_dir"])},
    )
    try:
        deadline = time.time() + 300
        while not marker.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert marker.exists(), first.communicate()[1][-3000:]
        assert main(flags) == 2  # the second one, while the first holds the folder
        assert "is being written by another pruneframe process" in capfd.readouterr().err
    finally:
        go.write_text("go")
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert [r["run_id"] for r in results["runs"]] == ["random-0.5-s0"]
    for record in (out / "runs").glob("*.json"):
        assert json.loads(record.read_text())["status"] == "ok"


# --------------------------------------------------------------------------- a full disk


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_during_the_save_keeps_the_previous_checkpoint(ws: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd) -> None:
    out = tmp_path / "ckpt"
    assert main(prune_flags(ws, out, "0.8")) == 0
    capfd.readouterr()
    before = state(out)
    monkeypatch.setattr(checkpoint, "write_json_atomic", disk_full)  # the last file of the folder: the weights are written
    assert main([*prune_flags(ws, out, "0.5"), "--overwrite"]) == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and f"--out {str(out)!r}: could not be written (No space left on device)" in err, err
    assert state(out) == before and leftovers(tmp_path) == []


def test_a_full_disk_keeps_the_previous_eval_record_gguf_file_and_results(
    ws: dict[str, Path], exportable: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd
) -> None:
    record = tmp_path / "eval.json"
    gguf_file = tmp_path / "model.gguf"
    results = tmp_path / "results"
    eval_flags = [*cli_flags("eval", ws, record), "--overwrite"]
    export_flags = ["export", str(exportable), "--out", str(gguf_file), "--dtype", "f32", "--no-verify", "--quiet", "--overwrite"]
    compare_flags = [*cli_flags("compare", ws, results, "--methods", "random", "--budgets", "0.5"), "--overwrite"]
    for flags in (eval_flags, export_flags, compare_flags):
        assert main(flags) == 0
    capfd.readouterr()
    before = {path: state(path) for path in (record, gguf_file, results)}
    monkeypatch.setattr(io_module.os, "fsync", disk_full)  # every atomic text write flushes its file to disk
    import gguf

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", disk_full)
    for flags, path in ((eval_flags, record), (export_flags, gguf_file), (compare_flags, results)):
        assert main(flags) == 1, flags
        err = capfd.readouterr().err
        assert err.count("\n") == 1 and f"{str(path)!r}: could not be written (No space left on device)" in err, err
    assert {path: state(path) for path in (record, gguf_file, results)} == before
    assert leftovers(tmp_path) == []
