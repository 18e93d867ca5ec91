"""Session-wide fixtures: settings and pipelines on the tiny twins, built once per test session.

The twins are built into a session temporary model cache and loaded through the real
`from_pretrained` path, on the CPU, in fp32, with downloads forbidden (`hf_offline`), so no
test can reach the network or depend on a developer's `.env`.

`pipeline_manager` is shared by the whole session: tests must not leave anything behind on it
(restore `step_hooks`, do not call `downgrade_memory` on it). Tests that change its state use
`isolated_pipeline_manager`, a fresh manager over the same cache (loading takes ~0.2 s).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from generation.models import ModelSpec, build_registry
from generation.pipelines import PipelineManager
from generation.settings import GenerationSettings
from tests.fake_discord.server import describe_invalid
from tests.fake_discord.state import TALLY

log = logging.getLogger(__name__)

# the real-MongoDB leg: counts what ran on MONGODB_TEST_URI, marks the test server's known deviations
pytest_plugins = ["tests.real_mongodb"]

# The twins are far too small to gain from intra-op threads, and on a shared 2-core machine
# OpenMP's spinning workers triple the CPU time the suite takes (measured: 9 s vs 30 s).
torch.set_num_threads(1)


#: Linux prctl option: orphaned grandchildren are re-parented to this process, not to init
PR_SET_CHILD_SUBREAPER = 36
#: how long processes that are already on their way out get before they count as left running
EXIT_GRACE_S = 5.0


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state letter) of a process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()  # the command name in parentheses may hold spaces
    return int(fields[1]), fields[0]


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def live_descendants(root: int) -> dict[int, str]:
    """Every process below `root` that is still running (zombies are dead), with its command line."""
    children: dict[int, list[int]] = {}
    states: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            children.setdefault(stat[0], []).append(int(entry.name))
            states[int(entry.name)] = stat[1]
    found: dict[int, str] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        if states.get(pid) != "Z":
            found[pid] = _command_line(pid)
    return found


def pytest_configure(config: pytest.Config) -> None:
    # so that a grandchild whose parent died (a bot's ffmpeg, a browser's renderer) still counts
    # as ours in the check below, instead of escaping to init
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


@pytest.fixture(scope="session", autouse=True)
def nothing_left_running() -> Iterator[None]:
    """Fails the run if a process a test started outlives the session: every process belongs to a
    fixture or test that stops it. Leftovers are named, then killed."""
    yield
    if not Path("/proc/self/stat").exists():
        return
    deadline = time.monotonic() + EXIT_GRACE_S
    while (left := live_descendants(os.getpid())) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, "processes left running after the tests:\n" + "\n".join(
        f"  pid {pid}: {cmd}" for pid, cmd in sorted(left.items())
    )


def make_tiny_settings(cache_dir: Path, **overrides: object) -> GenerationSettings:
    """GenerationSettings for the tiny twins on the CPU, ignoring the environment's `.env`."""
    values: dict[str, object] = {
        "model_cache_dir": cache_dir,
        "device": "cpu",
        "dtype": "fp32",
        "memory_mode": "auto",
        "image_model": "tiny-image",
        "video_model": "tiny-video",
        "i2v_model": "tiny-wan-i2v",
        "upscale_model": "tiny-upscale",
        "hf_token": None,
        "hf_offline": True,
        "safety_checker": False,
        "extra_models": {},
        "default_steps": None,
        "max_steps": None,
        "preview_every_steps": 1,
    }
    values.update(overrides)
    return GenerationSettings(_env_file=None, **values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def tiny_model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def tiny_settings(tiny_model_cache: Path) -> GenerationSettings:
    return make_tiny_settings(tiny_model_cache)


@pytest.fixture(scope="session")
def tiny_registry(tiny_settings: GenerationSettings) -> dict[str, ModelSpec]:
    return build_registry(tiny_settings)


@pytest.fixture(scope="session")
def pipeline_manager(
    tiny_settings: GenerationSettings, tiny_registry: dict[str, ModelSpec]
) -> Iterator[PipelineManager]:
    manager = PipelineManager(tiny_settings, tiny_registry)
    manager.load("tiny-image")
    manager.load("tiny-video")
    yield manager
    manager.close()


@pytest.fixture
def isolated_pipeline_manager(
    tiny_settings: GenerationSettings, tiny_registry: dict[str, ModelSpec], pipeline_manager: PipelineManager
) -> Iterator[PipelineManager]:
    """A private manager (own memory modes, own step hooks) over the already-built twins."""
    manager = PipelineManager(tiny_settings, tiny_registry)
    yield manager
    manager.close()


@pytest.fixture(autouse=True)
def discord_saw_no_invalid_request() -> Iterator[None]:
    """Every test proves the bot sent the fake Discord nothing the real one would refuse.

    The fake checks each request against Discord's OpenAPI description and documented limits
    (tests/fake_discord/spec_check.py); a test that sends bad requests on purpose takes them
    back with `FakeDiscord.take_invalid_requests()`. Module-scoped bots are covered too: what
    they send between tests is charged to the next test.
    """
    mark = len(TALLY.invalid)
    yield
    unexpected = TALLY.unexpected_since(mark)
    for call in unexpected:
        call.expected_invalid = True  # reported once, here
    if unexpected:
        pytest.fail(describe_invalid(unexpected), pytrace=False)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TALLY.requests:
        terminalreporter.write_line(
            f"fake Discord: {TALLY.requests} requests checked against Discord's OpenAPI description "
            f"and limits, {len(TALLY.invalid)} refused ({sum(not c.expected_invalid for c in TALLY.invalid)} "
            "unexpected)"
        )
