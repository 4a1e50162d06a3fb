"""Shared pytest configuration: hypothesis profiles and the fixtures several test modules use."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

# --- hypothesis profiles ---------------------------------------------------------------------------
# Select with HYPOTHESIS_PROFILE=ci|dev (default dev). "ci" runs 300 examples per property.
from hypothesis import settings

settings.register_profile("ci", max_examples=300, deadline=None, derandomize=True, print_blob=True)
settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile("stress", max_examples=2000, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# ``dtype: auto`` follows the hardware (bf16 where native); the suite's exactness checks are written for
# float32, so every test (and every command-line subprocess it starts) sees an emulating machine unless
# it mocks the probe itself (tests/test_devices.py).
os.environ["PRUNEFRAME_NATIVE_BF16"] = "0"


def pytest_report_header(config) -> str:
    """Show the active hypothesis profile in the pytest header."""
    return f"hypothesis profile: {settings.get_current_profile_name()} (set HYPOTHESIS_PROFILE=ci|dev)"


# --- end of hypothesis profiles --------------------------------------------------------------------


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The shared, read-only test workspace (see :func:`workspace_files.make_workspace`), built once per session."""
    from workspace_files import make_workspace

    return make_workspace(tmp_path_factory.mktemp("ws"))


@pytest.fixture(scope="session")
def recovery_workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A workspace of its own with ``recover``: a recovery text disjoint from the calibration and evaluation texts."""
    from workspace_files import make_workspace, random_text

    paths = make_workspace(tmp_path_factory.mktemp("ws-recovery"))
    paths["recover"] = paths["calib"].parent / "recover.txt"
    paths["recover"].write_text(random_text(4, 2000))
    return paths


@pytest.fixture
def ws(workspace: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """The workspace, with an empty shared-data folder so defaults never reach real data."""
    monkeypatch.setenv("PRUNEFRAME_DATA_DIR", str(workspace["data_dir"]))
    return workspace


@pytest.fixture(scope="module")
def exportable(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama with a tokenizer a GGUF file can carry, saved as a checkpoint folder."""
    from pruneframe import checkpoint
    from pruneframe.testing import tiny_model
    from workspace_files import bpe_tokenizer

    folder = tmp_path_factory.mktemp("exportable") / "ckpt"
    tokenizer = bpe_tokenizer()
    checkpoint.save(folder, tiny_model("llama-gqa", vocab_size=len(tokenizer)), {"method": "hand-made"}, tokenizer=tokenizer)
    return folder


def load_benchmark(name: str) -> ModuleType:
    """The script ``benchmarks/<name>.py`` loaded as a module (the benchmarks folder is not a package).

    The folder goes on ``sys.path`` first, as when the script runs, so its ``from common import ...`` resolves.
    """
    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """The command-line fuzz test's cases tried per subcommand (``cli_fuzz_cases`` properties; also under xdist)."""
    tried: dict[str, int] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) != "call":  # every phase's report carries the properties
                continue
            for name, value in getattr(report, "user_properties", []):
                if name == "cli_fuzz_cases":
                    for command, count in value.items():
                        tried[command] = tried.get(command, 0) + count
    if tried:
        terminalreporter.section("cli fuzz: cases tried per subcommand")
        terminalreporter.write_line(", ".join(f"{command} {count}" for command, count in tried.items()) + f" (total {sum(tried.values())})")
