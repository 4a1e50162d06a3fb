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
