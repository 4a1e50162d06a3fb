"""The package layout: no import cycle among pruneframe's modules, and no private module used from outside."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pruneframe"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _runtime_imports(tree: ast.Module, modules: dict[str, Path]) -> set[str]:
    """Modules imported when the module is imported (top level, outside ``if TYPE_CHECKING:``)."""
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for item in ast.walk(node):
            if isinstance(item, ast.ImportFrom) and item.module and item.level == 0:
                subs = {f"{item.module}.{a.name}" for a in item.names} & modules.keys()
                found |= subs if len(subs) == len(item.names) else subs | {item.module}
            elif isinstance(item, ast.Import):
                found |= {a.name for a in item.names}
    return found & modules.keys()


def test_no_import_cycle() -> None:
    """Tarjan's strongly connected components of the module import graph are all single modules."""
    modules = _modules()
    graph = {name: _runtime_imports(ast.parse(path.read_text()), modules) - {name} for name, path in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in graph:
        if name not in index:
            visit(name)
    assert len(graph) > 50 and not cycles, cycles


def test_nothing_outside_the_package_imports_a_private_module() -> None:
    """Plugins, benchmarks, tests and examples import pruneframe's public modules only (no ``_name`` module)."""
    modules = _modules()
    offenders = []
    for folder in ("plugins", "benchmarks", "tests", "examples"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
                else:
                    continue
                private = [n for n in names if n.startswith("pruneframe") and any(p.startswith("_") and not p.startswith("__") for p in n.split("."))]
                offenders += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in private]
    assert not offenders, offenders


def _pruneframe_imports(path: Path) -> set[str]:
    """Every pruneframe module ``path`` imports anywhere (functions and ``if TYPE_CHECKING:`` included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {name for name in found if name.startswith("pruneframe")}


def test_shared_types_sit_below_the_adapters() -> None:
    """The unit types the adapters and the pipeline share, and the GGUF description adapters give, import no adapter (nor type hints of one)."""
    assert _pruneframe_imports(PACKAGE / "pipeline" / "units.py") == {"pruneframe.pipeline.removal"}
    assert _pruneframe_imports(PACKAGE / "architectures" / "gguf.py") == set()


#: Words that name a model family or a family's own llama.cpp architecture (matched in lower case).
FAMILY_WORDS = ("gemma", "qwen", "mistral", "phi3", "phi-3", "olmo", "deci", "forcausallm")
#: llama.cpp's names of tokenizer rules that are also family names (``tokenizer.ggml.model`` "llama",
#: ``tokenizer.ggml.pre`` "qwen2"): vocab.py writes them for any tokenizer with that rule, so there they name a tokenizer.
TOKENIZER_WORDS = ("llama", "qwen2")


def _code_names(tree: ast.Module) -> set[str]:
    """A module's identifiers and string constants, docstrings left out."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.alias):
            names |= {node.name, node.asname or node.name}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            names.add(node.value)
    return names


def test_export_names_no_family() -> None:
    """``pruneframe.export`` knows no family: architectures, tensor names and special cases come from the adapter (``gguf_spec``).

    Its code (identifiers and strings; docstrings aside) names no family, no model class and no
    family's llama.cpp architecture; ``llama`` appears only as part of llama.cpp's own name.
    """
    offenders = []
    for path in sorted((PACKAGE / "export").glob("*.py")):
        for name in _code_names(ast.parse(path.read_text())):
            lowered = name.lower()
            if path.name == "vocab.py":
                for word in TOKENIZER_WORDS:
                    lowered = lowered.replace(word, "")
            if any(word in lowered for word in FAMILY_WORDS) or lowered == "llama":
                offenders.append(f"{path.relative_to(ROOT)}: {name!r}")
    assert not offenders, offenders


#: The package's floors, highest first. A module imports modules of its own floor or of the floors below it,
#: but for :data:`ALLOWED_CLIMBS`. A floor lists subpackages (a dotted prefix) and modules; the longest
#: matching name places a module. The pipeline's contract (the unit, budget, method, report and error types
#: every layer shares, and the pure projection) sits below the adapters (see
#: ``test_shared_types_sit_below_the_adapters``); its stages (session, host, fold) sit above the toolkit.
FLOORS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("entry points", ("pruneframe", "pruneframe.__main__", "pruneframe.api", "pruneframe.testing", "pruneframe.cli")),
    ("harness", ("pruneframe.harness",)),
    ("settings", ("pruneframe.settings",)),
    ("recovery, evaluation, export", ("pruneframe.recovery", "pruneframe.evaluation", "pruneframe.export")),
    ("models", ("pruneframe.models",)),
    ("data", ("pruneframe.data",)),
    ("pipeline stages", ("pruneframe.pipeline",)),
    ("checkpoint", ("pruneframe.checkpoint",)),
    ("toolkit", ("pruneframe.toolkit",)),
    ("architectures", ("pruneframe.architectures",)),
    ("vocabulary", ("pruneframe.vocabulary",)),
    (
        "pipeline contract",
        tuple(
            f"pruneframe.pipeline.{name}"
            for name in (
                "budget",
                "calibration",
                "hidden_budget",
                "hookspecs",
                "methods",
                "plugin_errors",
                "projection",
                "projection_checks",
                "projection_order",
                "projection_walks",
                "prune_report",
                "recalibration",
                "removal",
                "units",
            )
        ),
    ),
    ("util", ("pruneframe.util",)),
)

#: The only imports from a floor up to a higher one, each inside a function (never at import time), with why.
ALLOWED_CLIMBS = {
    ("architectures", "pipeline stages"): "adapter_for without a host builds the default plugin host",
    ("architectures", "checkpoint"): "block norms, block removal and residual shortcuts are the shipped modeling code's, which a checkpoint carries whole",
}


