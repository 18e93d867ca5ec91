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

# Discord's rule is ^[-_'\p{L}\p{N}\p{sc=Deva}\p{sc=Thai}]{1,32}$; \w is Python's Unicode equivalent
COMMAND_NAME = re.compile(r"^[-_'\w]{1,32}$")
MAX_COMMAND_SIZE = 8000


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
    """What Discord checks beyond the OpenAPI schema (developers/interactions/application-commands)."""
    if not isinstance(body, dict):
        errors.add(path, "MODEL_TYPE_CONVERT", "Only dictionaries may be used in a ModelType")
        return
    name = body.get("name")
    command_type = body.get("type") or 1
    if command_type == 1 and not _valid_name(name):
        errors.add(f"{path}.name", "APPLICATION_COMMAND_INVALID_NAME", f"Command name is invalid: {name!r}")
    description = body.get("description")
    if command_type == 1 and (not isinstance(description, str) or not 1 <= len(description) <= 100):
        errors.add(f"{path}.description", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
    if command_type != 1 and description:
        errors.add(f"{path}.description", "APPLICATION_COMMAND_INVALID_DESCRIPTION", "Must be empty.")
    validate_options(body.get("options") or [], errors, f"{path}.options")
    if command_type == 1 and command_size(body) > MAX_COMMAND_SIZE:
        errors.add(
            path,
            "APPLICATION_COMMAND_TOO_LARGE",
            f"Command exceeds maximum size ({MAX_COMMAND_SIZE})",
        )


def validate_command_list(commands: list, errors: FormErrors) -> None:
    """A bulk overwrite: each command, and names unique per type (Discord refuses the whole list)."""
    seen: set[tuple[int, str]] = set()
    for i, command in enumerate(commands):
        validate_command(command, errors, str(i))
        if isinstance(command, dict):
            key = (command.get("type") or 1, command.get("name"))
            if key in seen:
                errors.add(
                    f"{i}.name",
                    "APPLICATION_COMMANDS_DUPLICATE_NAME",
                    f"Application command names must be unique: {key[1]!r}",
                )
            seen.add(key)


def command_size(body: dict) -> int:
    """Characters counted toward the 8,000 limit: names, descriptions, choice names and values.

    With localizations, Discord counts the longest variant of each field; so do we.
    """

    def longest(node: dict, key: str) -> int:
        variants = [str(node.get(key) or "")]
        variants += [str(v) for v in (node.get(f"{key}_localizations") or {}).values()]
        return max(len(v) for v in variants)

    total = longest(body, "name") + longest(body, "description")
    for option in body.get("options") or []:
        total += command_size(option)
        for choice in option.get("choices") or []:
            total += longest(choice, "name") + len(str(choice.get("value", "")))
    return total


def _valid_name(name: Any) -> bool:
    return isinstance(name, str) and COMMAND_NAME.match(name) is not None and name == name.lower()


def validate_options(options: list[dict], errors: FormErrors, path: str) -> None:
    if len(options) > 25:
        errors.add(path, "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
    kinds = {o.get("type") in (1, 2) for o in options if isinstance(o, dict)}
    if len(kinds) > 1:
        errors.add(
            path,
            "APPLICATION_COMMAND_OPTIONS_TYPE_INVALID",
            "Sub-command and sub-command group option types are mutually exclusive to all other types",
        )
    names: set[str] = set()
    seen_optional = False
    for i, option in enumerate(options):
        if not isinstance(option, dict):
            continue
        where = f"{path}.{i}"
        name = option.get("name")
        if not _valid_name(name):
            errors.add(
                f"{where}.name", "APPLICATION_COMMAND_INVALID_NAME", f"Option name is invalid: {name!r}"
            )
        if name in names:
            errors.add(
                f"{where}.name", "APPLICATION_COMMAND_OPTION_NAME_ALREADY_EXISTS", f"Duplicate name {name!r}"
            )
        names.add(name)
        if option.get("type") in (1, 2):
            validate_options(option.get("options") or [], errors, f"{where}.options")
            continue
        _validate_option_values(option, errors, where)
        if option.get("required"):
            if seen_optional:
                errors.add(
                    where,
                    "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                    "Required options must be placed before non-required options",
                )
        else:
            seen_optional = True


def _validate_option_values(option: dict, errors: FormErrors, where: str) -> None:
    """Choices, ranges and lengths of one leaf option."""
    choices = option.get("choices") or []
    if choices and option.get("autocomplete"):
        errors.add(
            f"{where}.autocomplete",
            "APPLICATION_COMMAND_OPTION_CHOICES_AND_AUTOCOMPLETE",
            "Autocomplete may not be set to true if choices are present",
        )
    for j, choice in enumerate(choices):
        if isinstance(choice, dict):
            errors.max_length(f"{where}.choices.{j}.name", choice.get("name"), 100)
            errors.max_length(f"{where}.choices.{j}.value", choice.get("value"), 100)
    for low_key, high_key in (("min_value", "max_value"), ("min_length", "max_length")):
        low, high = option.get(low_key), option.get(high_key)
        if isinstance(low, int | float) and isinstance(high, int | float) and low > high:
            errors.add(
                f"{where}.{low_key}",
                "APPLICATION_COMMAND_OPTION_MIN_GREATER_THAN_MAX",
                f"{low_key} must be less than or equal to {high_key}",
            )
