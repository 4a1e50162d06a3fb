"""Comparisons whose runs are jobs: submitit's local executor and a local Ray instance against the local executor.

Each engine runs the small comparison of :func:`test_compare.compare_settings` (two methods, two
budgets, fp32) as jobs in processes of their own; every record has the local executor's cache key and
perplexities, and the report written from the records is the local executor's, byte for byte. A job
killed in the middle of its run leaves no record and is the only one a rerun submits; a second driver on
the folder is refused; ``--dry-run`` lists the pending runs with their keys; an unknown executor option,
a missing extra and ``--no-wait`` where jobs end with the driver are refused in one line. With Slurm's
commands stood in for by scripts, ``--no-wait`` submits and returns, ``--collect`` follows the queued
jobs, and the options become the job array's parameters.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
import torch

from pruneframe.cli import main
from pruneframe.cli.output_paths import folder_lock
from pruneframe.harness.config import CompareConfig
from pruneframe.harness.executors.base import JobCall
from pruneframe.harness.executors.driver import dispatch
from pruneframe.harness.executors.job import run_job
from pruneframe.harness.executors.options import SubmititOptions
from pruneframe.harness.executors.submitit_executor import SubmititExecutor
from pruneframe.harness.prepare import prepare
from pruneframe.pipeline.host import PluginHost
from test_compare import compare_settings, write_config

pytestmark = pytest.mark.subprocess

RUN_IDS = ["random-0.8-s0", "magnitude-0.8-s0", "random-0.5-s0", "magnitude-0.5-s0"]
SUBMITIT_LOCAL = ["--executor", "submitit", "--executor-option", "cluster=local", "--executor-option", "array_parallelism=2"]
#: The report's columns that measure the machine rather than the records' numbers.
MEASURED = ("prune time (s)", "peak RSS MB (+ while pruning)")


@pytest.fixture(autouse=True)
def _signal_handlers_restored():
    """The engines install signal handlers in the test process; later tests' children would inherit them."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def settings(ws: dict[str, Path], out: Path) -> dict[str, Any]:
    """The small comparison, without the speed timings (they measure the machine, not the model)."""
    data = compare_settings(ws, out)
    data["evaluation"]["speed"] = None
    return data


def run_cli(ws: dict[str, Path], out: Path, *flags: str) -> int:
    """``pruneframe compare`` of :func:`settings` into ``out`` with ``flags``, in this process."""
    config = write_config(out.parent / f"{out.name}.json", settings(ws, out))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRUNEFRAME_DATA_DIR", str(ws["data_dir"]))
        return main(["compare", "--config", str(config), "--quiet", *flags])


