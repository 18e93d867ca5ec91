"""No import circles among the project's modules: each module's top-level imports (the ones that
run when it loads; lazy imports inside functions and `TYPE_CHECKING` blocks excluded) form a graph
without cycles, so any module can be imported first and a refactor cannot reintroduce the old
`client`<->`actions`, `worker`<->`arq_worker` or `media`<->`pipelines` knots unnoticed."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bot", "generation")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _load_time_imports(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If) and not _is_type_checking(node):
            found += _load_time_imports(node.body) + _load_time_imports(node.orelse)
        elif isinstance(node, ast.Try):
            found += _load_time_imports(node.body)
    return found


def edges(name: str, path: Path, known: set[str]) -> set[str]:
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in _load_time_imports(ast.parse(path.read_text(encoding="utf-8")).body):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
            continue
        base = node.module or ""
        if node.level:
            anchor = name.split(".") if is_package else name.split(".")[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, *([base] if base else [])])
        for alias in node.names:
            target = f"{base}.{alias.name}"
            out.add(target if target in known else base)
    return {m for m in out if m in known and m != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def graph_of(modules: dict[str, Path]) -> dict[str, set[str]]:
    known = set(modules)
    graph = {name: edges(name, path, known) for name, path in modules.items()}
    # a package's __init__ re-exporting its own submodules is how packages work, not a circle
    return {n: {m for m in deps if not m.startswith(n + ".")} for n, deps in graph.items()}


def test_no_import_cycles() -> None:
    cycle = find_cycle(graph_of(all_modules()))
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_check_sees_a_planted_cycle(tmp_path: Path) -> None:
    graph = graph_of(all_modules())
    graph["generation.media"].add("generation.pipelines")
    graph["generation.pipelines"].add("generation.media")
    assert find_cycle(graph) is not None
