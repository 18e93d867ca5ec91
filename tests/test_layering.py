"""Imports go one way, and the rule is a folder rule: what a room may reach, it may reach through
anything it imports, so each module's imports are followed through the project recursively.

- `generation/` never reaches `bot`, `discord` or `aiohttp`;
- `bot/core/` never reaches `discord` or `aiohttp.web`;
- `bot/discord_ui/` never reaches `torch`, `diffusers`, `transformers` or `bot.web`;
- `bot/web/` never reaches `discord`.

The graph is read from the source with `ast`: every `import` in a module counts, wherever it
stands (a lazy import inside a function runs the moment that function does, and a type-only
import under `TYPE_CHECKING` is still a dependency on the room it names). Importing `a.b.c` runs
`a` and `a.b` first, so parent packages are edges too. Third-party packages are not followed:
they are matched by name (`aiohttp` alone, the client, is allowed where `aiohttp.web` is not).

Because `bot/core` may reach `generation`, the rule on `generation` is what keeps core free of
`aiohttp.web` and `discord` through it; and since `bot/discord_ui` reaches `bot/core`, core's path
into `generation` must not lead to the modules that load torch either.

The runtime half starts the two processes that must work without Discord, exactly as a user
does (`python -m bot.web`, `python -m generation.worker`), with Python's own import log
(`PYTHONPROFILEIMPORTTIME`, the environment form of `-X importtime`) on, lets them come up and
stop, and reads from that log every module the process imported over its whole life.
"""

from __future__ import annotations

import ast
import logging
import signal
import subprocess
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bot", "generation")


@dataclass(frozen=True)
class Rule:
    room: str  # a package of the project: the rule holds for every module in it
    forbidden: tuple[str, ...]  # module names (project or third-party) the room must never reach


RULES = (
    Rule("generation", ("bot", "discord", "aiohttp")),
    Rule("bot.core", ("discord", "aiohttp.web")),
    Rule("bot.discord_ui", ("torch", "diffusers", "transformers", "bot.web")),
    Rule("bot.web", ("discord",)),
)


@cache
def project_modules() -> dict[str, Path]:
    """Dotted name -> source file for every module under the project's packages."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imported_names(module: str, path: Path) -> set[str]:
    """Every name an import statement in the module may load: `from a import b` may load `a.b`."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            names.add(source)
            names.update(f"{source}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def prefixes(name: str) -> Iterable[str]:
    parts = name.split(".")
    return (".".join(parts[:i]) for i in range(1, len(parts) + 1))


@cache
def direct_imports(module: str) -> frozenset[str]:
    """Project modules this module's import statements run (with their parent packages), plus the
    third-party names it imports, unresolved."""
    modules = project_modules()
    found: set[str] = {p for p in prefixes(module) if p != module}
    for name in imported_names(module, modules[module]):
        if name.split(".")[0] in PACKAGES:
            found.update(p for p in prefixes(name) if p in modules)
        else:
            found.add(name)
    found.discard(module)
    return frozenset(found)


def reached(start: str) -> dict[str, str | None]:
    """Every name `start` reaches, mapped to the module that imports it on a shortest path (None
    for `start`)."""
    modules = project_modules()
    via: dict[str, str | None] = {start: None}
    todo = deque([start])
    while todo:
        current = todo.popleft()
        for name in direct_imports(current):
            if name not in via:
                via[name] = current
                if name in modules:
                    todo.append(name)
    return via


def matches(name: str, forbidden: str) -> bool:
    # `aiohttp.web` also covers its private submodules (`aiohttp.web_runner`, …)
    return name == forbidden or name.startswith((f"{forbidden}.", f"{forbidden}_"))


def chain(via: dict[str, str | None], name: str) -> str:
    links = [name]
    while (parent := via[links[-1]]) is not None:
        links.append(parent)
    return " <- ".join(links)


def violations(module: str, forbidden: tuple[str, ...]) -> list[str]:
    """One shortest import chain for each forbidden name the module reaches."""
    via = reached(module)
    found = []
    for banned in forbidden:
        hits = [chain(via, name) for name in via if matches(name, banned) and name != module]
        if hits:
            found.append(min(hits, key=lambda c: (c.count(" <- "), c)))
    return found


CASES = [
    (rule, module)
    for rule in RULES
    for module in sorted(project_modules())
    if module == rule.room or module.startswith(f"{rule.room}.")
]


@pytest.mark.parametrize(("rule", "module"), CASES, ids=[module for _, module in CASES])
def test_room_never_reaches_what_it_must_not(rule: Rule, module: str) -> None:
    found = violations(module, rule.forbidden)
    assert not found, f"{module} reaches {', '.join(rule.forbidden)}:\n" + "\n".join(found)


def test_every_room_has_modules() -> None:
    """A renamed folder must not turn its rule into one that checks nothing."""
    for rule in RULES:
        assert any(module == rule.room for _, module in CASES), rule.room
        assert sum(r is rule for r, _ in CASES) > 1, rule.room


def test_the_graph_follows_lazy_type_only_and_relative_imports(tmp_path: Path) -> None:
    """The reader itself: imports inside functions, under TYPE_CHECKING and relative ones count."""
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "from . import sibling\n"
        "from .other import thing\n"
        "if TYPE_CHECKING:\n    from torch import Tensor\n"
        "def f():\n    import discord.ui\n"
    )
    names = imported_names("bot.core.m", source)
    assert {"bot.core.sibling", "bot.core.other", "torch", "discord.ui"} <= names
    assert matches("aiohttp.web_runner", "aiohttp.web") and not matches("aiohttp.client", "aiohttp.web")
    # a known path in the real tree: the wiring reaches the Discord face through the app module
    assert "discord" in reached("bot.app")


