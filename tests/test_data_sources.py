"""Text sources (pruneframe.data.sources / embedded) and token windows (pruneframe.data.windows)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny import tiny_tokenizer
from transformers import PreTrainedTokenizerFast

from pruneframe.data import sources
from pruneframe.data import installed
from pruneframe.data.embedded import EMBEDDED_SPLITS, embedded_topics
from pruneframe.data.halves import split_halves
from pruneframe.data.sources import DataSourceError, TextSource, check_disjoint, resolve_text
from pruneframe.data.windows import calibration_windows, count_tokens, token_windows

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """A tiny byte-level BPE tokenizer trained in code (every string is tokenizable)."""
    return tiny_tokenizer("tiny-bpe-data")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the hub look unreachable, so no test ever waits on the network."""
    monkeypatch.setattr(sources, "hub_reachable", lambda timeout_s=3.0: (False, "hub unreachable (test)"))


@pytest.fixture
def empty_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PRUNEFRAME_DATA_DIR pointing at an empty folder."""
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("PRUNEFRAME_DATA_DIR", str(root))
    return root


# --------------------------------------------------------------------------- local files


def test_txt_file_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("alpha beta\ngamma\n", encoding="utf-8")
    source = resolve_text(str(path))
    assert source.text == "alpha beta\ngamma\n"
    assert source.split == "file"
    assert source.origin == str(path.resolve())
    assert len(source.fingerprint) == 16
    assert source.describe() == {
        "name": str(path),
        "origin": str(path.resolve()),
        "split": "file",
        "fingerprint": source.fingerprint,
        "chars": len(source.text),
        "domain": f"folder:{tmp_path.resolve()}",
    }


def test_jsonl_file_joins_text_fields(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(["one", "two"])) + "\n")
    assert resolve_text(str(path)).text == "one\n\ntwo"


def test_jsonl_without_text_field_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"body": "no"}\n')
    with pytest.raises(DataSourceError, match=r"bad\.jsonl:2"):
        resolve_text(str(path))


def test_folder_concatenates_files_of_the_split_in_sorted_order(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "b.test.txt").write_text("second")
    (folder / "a.test.raw").write_text("first")
    (folder / "a.valid.tokens").write_text("calibration only")
    (folder / "ignored.csv").write_text("x")
    test = resolve_text(str(folder), "test")
    assert test.text == "first\n\nsecond"
    assert test.split == "test"
    assert resolve_text(str(folder), "validation").text == "calibration only"
    with pytest.raises(DataSourceError, match="no file for split 'train'"):
        resolve_text(str(folder), "train")


def test_folder_of_neutral_files_uses_all(tmp_path: Path) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "2.txt").write_text("b")
    (folder / "1.txt").write_text("a")
    assert resolve_text(str(folder)).text == "a\n\nb"


# --------------------------------------------------------------------------- named corpora


def test_unreachable_source_lists_every_path_tried(empty_data_dir: Path, offline: None) -> None:
    with pytest.raises(DataSourceError) as info:
        resolve_text("wikitext-2", "test")
    message = str(info.value)
    assert str(empty_data_dir / "wikitext-2" / "wiki.test.raw") in message
    assert str(empty_data_dir / "wikitext-2" / "wiki.test.tokens") in message
    assert "wikitext/wikitext-2-raw-v1" in message and "hub unreachable (test)" in message
    assert "PRUNEFRAME_DATA_DIR" in message and "local file or folder" in message and "online" in message


def test_validation_split_reads_tokens_file_from_data_dir(empty_data_dir: Path) -> None:
    folder = empty_data_dir / "wikitext-2"
    folder.mkdir()
    (folder / "wiki.valid.tokens").write_text(" = Title = \n some <unk> text \n")
    source = resolve_text("wikitext-2", "validation")
    assert source.split == "validation"
    assert source.origin == str((folder / "wiki.valid.tokens").resolve())
    assert resolve_text("wikitext2", "calibration").fingerprint == source.fingerprint


def test_unknown_name_and_hf_ids_fail_fast_offline(empty_data_dir: Path, offline: None) -> None:
    with pytest.raises(DataSourceError, match="none of them"):
        resolve_text("no-such-corpus")
    with pytest.raises(DataSourceError, match="owner/name:cfg"):
        resolve_text("hf:owner/name:cfg")
    with pytest.raises(DataSourceError, match="unknown split 'dev'"):
        resolve_text("wikitext-2", "dev")


@pytest.mark.skipif(not (SHARED_DATA / "wikitext-2").is_dir(), reason="shared data folder absent")
def test_wikitext_alias_uses_shared_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRUNEFRAME_DATA_DIR", str(SHARED_DATA))
    test = resolve_text("wikitext-2", "test")
    calib = resolve_text("wikitext-2", "validation")
    assert Path(test.origin).name == "wiki.test.raw"
    assert Path(calib.origin).name == "wiki.valid.tokens"
    check_disjoint(calib, test)


# --------------------------------------------------------------------------- embedded + disjointness


def test_embedded_splits_are_disjoint_and_balanced() -> None:
    calib_topics, test_topics = (set(embedded_topics(s)) for s in EMBEDDED_SPLITS)
    assert calib_topics and test_topics and not calib_topics & test_topics
    calib, test = resolve_text("embedded", "calibration"), resolve_text("embedded", "test")
    assert calib.split == "calibration" and test.split == "test"
    assert 0.3 < len(calib.text) / (len(calib.text) + len(test.text)) < 0.7
    check_disjoint(calib, test, samples=400)
    assert resolve_text("embedded", "test").fingerprint == test.fingerprint


def test_check_disjoint_rejects_same_source() -> None:
    test = resolve_text("embedded", "test")
    with pytest.raises(ValueError, match="same source"):
        check_disjoint(test, test)


def test_check_disjoint_catches_a_copied_passage() -> None:
    test = resolve_text("embedded", "test")
    calib = resolve_text("embedded", "calibration")
    leaked = TextSource(name="leaky", origin="memory", split="calibration", text=calib.text + test.text[:5000], fingerprint="x")
    with pytest.raises(ValueError, match="overlaps calibration"):
        check_disjoint(leaked, test)


# --------------------------------------------------------------------------- windows


def test_token_windows_shape_offset_and_error(tokenizer: PreTrainedTokenizerFast) -> None:
    text = "the quick brown fox jumps over the lazy dog. " * 40
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])
    total = count_tokens(text, tokenizer)
    assert total == ids.numel()
    windows = token_windows(text, tokenizer, seq_len=16, num_windows=3, offset_windows=2)
    assert windows.shape == (3, 16) and windows.dtype == torch.long
    assert torch.equal(windows.flatten(), ids[32:80])
    everything = token_windows(text, tokenizer, seq_len=16)
    assert everything.shape == (total // 16, 16)
    with pytest.raises(ValueError, match=rf"has {total} tokens = {total // 16} full windows of 16"):
        token_windows(text, tokenizer, seq_len=16, num_windows=total // 16 + 1)


def test_calibration_windows_from_embedded(tokenizer: PreTrainedTokenizerFast) -> None:
    windows = calibration_windows("embedded", tokenizer, seq_len=32, num=4, offset=1)
    source = resolve_text("embedded", "calibration")
    direct = token_windows(source, tokenizer, 32, num_windows=5)
    assert torch.equal(windows, direct[1:])


def test_calibration_data_is_the_whole_stream_named_by_origin(tmp_path, tokenizer) -> None:
    from pruneframe.data import calibration_data, token_windows

    path = tmp_path / "calib.txt"
    path.write_text("the cat sat on the mat. " * 40)
    calib = calibration_data(str(path), tokenizer)
    assert calib.name == str(path.resolve()) or calib.name.endswith("calib.txt")
    assert torch.equal(calib.windows(2, 8), token_windows(resolve_text(str(path)), tokenizer, 8, 2))
    assert len(calibration_data(str(path), tokenizer, max_tokens=10)) == 10


# --------------------------------------------------------------------------- domains, Moby-Dick, the default catalog


def book(chapters: int) -> str:
    """A small Gutenberg-style book: front matter, then numbered chapters of different lengths."""
    parts = ["MOBY DICK; OR THE WHALE\n\nETYMOLOGY.\n\nfront matter text.\n"]
    for number in range(1, chapters + 1):
        parts.append(f"\nCHAPTER {number}. Title {number}.\n\n" + f"sentence {number} of the sea. " * (10 + number) + "\n")
    return "".join(parts)


def test_moby_dick_halves_are_cut_at_the_middle_chapter(empty_data_dir: Path, offline: None) -> None:
    (empty_data_dir / "literature").mkdir()
    text = book(9)
    (empty_data_dir / "literature" / "moby_dick.txt").write_text(text)
    dev, test = resolve_text("moby-dick", "validation"), resolve_text("moby-dick", "test")
    assert dev.text + test.text == text and test.text.startswith("CHAPTER ")
    starts = [i for i in range(len(text)) if text.startswith("\nCHAPTER ", i)]
    assert abs(len(dev.text) - len(text) // 2) == min(abs(s + 1 - len(text) // 2) for s in starts)
    assert resolve_text("moby-dick", "calibration").fingerprint == dev.fingerprint
    assert dev.domain == test.domain == "literature" and (dev.split, test.split) == ("validation", "test")
    check_disjoint(dev, test)
    with pytest.raises(DataSourceError, match="unknown split 'train'"):
        resolve_text("moby-dick", "train")
    (empty_data_dir / "literature" / "moby_dick.txt").write_text("no headings here")
    with pytest.raises(DataSourceError, match="no 'CHAPTER n' headings"):
        resolve_text("moby-dick", "test")


def test_moby_dick_without_the_file_says_where_it_looked(empty_data_dir: Path, offline: None) -> None:
    with pytest.raises(DataSourceError) as info:
        resolve_text("moby-dick", "test")
    assert str(empty_data_dir / "literature" / "moby_dick.txt") in str(info.value)


def test_domains_follow_the_named_corpus_or_the_folder(empty_data_dir: Path, tmp_path: Path) -> None:
    folder = empty_data_dir / "wikitext-2"
    folder.mkdir()
    (folder / "wiki.valid.tokens").write_text("valid text\n")
    (folder / "wiki.test.raw").write_text("test text\n")
    assert resolve_text("wikitext-2", "test").domain == "wikitext-2"
    assert resolve_text(str(folder / "wiki.valid.tokens")).domain == "wikitext-2"  # same corpus, given as a path
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "a.txt").write_text("a")
    (mine / "b.txt").write_text("b")
    assert resolve_text(str(mine / "a.txt")).domain == resolve_text(str(mine / "b.txt")).domain == f"folder:{mine.resolve()}"
    assert resolve_text(str(mine)).domain == f"folder:{mine.resolve()}"
    assert resolve_text("embedded", "test").domain == "embedded"
    assert resolve_text("embedded", "test").describe()["domain"] == "embedded"


def test_catalog_lists_what_is_available(empty_data_dir: Path) -> None:
    everywhere = ["embedded", "embedded-code", "embedded-papers"]
    assert sources.eval_source_catalog(online=False) == everywhere
    assert sources.eval_source_catalog(online=True) == [*everywhere, "c4", "ptb"]
    (empty_data_dir / "wikitext-2").mkdir()
    (empty_data_dir / "wikitext-2" / "wiki.valid.tokens").write_text("calibration only")
    assert sources.eval_source_catalog(online=False) == everywhere  # no test file: not an evaluation source
    (empty_data_dir / "wikitext-2" / "wiki.test.raw").write_text("test")
    # one source from the data folder: the embedded corpora of the two other domains still join
    assert sources.eval_source_catalog(online=False) == ["wikitext-2", *everywhere]
    (empty_data_dir / "literature").mkdir()
    (empty_data_dir / "literature" / "moby_dick.txt").write_text(book(3))
    (empty_data_dir / "ptb").mkdir()
    (empty_data_dir / "ptb" / "ptb.test.txt").write_text("ptb test")
    # two or more from the data folder: the embedded documentation alone joins them, as before
    assert sources.eval_source_catalog(online=False) == ["wikitext-2", "moby-dick", "ptb", "embedded"]
    assert sources.eval_source_catalog(online=True) == ["wikitext-2", "moby-dick", "ptb", "embedded", "c4"]


@pytest.mark.skipif(not (SHARED_DATA / "literature" / "moby_dick.txt").is_file(), reason="shared data folder absent")
def test_shared_moby_dick_halves_are_disjoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRUNEFRAME_DATA_DIR", str(SHARED_DATA))
    dev, test = resolve_text("moby-dick", "validation"), resolve_text("moby-dick", "test")
    assert 0.45 < len(dev.text) / (len(dev.text) + len(test.text)) < 0.55
    check_disjoint(dev, test, samples=400)
    check_disjoint(resolve_text("wikitext-2", "calibration"), test)


@pytest.mark.parametrize(
    ("name", "domain", "halves"), [("embedded-code", "code", installed.code_halves), ("embedded-papers", "research", installed.paper_halves)]
)
def test_installed_corpora_are_split_by_document_disjoint_and_tagged(name: str, domain: str, halves) -> None:
    calib, test = resolve_text(name, "calibration"), resolve_text(name, "test")
    assert (calib.split, test.split, calib.domain, test.domain) == ("calibration", "test", domain, domain)
    assert resolve_text(name, "validation").fingerprint == calib.fingerprint  # every development alias: one half
    keys = halves().keys
    assert keys["calibration"] and keys["test"] and not set(keys["calibration"]) & set(keys["test"])
    assert 0.35 < len(test.text) / (len(test.text) + len(calib.text)) < 0.65
    check_disjoint(calib, test, samples=400)
    for other in ("embedded", "embedded-code", "embedded-papers"):  # calibrating on one, evaluating on another
        if other != name:
            check_disjoint(resolve_text(other, "calibration"), test, samples=100)
    halves.cache_clear()
    assert resolve_text(name, "test").fingerprint == test.fingerprint  # the same text when read again


def test_embedded_code_reads_the_standard_library_modules_in_name_order() -> None:
    modules = installed.stdlib_modules()
    names = [p.name for p in modules]
    assert names == sorted(names) and "os.py" in names and not any(n.startswith("_sysconfigdata") for n in names)
    assert set(installed.code_halves().keys["test"]) | set(installed.code_halves().keys["calibration"]) == set(names)
    first_test_module = installed.code_halves().keys["test"][0]
    opening = next(p for p in modules if p.name == first_test_module).read_text(encoding="utf-8")[:120]
    assert resolve_text("embedded-code", "test").text.startswith(opening.strip("\n")[:60])


def test_split_halves_drops_test_paragraphs_shared_with_calibration() -> None:
    shared = "a passage quoted by two documents " * 8
    documents = {
        "big": "\n\n".join(f"unique paragraph {i} of the large document, long enough to matter here" for i in range(40)) + "\n\n" + shared,
        "small": "the small document opens with its own words and nothing else\n\n" + shared,
    }
    halves = split_halves(documents)
    assert halves.keys == {"calibration": ("big",), "test": ("small",)} and halves.dropped == 1
    assert shared.strip() not in halves.text["test"] and halves.text["test"].startswith("the small document")
    calib = TextSource("x", "o", "calibration", halves.text["calibration"], "f1")
    check_disjoint(calib, TextSource("x", "o", "test", halves.text["test"], "f2"), samples=200)
    with pytest.raises(ValueError, match="appears verbatim"):  # the unfiltered document would overlap
        check_disjoint(calib, TextSource("x", "o", "test", documents["small"], "f3"), samples=200)
