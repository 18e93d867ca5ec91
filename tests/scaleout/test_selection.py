"""Which executor the bot builds: arq only with QUEUE_URL, and without it arq and redis are
never even imported (checked in a fresh interpreter, since this test process imports them)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from bot.core.inprocess import InProcessExecutor
from bot.services import build_executor
from bot.settings import Settings
from generation.models import build_registry

ROOT = Path(__file__).resolve().parents[2]


def test_bot_without_queue_url_never_imports_arq_or_redis(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        import bot.app, bot.services, bot.web.app  # the launcher and everything it wires
        from bot.services import build_executor
        from bot.settings import Settings
        from generation.models import build_registry

        settings = Settings(_env_file=None, queue_url=None)
        executor = build_executor(settings, build_registry(settings))
        print(type(executor).__name__)
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("arq", "redis", "hiredis")))
        """
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    name, modules = done.stdout.strip().splitlines()[-2:]
    assert name == "InProcessExecutor"
    assert modules == "[]"


def test_queue_url_selects_the_arq_executor(tmp_path: Path) -> None:
    from bot.core.arq_executor import ArqExecutor

    base = {"results_dir": str(tmp_path), "image_model": "tiny-image", "video_model": "tiny-video"}
    with_url = Settings(_env_file=None, queue_url="redis://127.0.0.1:1/0", **base)  # never contacted
    executor = build_executor(with_url, build_registry(with_url))
    assert isinstance(executor, ArqExecutor)
    assert executor.free_slots() == 0 and executor.workers() == []  # not started: no room
    without = Settings(_env_file=None, queue_url=None, **base)
    assert isinstance(build_executor(without, build_registry(without)), InProcessExecutor)


def test_every_scaleout_setting_has_its_line_in_env_example() -> None:
    from generation.scaleout import ScaleoutSettings
    from generation.settings import GenerationSettings

    lines = (ROOT / ".env.example").read_text(encoding="utf-8").splitlines()
    names = {line.split("=", 1)[0] for line in lines if "=" in line and not line.startswith("#")}
    ours = set(ScaleoutSettings.model_fields) - set(GenerationSettings.model_fields)
    assert ours and {name.upper() for name in ours} <= names