def _floor(name: str) -> int:
    """The index in :data:`FLOORS` of module ``name`` (0 is the top); a module no floor names fails the test."""
    best, floor = -1, None
    for index, (_, names) in enumerate(FLOORS):
        for prefix in names:
            covers = name == prefix or ("." in prefix and name.startswith(prefix + "."))
            if covers and len(prefix) > best:
                best, floor = len(prefix), index
    assert floor is not None, f"{name} is on no floor of FLOORS"
    return floor


def _named(node: ast.AST, modules: dict[str, Path]) -> set[str]:
    """The pruneframe modules an import statement names (``from a import b``: ``a.b`` when it is a module, else ``a``)."""
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        subs = {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
        return (subs if len(subs) == len(node.names) else subs | {node.module}) & modules.keys()
    if isinstance(node, ast.Import):
        return {a.name for a in node.names} & modules.keys()
    return set()


def _all_imports(tree: ast.Module, modules: dict[str, Path]) -> tuple[set[str], set[str]]:
    """``(at import time, inside functions)``: the modules a module imports, ``if TYPE_CHECKING:`` left out."""
    eager: set[str] = set()
    lazy: set[str] = set()

    def visit(node: ast.AST, inside: bool) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        (lazy if inside else eager).update(_named(node, modules))
        inside = inside or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(tree, False)
    return eager, lazy - eager


def _runs(modules: dict[str, Path]) -> dict[str, tuple[set[str], set[str]]]:
    """Per module, ``(at import time, inside functions)``: the modules importing it runs.

    An import of ``a.b.c`` also runs the packages ``a.b`` above it, unless they are the importer's own or
    hold no import (a docstring only); the top package and the command dispatcher are left out.
    """
    own = {name: _all_imports(ast.parse(path.read_text()), modules) for name, path in modules.items()}
    idle = {name for name, path in modules.items() if path.name == "__init__.py" and not any(own[name])}

    def above(name: str) -> set[str]:
        parts = name.split(".")
        return {".".join(parts[:i]) for i in range(2, len(parts))} & modules.keys()

    def with_packages(importer: str, names: set[str]) -> set[str]:
        found = set(names)
        for name in names:
            found |= above(name)
        return found - above(importer) - idle - {importer, "pruneframe", "pruneframe.cli"}

    out = {}
    for name, (eager, lazy) in own.items():
        now = with_packages(name, eager)
        out[name] = (now, with_packages(name, eager | lazy) - now)
    return out


def test_no_import_climbs_a_floor_but_the_stated_lazy_ones() -> None:
    """Every module sits on a floor of :data:`FLOORS`; imports go down or sideways, but for :data:`ALLOWED_CLIMBS` inside functions."""
    modules = _modules()
    at_import, climbs = [], set()
    for name, (eager, lazy) in _runs(modules).items():
        for target in eager | lazy:
            if _floor(target) < _floor(name):
                climbs.add((FLOORS[_floor(name)][0], FLOORS[_floor(target)][0]))
                if target in eager:
                    at_import.append(f"{name} -> {target}")
    assert not at_import, at_import
    assert climbs <= ALLOWED_CLIMBS.keys(), climbs - ALLOWED_CLIMBS.keys()


def test_the_prune_command_walks_below_the_comparison_harness() -> None:
    """``pruneframe prune`` imports no comparison, evaluation or export code, climbs at most the stated floors, and loops nowhere."""
    modules = _modules()
    runs = _runs(modules)
    walk, pending = set(), ["pruneframe.cli.prune_cmd"]
    while pending:
        name = pending.pop()
        if name not in walk:
            walk.add(name)
            pending += sorted(runs[name][0] | runs[name][1])
    assert len(walk) > 50
    assert not sorted(m for m in walk if m.startswith(("pruneframe.harness", "pruneframe.evaluation", "pruneframe.export")))
    climbs = {(FLOORS[_floor(m)][0], FLOORS[_floor(t)][0]) for m in walk for t in runs[m][0] | runs[m][1] if _floor(t) < _floor(m)}
    assert len(climbs) <= 3 and climbs <= ALLOWED_CLIMBS.keys(), climbs
    eager = {m: runs[m][0] & walk for m in walk}

    def reaches_itself(start: str) -> bool:
        seen, pending = set(), list(eager[start])
        while pending:
            name = pending.pop()
            if name == start:
                return True
            if name not in seen:
                seen.add(name)
                pending += eager[name]
        return False

    assert not [m for m in sorted(walk) if reaches_itself(m)]


def test_no_import_cycle_counting_imports_inside_functions() -> None:
    """With the imports inside functions as edges too (each naming its module, as in ``test_no_import_cycle``), no module reaches itself."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        eager, lazy = _all_imports(ast.parse(path.read_text()), modules)
        graph[name] = (eager | lazy) - {name}
    looping = []
    for start in sorted(graph):
        seen, pending = set(), list(graph[start])
        while pending:
            name = pending.pop()
            if name == start:
                looping.append(start)
                break
            if name not in seen:
                seen.add(name)
                pending += graph[name]
    assert not looping, looping


def test_every_package_is_listed_for_installation() -> None:
    """A package missing from pyproject's ``packages`` works in an editable install and is absent from a wheel."""
    import tomllib

    root = Path(__file__).resolve().parent.parent
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "pruneframe").rglob("__init__.py")}
    assert found <= listed, f"not in pyproject.toml's packages: {sorted(found - listed)}"
