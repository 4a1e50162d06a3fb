"""Two more corpora that every install has, each in another domain than the embedded documentation.

- ``embedded-code`` (domain ``code``): the standard library's own top-level modules, the ``*.py`` files
  directly in ``sysconfig.get_paths()["stdlib"]`` in name order, less the few that differ by platform or
  by site (``_sysconfigdata*``, ``sitecustomize``, ``usercustomize``).
- ``embedded-papers`` (domain ``research``): the READMEs of the benchmark tasks shipped inside the
  installed ``lm_eval`` package (a required dependency): each task's paper title, abstract and citation.
  The READMEs share a template, so a paragraph already seen in an earlier README is left out.

Each corpus is split by document (a module, a README) into disjoint ``calibration`` and ``test``
halves with :func:`pruneframe.data.halves.split_halves`. Both are the same on every machine with the same
Python and dependency versions; the fingerprint of a :class:`~pruneframe.data.sources.TextSource`
records which text was read.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import re
import sys
import sysconfig
from pathlib import Path

from pruneframe.data.halves import Halves, split_halves

__all__ = [
    "stdlib_modules",
    "code_halves",
    "code_origin",
    "paper_files",
    "paper_documents",
    "paper_halves",
    "paper_origin",
]

_SKIPPED_MODULES = re.compile(r"^(_sysconfigdata.*|sitecustomize|usercustomize)\.py$")
_MIN_PARAGRAPH = 20  # shorter paragraphs (a heading, a bare link) are kept even when repeated


def _stdlib() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_modules() -> tuple[Path, ...]:
    """The standard library's top-level module files read by ``embedded-code``, in name order."""
    return tuple(sorted(p for p in _stdlib().glob("*.py") if p.is_file() and not _SKIPPED_MODULES.match(p.name)))


@functools.lru_cache(maxsize=1)
def code_halves() -> Halves:
    """The ``calibration`` and ``test`` halves of ``embedded-code``, split by module file."""
    files = stdlib_modules()
    if not files:
        raise FileNotFoundError(f"embedded-code: no standard-library modules found under {_stdlib()}")
    return split_halves({p.name: p.read_text(encoding="utf-8", errors="replace") for p in files})


def code_origin() -> str:
    """Where ``embedded-code`` comes from (for protocol stamping)."""
    return f"standard-library modules in {_stdlib()} (Python {sys.version_info.major}.{sys.version_info.minor})"


def _package_dir(name: str) -> Path | None:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def paper_files() -> tuple[Path, ...]:
    """The task READMEs read by ``embedded-papers`` (``lm_eval/tasks/<task>/**/README.md``), in path order."""
    root = _package_dir("lm_eval")
    tasks = root / "tasks" if root is not None else None
    if tasks is None or not tasks.is_dir():
        return ()
    return tuple(sorted(p for p in tasks.glob("*/**/README.md") if p.is_file()))


@functools.lru_cache(maxsize=1)
def paper_documents() -> dict[str, str]:
    """README path (relative to ``lm_eval/tasks``) -> its paragraphs, each kept only where first seen.

    The READMEs share a template (headings, a checklist); a paragraph that an earlier README (in path
    order) already holds is left out, so the text is the papers' titles, abstracts and citations.
    """
    files = paper_files()
    if not files:
        return {}
    tasks = _package_dir("lm_eval") / "tasks"  # type: ignore[operator]  # paper_files found it
    seen: set[str] = set()
    documents: dict[str, str] = {}
    for path in files:
        kept = []
        for para in re.split(r"\n\s*\n", path.read_text(encoding="utf-8", errors="replace")):
            key = " ".join(para.split())
            if len(key) < _MIN_PARAGRAPH:
                if key:
                    kept.append(para.strip("\n"))
            elif key not in seen:
                seen.add(key)
                kept.append(para.strip("\n"))
        if kept:
            documents[path.relative_to(tasks).as_posix()] = "\n\n".join(kept)
    return documents


@functools.lru_cache(maxsize=1)
def paper_halves() -> Halves:
    """The ``calibration`` and ``test`` halves of ``embedded-papers``, split by README."""
    documents = paper_documents()
    if not documents:
        raise FileNotFoundError("embedded-papers: no task READMEs found under the installed lm_eval package")
    return split_halves(documents)


def paper_origin() -> str:
    """Where ``embedded-papers`` comes from (for protocol stamping)."""
    try:
        version = importlib.metadata.version("lm-eval")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown version"
    return f"lm_eval {version} task READMEs in {_package_dir('lm_eval')}/tasks"
