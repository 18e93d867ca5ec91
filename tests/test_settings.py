"""Every knob is documented, and the documented defaults are the real ones."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from bot.settings import Settings

log = logging.getLogger(__name__)

ENV_EXAMPLE = Path(__file__).resolve().parents[1] / ".env.example"


def documented() -> dict[str, str]:
    return dict(re.findall(r"^([A-Z][A-Z_0-9]*)=(.*)$", ENV_EXAMPLE.read_text(encoding="utf-8"), re.M))


def test_every_setting_has_a_line_in_env_example_and_nothing_else_does() -> None:
    names = set(documented())
    fields = {name.upper() for name in Settings.model_fields}
    assert names == fields, f"undocumented: {sorted(fields - names)}; unknown: {sorted(names - fields)}"


def test_env_example_copied_to_env_gives_the_defaults(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text(ENV_EXAMPLE.read_text(encoding="utf-8"), encoding="utf-8")
    from_file = Settings(_env_file=env)  # type: ignore[call-arg]
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert from_file.model_dump() == defaults.model_dump()