@pytest.fixture(scope="module")
def local_out(workspace: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small comparison through the local executor: the reference."""
    out = tmp_path_factory.mktemp("local") / "out"
    assert run_cli(workspace, out) == 0
    return out


@pytest.fixture(scope="module")
def submitit_out(workspace: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small comparison as jobs of submitit's local executor, two at a time."""
    out = tmp_path_factory.mktemp("submitit") / "out"
    assert run_cli(workspace, out, *SUBMITIT_LOCAL) == 0
    return out


@pytest.fixture(scope="module")
def ray_out(workspace: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small comparison as tasks of a Ray instance on two CPUs, started for it and stopped after."""
    import ray

    out = tmp_path_factory.mktemp("ray") / "out"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert run_cli(workspace, out, "--executor", "ray", "--executor-option", "num_cpus=1") == 0
    finally:
        ray.shutdown()
    return out


def records(out: Path) -> dict[str, dict[str, Any]]:
    """Run id -> record of every file under ``<out>/runs``."""
    return {path.stem: json.loads(path.read_text()) for path in sorted((out / "runs").glob("*.json"))}


def table(out: Path) -> list[list[str]]:
    """The results table's cells, the measured columns blanked."""
    lines = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("| ")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    measured = [i for i, name in enumerate(cells[0]) if name in MEASURED]
    return [[("-" if i in measured and row is not cells[0] else c) for i, c in enumerate(row)] for row in cells]


@pytest.mark.parametrize("engine", ["submitit", "ray"])
def test_jobs_write_the_local_records_and_the_same_report(engine: str, local_out: Path, workspace: dict[str, Path], request, capsys) -> None:
    out = request.getfixturevalue(f"{engine}_out")
    local, remote = records(local_out), records(out)
    assert sorted(remote) == sorted(local) == sorted(["dense", *RUN_IDS])
    for run_id, record in local.items():
        other = remote[run_id]
        assert other["status"] == "ok" and other["cache_key"] == record["cache_key"], run_id  # the executor is in no key
        for label, source in record["eval"]["perplexity"]["sources"].items():
            mine = other["eval"]["perplexity"]["sources"][label]
            assert (mine["ppl"], mine["window_nll"]) == (source["ppl"], source["window_nll"]), (run_id, label)
        if run_id != "dense":
            assert other["prune"]["kept_prunable_params"] == record["prune"]["kept_prunable_params"]
    assert table(out) == table(local_out)
    results = json.loads((out / "results.json").read_text())
    assert "executor" not in results["config"] and "executor_options" not in results["config"]
    # the local executor on the jobs' folder: every run cached, and the same report, byte for byte
    report = (out / "results.md").read_bytes()
    capsys.readouterr()
    assert run_cli(workspace, out) == 0
    assert "(runs: 0 computed, 4 cached, 0 failed; dense cached)" in capsys.readouterr().out
    assert (out / "results.md").read_bytes() == report


def dying_job(victim: str, call: JobCall) -> dict[str, str]:
    """:func:`run_job`, but the job of ``victim`` kills its own process once the run is computed, before its record is written."""
    from pruneframe.harness import runner

    finish = runner.finish_record

    def killed(path: Path, record: dict[str, Any]) -> dict[str, Any]:
        if record["run_id"] == victim:
            os.kill(os.getpid(), signal.SIGKILL)
        return finish(path, record)

    runner.finish_record = killed
    return run_job(call)


def test_a_killed_job_leaves_no_record_and_only_it_is_redone(local_out: Path, workspace: dict[str, Path], tmp_path: Path, capsys, monkeypatch) -> None:
    out = tmp_path / "out"
    shutil.copytree(local_out, out)
    victim = "magnitude-0.5-s0"
    (out / "runs" / f"{victim}.json").unlink()
    before = {path.name: path.stat().st_mtime_ns for path in (out / "runs").iterdir()}
    monkeypatch.setenv("PRUNEFRAME_DATA_DIR", str(workspace["data_dir"]))
    config = CompareConfig.model_validate({**settings(workspace, out), "executor": "submitit", "executor_options": {"cluster": "local"}})
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the job processes cannot import this test module
    try:
        dispatched = dispatch(config, prepare(config, PluginHost.create()), out, progress=False, job=functools.partial(dying_job, victim), poll_s=0.2)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    outcome = dispatched.outcome
    assert [job for job, _ in dispatched.submitted] == [victim] and list(outcome.failed) == [victim]
    assert "ended without this record" in outcome.failed[victim] and "log: " in outcome.failed[victim]
    assert json.loads((out / "runs" / f"{victim}.json").read_text())["status"] == "failed"  # marked, never reused
    assert not [p for p in (out / "runs").iterdir() if p.name.startswith(".")]  # no half-written file
    assert {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir() if p.name != f"{victim}.json"} == before
    capsys.readouterr()
    assert run_cli(workspace, out, *SUBMITIT_LOCAL) == 0
    assert "(runs: 1 computed, 3 cached, 0 failed; dense cached)" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir() if p.name != f"{victim}.json"} == before
    assert records(out)[victim]["eval"] == records(local_out)[victim]["eval"]
    assert table(out) == table(local_out)


def test_collect_and_dry_run_submit_nothing(local_out: Path, workspace: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    shutil.copytree(local_out, out)
    report = (out / "results.md").read_bytes()
    (out / "results.md").unlink()
    assert run_cli(workspace, out, "--executor", "submitit", "--collect") == 0  # every run there: the report
    assert (out / "results.md").read_bytes() == report
    gone = json.loads((out / "runs" / "random-0.5-s0.json").read_text())
    (out / "runs" / "random-0.5-s0.json").unlink()
    capsys.readouterr()
    assert run_cli(workspace, out, *SUBMITIT_LOCAL, "--dry-run") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("dry run: executor submitit, 1 jobs to run (1 of 5 records")
    assert lines[1:] == [f"random-0.5-s0\trandom-0.5-s0\t{gone['cache_key']}"]
    assert run_cli(workspace, out, "--executor", "submitit", "--collect") == 3  # a run missing: no report
    assert "pending random-0.5-s0: not submitted" in capsys.readouterr().out
    assert not list(out.glob("jobs/*.pkl")) and not (out / "runs" / "random-0.5-s0.json").exists()


def test_a_second_driver_on_the_folder_is_refused(workspace: dict[str, Path], tmp_path: Path, capfd) -> None:
    out = tmp_path / "out"
    with folder_lock(out):  # as a driver running in another process holds it
        assert run_cli(workspace, out, *SUBMITIT_LOCAL) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and f"--out {str(out)!r} is being written by another pruneframe process" in err
    assert list(out.iterdir()) == []  # nothing submitted


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--executor", "submitit", "--executor-option", "partitoin=gpu"], "'partitoin'"),
        (["--executor-option", "gpus=1"], "executor 'local' has no option 'gpus'"),
        (["--executor", "ray", "--executor-option", "num_gpus=many"], "num_gpus"),
        (["--executor", "slurm"], "executor"),
        (["--executor", "ray", "--no-wait"], "--no-wait"),
        (["--executor", "submitit", "--executor-option", "cluster=local", "--no-wait"], "--no-wait"),
        (["--collect"], "--collect"),
    ],
)
def test_bad_executor_settings_are_refused_in_one_line(flags: list[str], named: str, workspace: dict[str, Path], tmp_path: Path, capfd) -> None:
    assert run_cli(workspace, tmp_path / "out", *flags) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pruneframe compare: error: ") and named in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("engine, extra", [("submitit", "slurm"), ("ray", "ray")])