# --- the processes that must run without Discord --------------------------------------------


def imported_at_runtime(log_text: str) -> set[str]:
    """Module names from `-X importtime` lines: `import time: self | cumulative | name`."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in log_text.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    } - {"imported package"}


def top_level(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_rest_only_process_never_imports_discord(tmp_path: Path, tiny_model_cache: Path) -> None:
    from tests.web.rest_process import rest_server

    async with rest_server(tmp_path, tiny_model_cache, PYTHONPROFILEIMPORTTIME="1") as server:
        await server.stop()
    modules = imported_at_runtime(server.log_path.read_text(errors="replace"))
    # the log is read right: the lazily imported wiring and the GPU side are in it
    assert {"bot.services", "bot.web.app", "generation.pipelines"} <= modules
    assert "discord" not in top_level(modules), sorted(m for m in modules if m.startswith("discord"))
    assert not {m for m in modules if m.startswith("bot.discord_ui")}


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_arq_worker_process_never_imports_discord_aiohttp_or_the_bot(
    tmp_path: Path, tiny_model_cache: Path, pipeline_manager: object
) -> None:
    from tests.scaleout.conftest import REDIS_SERVER, Cluster, RedisServer

    if REDIS_SERVER is None:
        pytest.fail("redis-server is not installed (bash .ci/setup dev installs the Debian package)")

    class LoggedImports(Cluster):
        def env(self) -> dict[str, str]:
            return {**super().env(), "PYTHONPROFILEIMPORTTIME": "1"}

    cluster = LoggedImports(
        redis=RedisServer(tmp_path / "redis"), workdir=tmp_path, cache=tiny_model_cache, names=("census",)
    )
    try:
        cluster.redis.start()
        worker = cluster.start_worker("census")
        cluster.wait_registered(["census"])
        worker.proc.send_signal(signal.SIGTERM)
        try:
            code = worker.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker did not stop on SIGTERM: {cluster.log_tail('census')}")
        assert code == 0, cluster.log_tail("census")
    finally:
        cluster.stop_all()
    modules = imported_at_runtime(worker.log_path.read_text(errors="replace"))
    assert {"arq", "generation.pipelines"} <= modules  # the log is read right
    assert not top_level(modules) & {"discord", "aiohttp", "bot"}, sorted(
        m for m in modules if top_level({m}) & {"discord", "aiohttp", "bot"}
    )
