"""Application commands: the checks Discord applies when a bot syncs them, and how it stores them.

Discord refuses a whole bulk overwrite with 50035 when one name, description or option is
invalid (upper-case names, descriptions over 100 characters, required options after optional
ones …); a bot that syncs fine against the fake should sync fine against Discord.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from .messages import FormErrors
from .models import snowflake
from .state import State

log = logging.getLogger(__name__)

COMMAND_NAME = re.compile(r"^[-_'\w]{1,32}$")


def stored_command(state: State, guild_id: int | None, body: dict) -> dict:
    """The command as Discord stores and returns it (ids stable across re-syncs)."""
    command_type = int(body.get("type", 1))
    stored = {
        "type": command_type,
        "name": body.get("name"),
        "description": body.get("description", ""),
        "options": body.get("options") or [],
        "default_member_permissions": (
            None
            if body.get("default_member_permissions") is None
            else str(body["default_member_permissions"])
        ),
        "dm_permission": body.get("dm_permission", True),
        "contexts": body.get("contexts"),
        "integration_types": body.get("integration_types", [0]),
        "nsfw": bool(body.get("nsfw", False)),
        "name_localizations": body.get("name_localizations"),
        "description_localizations": body.get("description_localizations"),
    }
    stored["id"] = str(state.command_id(guild_id, command_type, stored["name"]))
    stored["application_id"] = str(state.application_id)
    stored["version"] = str(snowflake())
    if guild_id is not None:
        stored["guild_id"] = str(guild_id)
    return stored


def validate_command(body: Any, errors: FormErrors, path: str) -> None:
    if not isinstance(body, dict):
        errors.add(path, "MODEL_TYPE_CONVERT", "Only dictionaries may be used in a ModelType")
        return
    name = body.get("name")
    command_type = body.get("type", 1)
    if (
        not isinstance(name, str)
        or not COMMAND_NAME.match(name)
        or (command_type == 1 and name != name.lower())
    ):
        errors.add(f"{path}.name", "APPLICATION_COMMAND_INVALID_NAME", f"Command name is invalid: {name!r}")
    if command_type == 1:
        description = body.get("description")
        if not isinstance(description, str) or not 1 <= len(description) <= 100:
            errors.add(f"{path}.description", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
    validate_options(body.get("options") or [], errors, f"{path}.options")


def validate_options(options: list[dict], errors: FormErrors, path: str) -> None:
    if len(options) > 25:
        errors.add(path, "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
    seen_optional = False
    for i, option in enumerate(options):
        where = f"{path}.{i}"
        name = option.get("name")
        if not isinstance(name, str) or not COMMAND_NAME.match(name) or name != name.lower():
            errors.add(
                f"{where}.name", "APPLICATION_COMMAND_INVALID_NAME", f"Option name is invalid: {name!r}"
            )
        description = option.get("description")
        if not isinstance(description, str) or not 1 <= len(description) <= 100:
            errors.add(f"{where}.description", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
        if len(option.get("choices") or []) > 25:
            errors.add(f"{where}.choices", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
        if option.get("type") in (1, 2):
            validate_options(option.get("options") or [], errors, f"{where}.options")
            continue
        if option.get("required"):
            if seen_optional:
                errors.add(
                    where,
                    "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                    "Required options must be placed before non-required options",
                )
        else:
            seen_optional = True