def test_a_missing_extra_is_refused_naming_it(engine: str, extra: str, workspace: dict[str, Path], tmp_path: Path, monkeypatch, capfd) -> None:
    monkeypatch.setitem(sys.modules, engine, None)  # import fails as if it were not installed
    assert run_cli(workspace, tmp_path / "out", "--executor", engine) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and f"pip install 'pruneframe[{extra}]'" in err, err


def fake_slurm(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``srun``, ``sbatch`` (which keeps the script it is given and answers job 4242) and ``sacct`` (which reports
    every job in the state written in ``<folder>/state``) first on ``PATH``; returns ``folder``."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True)
    (folder / "state").write_text("RUNNING")
    scripts = {
        "srun": "exit 0",
        "sbatch": f'cp "$1" {folder}/script.sh\necho "Submitted batch job 4242"',
        "sacct": f'echo "JobID|State|NodeList"\nfor id in 4242 4242_0 4242_1 4242_2 4242_3; do echo "$id|$(cat {folder}/state)|node1"; done',
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return folder


def test_no_wait_submits_and_collect_follows_the_queued_jobs(local_out: Path, workspace: dict[str, Path], tmp_path: Path, monkeypatch, capsys) -> None:
    """With Slurm's commands stood in for: ``--no-wait`` submits the missing run and returns; ``--collect`` and a
    rerun follow its job while Slurm holds it, and forget it once it ended without a record."""
    fake_slurm(tmp_path, monkeypatch)
    out = tmp_path / "out"
    shutil.copytree(local_out, out)
    (out / "runs" / "random-0.5-s0.json").unlink()
    slurm = ["--executor", "submitit", "--executor-option", "cluster=slurm"]
    capsys.readouterr()
    assert run_cli(workspace, out, *slurm, "--no-wait") == 0
    printed = capsys.readouterr().out
    assert "submitted random-0.5-s0: job 4242" in printed and "pending random-0.5-s0: RUNNING 4242" in printed
    assert json.loads((out / "jobs" / "submitted.json").read_text()) == {"random-0.5-s0": "4242"}
    (tmp_path / "script.sh").unlink()
    assert run_cli(workspace, out, *slurm, "--collect") == 3
    assert "pending random-0.5-s0: RUNNING 4242" in capsys.readouterr().out
    (tmp_path / "state").write_text("CANCELLED")
    assert run_cli(workspace, out, *slurm, "--collect") == 3
    assert "pending random-0.5-s0: not submitted" in capsys.readouterr().out
    assert not (tmp_path / "script.sh").exists()  # --collect submits nothing


def test_options_become_the_slurm_job_arrays_parameters(tmp_path: Path, monkeypatch) -> None:
    """With ``sbatch`` standing in for Slurm: one array of every cell, its parallelism, partition and resources."""
    fake_slurm(tmp_path, monkeypatch)
    options = SubmititOptions(cluster="slurm", partition="gpu", account="lab", gpus=1, cpus=8, mem_gb=32, timeout_min=90, array_parallelism=2, setup=["true"])
    executor = SubmititExecutor(options, tmp_path / "out")
    assert executor.max_running is None and executor.detached
    calls = [JobCall(run_id, {}, str(tmp_path / "out"), {}, {}, str(tmp_path)) for run_id in RUN_IDS]
    jobs = executor.submit(calls)
    assert [job.job_id for job in jobs] == [f"4242_{i}" for i in range(4)]
    script = (tmp_path / "script.sh").read_text()
    for line in ("--array=0-3%2", "--partition=gpu", "--account=lab", "--gpus-per-node=1", "--cpus-per-task=8", "--mem=32GB", "--time=90"):
        assert f"#SBATCH {line}\n" in script, line
    assert json.loads((tmp_path / "out" / "jobs" / "submitted.json").read_text()) == {r: f"4242_{i}" for i, r in enumerate(RUN_IDS)}


def test_local_jobs_run_torch_on_the_cpus_they_were_given(tmp_path: Path, monkeypatch) -> None:
    """Local processes are not confined to CPUs: each job sets torch's threads to its ``cpus`` option."""
    executor = SubmititExecutor(SubmititOptions(cluster="local", cpus=3), tmp_path)
    submitted: list[JobCall] = []
    monkeypatch.setattr(executor.executor, "map_array", lambda fn, calls: submitted.extend(calls) or [])
    executor.submit([JobCall("dense", {}, str(tmp_path), {}, {}, str(tmp_path))])
    assert [call.threads for call in submitted] == [3]
    before = torch.get_num_threads()
    try:
        with pytest.raises(Exception):  # a model folder that is not there: the job fails after setting its threads
            run_job(JobCall("dense", {"model": str(tmp_path / "absent")}, str(tmp_path), {}, {}, str(tmp_path), threads=1))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
