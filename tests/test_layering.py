"""Imports go one way: the generation core knows nothing of Discord or the bot, and the
Discord-facing modules never touch torch or diffusers (those live behind the worker)."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def top_level(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


@pytest.mark.parametrize("path", sorted((ROOT / "generation").rglob("*.py")), ids=lambda p: p.name)
def test_generation_never_imports_discord_or_the_bot(path: Path) -> None:
    assert not top_level(imported_modules(path)) & {"discord", "bot"}


DISCORD_SIDE = [
    *sorted((ROOT / "bot" / "discord_ui").rglob("*.py")),
    *(
        ROOT / "bot" / "discord_ui" / name
        for name in ("actions.py", "views.py", "delivery.py", "client.py", "formatting.py")
    ),
]


@pytest.mark.parametrize("path", DISCORD_SIDE, ids=lambda p: p.name)
def test_discord_side_never_imports_torch_or_diffusers(path: Path) -> None:
    assert not top_level(imported_modules(path)) & {"torch", "diffusers", "transformers"}
