"""Checking a slash-command payload against the command we registered, before discord.py parses it.

Discord's client enforces option names, types, choices and ranges before a member can send a
command, and discord.py trusts it: a payload that breaks those rules (a stale command after a
re-sync, a client bug, or someone talking to the API directly) makes its parser raise outside
any error handler (`Namespace` on a list where a snowflake belongs: the member sees "the
application did not respond"), or fail as an "incident". `payload_problem` says in one phrase
what is wrong with such a payload, so the command tree can refuse it politely instead. Found by
fuzzing (tests/reliability/fuzzing.py).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import discord
from discord import app_commands
from discord.enums import AppCommandOptionType

log = logging.getLogger(__name__)

_SNOWFLAKE_TYPES = (
    AppCommandOptionType.user,
    AppCommandOptionType.channel,
    AppCommandOptionType.role,
    AppCommandOptionType.mentionable,
    AppCommandOptionType.attachment,
)


def _fits_type(kind: AppCommandOptionType, value: Any) -> bool:
    if isinstance(value, bool):
        return kind is AppCommandOptionType.boolean
    if kind is AppCommandOptionType.string:
        return isinstance(value, str)
    if kind is AppCommandOptionType.integer:
        return isinstance(value, int)
    if kind is AppCommandOptionType.number:
        return isinstance(value, int | float) and math.isfinite(value)
    if kind in _SNOWFLAKE_TYPES:
        return isinstance(value, str | int) and str(value).isdigit() and len(str(value)) <= 20
    return True


def _shown(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 24 else text[:20] + "…"


def _value_problem(param: app_commands.Parameter, value: Any) -> str | None:
    name = param.display_name
    if param.choices and value not in [choice.value for choice in param.choices]:
        return f"`{name}` must be one of: {', '.join(str(c.name) for c in param.choices)}"
    low, high = param.min_value, param.max_value
    if param.type is AppCommandOptionType.string:
        size = len(value)
        if (low is not None and size < low) or (high is not None and size > high):
            return f"`{name}` must be {low or 0}-{high} characters long (it has {size})"
        return None
    numeric = param.type in (AppCommandOptionType.integer, AppCommandOptionType.number)
    if numeric and ((low is not None and value < low) or (high is not None and value > high)):
        return f"`{name}` must be between {low} and {high} (got {_shown(value)})"
    return None


def _find(tree: app_commands.CommandTree[Any], data: dict[str, Any]) -> tuple[Any, Any]:
    """The command the payload names (walking subcommand groups) and its leaf options."""
    guild: discord.Object | None = None
    if str(data.get("guild_id") or "").isdigit():
        guild = discord.Object(int(data["guild_id"]))
    command = tree.get_command(str(data.get("name")), guild=guild) if guild else None
    if command is None:
        command = tree.get_command(str(data.get("name")))
    options = data.get("options") or []
    while isinstance(command, app_commands.Group):
        if not (
            isinstance(options, list)
            and len(options) == 1
            and isinstance(options[0], dict)
            and options[0].get("type") in (1, 2)
        ):
            return command, "it names no subcommand"
        command = command.get_command(str(options[0].get("name")))
        if command is None:
            return None, "it names a subcommand that does not exist"
        options = options[0].get("options") or []
    return command, options


def payload_problem(
    tree: app_commands.CommandTree[Any], data: dict[str, Any], *, autocomplete: bool = False
) -> str | None:
    """What is wrong with an application command payload, or None when Discord could have sent it.

    Unknown commands are left to discord.py (it raises CommandNotFound, which the tree's error
    handler answers). For autocomplete payloads only the shape is checked: the focused option
    carries whatever the member has typed so far.
    """
    command, options = _find(tree, data)
    if isinstance(options, str):
        return options
    if not isinstance(command, app_commands.Command):
        return None
    if not isinstance(options, list):
        return "its options are malformed"
    params = {p.display_name: p for p in command.parameters}
    seen: set[str] = set()
    for option in options:
        if not isinstance(option, dict):
            return "it has a malformed option"
        name = option.get("name")
        param = params.get(name) if isinstance(name, str) else None
        if param is None:
            return "it has an option this command does not have"
        if name in seen:
            return f"it gives `{name}` twice"
        seen.add(name)
        focused = autocomplete and option.get("focused")
        value = option.get("value")
        if option.get("type") != param.type.value or (not focused and not _fits_type(param.type, value)):
            return f"`{name}` has a value of the wrong type"
        if not autocomplete:
            problem = _value_problem(param, value)
            if problem:
                return problem
    if not autocomplete:
        missing = [p.display_name for p in command.parameters if p.required and p.display_name not in seen]
        if missing:
            return f"the required option `{missing[0]}` is missing"
    return None
