"""The page-layout reading behind the llama.cpp timing protocol's placements."""

from __future__ import annotations

import mmap
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from pruneframe.export.pagemap import count_runs, physical_runs


def test_count_runs_counts_breaks_between_consecutive_frames() -> None:
    """A run continues only while each frame is the previous one plus one."""
    assert count_runs([]) == 0
    assert count_runs([7]) == 1
    assert count_runs([5, 6, 7, 10, 11, 3]) == 3
    assert count_runs([4, 3, 2]) == 3  # descending frames are not contiguous in file order


@given(st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=20))
def test_count_runs_recovers_the_run_lengths_it_was_built_from(lengths: list[int]) -> None:
    """Runs laid out with gaps between them are counted one each, whatever their lengths."""
    frames, start = [], 1000
    for n in lengths:
        frames += range(start, start + n)
        start += n + 7  # a gap: the next run does not continue this one
    assert count_runs(frames) == len(lengths)


def test_physical_runs_of_a_file_lies_between_one_and_its_page_count(tmp_path: Path) -> None:
    """Where the frame numbers can be read the answer is a run count; elsewhere ``None``, never a guess."""
    pages = 16
    path = tmp_path / "weights.bin"
    path.write_bytes(bytes(range(256)) * (pages * mmap.PAGESIZE // 256))
    runs = physical_runs(path)
    assert runs is None or 1 <= runs <= pages
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    assert physical_runs(empty) is None
