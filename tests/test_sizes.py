"""Small modules with one job: no module in `bot/` or `generation/` over 500 lines and no function
over 60, so that a file can be read whole and a function on one screen.

`bot/web/openapi.py` is excepted: it is one schema literal, and splitting it would only scatter
the document a REST caller reads as one.
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
EXCEPTED = {Path("bot/web/openapi.py")}


def sources() -> list[Path]:
    paths = [*(ROOT / "bot").rglob("*.py"), *(ROOT / "generation").rglob("*.py")]
    return sorted(p for p in paths if p.relative_to(ROOT) not in EXCEPTED)


def long_functions(path: Path) -> list[str]:
    """`path:line name (n lines)` for every function or method longer than the limit, from its
    `def` line to its last line (docstring included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_sources_are_found() -> None:
    assert len(sources()) > 20
    assert all(p.name != "openapi.py" for p in sources())


def test_no_module_over_500_lines() -> None:
    too_long = [
        f"{p.relative_to(ROOT)} ({n} lines)"
        for p in sources()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    ]
    assert not too_long, "split by job:\n" + "\n".join(too_long)


def test_no_function_over_60_lines() -> None:
    too_long = [entry for p in sources() for entry in long_functions(p)]
    assert not too_long, "split into named steps:\n" + "\n".join(too_long)
