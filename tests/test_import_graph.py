"""textsam's own import graph, read from the source with ``ast`` (nothing is imported).

Every ``import`` and ``from ... import`` counts, at module level and inside functions, relative ones
resolved; imports under ``if TYPE_CHECKING:`` are for type checkers only and do not count. A name that a
package loads on first use (``textsam/__init__.py``'s ``_LAZY`` table, e.g. ``from textsam import
create_model``) counts as an import of the module that defines it. Two rules:

- no cycle among textsam modules (a cycle through a function-level import is still a cycle: it only
  works because of the order things happen to be called in);
- inference (every textsam module outside the client and tooling packages below) never imports
  training, evaluation, labelling, the app or the CLI.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "textsam"

# Packages that are clients of inference; inference must not import them. ``textsam.__main__`` is the
# ``python -m textsam`` entry point of the CLI.
CLIENTS = ("textsam.train", "textsam.eval", "textsam.label", "textsam.app", "textsam.cli")
CLIENT_MODULES = ("textsam.__main__",)

# Known cycles, one edge each, allowed until whoever owns the files removes the cycle (then delete the entry;
# the test fails when an entry's import is gone):
KNOWN_CYCLE_EDGES: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement in ``tree`` (any depth), except those under ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            todo.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        todo.extend(ast.iter_child_nodes(node))
    return found


def _lazy_names(path: Path, package: str) -> dict[str, str]:
    """``{name: module}`` of a module-level ``_LAZY = {"name": ".module", ...}`` table (relative names resolved)."""
    table: dict[str, str] = {}
    for node in ast.parse(path.read_text(encoding="utf-8"), str(path)).body:
        if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets)
                and isinstance(node.value, ast.Dict)):
            for key, value in zip(node.value.keys, node.value.values):
                if isinstance(key, ast.Constant) and isinstance(value, ast.Constant):
                    target = str(value.value)
                    table[str(key.value)] = package + target if target.startswith(".") else target
    return table


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The textsam modules that module ``name`` (the file ``path``) imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()

    def add(target: str) -> None:
        while target and target not in modules:  # an attribute of a module: the module
            target = target.rpartition(".")[0]
        if target and target != name:
            out.add(target)

    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "textsam":
                    add(alias.name)
            continue
        if node.level:
            base = package.split(".")
            base = base[: len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        if source.split(".")[0] != "textsam":
            continue
        lazy = _lazy_names(modules[source], source) if modules.get(source, Path()).name == "__init__.py" else {}
        for alias in node.names:
            sub = f"{source}.{alias.name}"
            if sub in modules:  # ``from pkg import submodule`` imports the submodule
                add(sub)
            else:
                add(lazy.get(alias.name, source))
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _is_client(name: str) -> bool:
    return name in CLIENT_MODULES or any(name == c or name.startswith(c + ".") for c in CLIENTS)


def test_the_graph_is_read() -> None:
    graph = _graph()
    assert "textsam.model" in graph["textsam.predictor"]  # module level, relative
    assert "textsam.results" in graph["textsam.cli.segment"]  # inside a function, absolute
    assert "textsam.weights.pretrained" in graph["textsam.cli.weights"]  # ``from package import submodule``
    assert "textsam.eval.runners" in graph["textsam.cli.eval"]
    assert {"textsam", "textsam.errors"} <= graph["textsam.cli.main"]
    assert _lazy_names(PACKAGE / "__init__.py", "textsam")["create_model"] == "textsam.factory"
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    graph = _graph()
    for source, target in KNOWN_CYCLE_EDGES:
        assert target in graph.get(source, set()), f"{source} -> {target} is gone: remove it from KNOWN_CYCLE_EDGES"
        graph[source].discard(target)
    cycles = _cycles(graph)
    assert not cycles, "import cycles among textsam modules:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_inference_never_imports_clients() -> None:
    graph = _graph()
    bad = sorted(f"{m} -> {t}" for m, targets in graph.items() if not _is_client(m)
                 for t in targets if _is_client(t))
    assert not bad, "inference modules import training/eval/label/app/CLI code:\n" + "\n".join(bad)
