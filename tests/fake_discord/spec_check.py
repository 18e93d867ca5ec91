"""Every request the fake receives, checked against Discord's own OpenAPI description.

`discord_openapi.json` (see `discord_openapi.md` for its source commit) describes each
operation's path and query parameters and its request body as JSON Schema 2020-12; the
checks run through `jsonschema_rs`. Failures come back as Discord's `Invalid Form Body`
errors (code 50035), nested by field path the way Discord nests them, so discord.py shows
the bot exactly what the real API would have said.

Where Discord accepts more than its description says, the difference is listed in
`LENIENCE` with the reason; nothing else is relaxed.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema_rs

from .messages import FormErrors

log = logging.getLogger(__name__)

SPEC_FILE = Path(__file__).resolve().parent / "discord_openapi.json"

#: schema name -> (replacement, why Discord takes it although the description does not say so)
LENIENCE: dict[str, tuple[dict, str]] = {
    "SnowflakeType": (
        {
            "anyOf": [
                {"type": "string", "pattern": "^(0|[1-9][0-9]*)$"},
                {"type": "integer", "minimum": 0},
            ]
        },
        "ids are accepted as JSON integers too (discord.py sends attachment ids as 0, 1, ...)",
    ),
}


@dataclass(frozen=True)
class Operation:
    method: str
    template: str
    pattern: re.Pattern[str]
    literals: int  # more literal segments win: /messages/@original before /messages/{message_id}
    operation_id: str
    parameters: tuple[dict, ...]
    body: dict | None  # the application/json request body object


@functools.cache
def _spec() -> dict:
    spec = json.loads(SPEC_FILE.read_text())
    schemas = spec["components"]["schemas"]
    for name, (replacement, _) in LENIENCE.items():
        if name in schemas:
            schemas[name] = replacement
    return spec


def source_commit() -> str:
    return _spec()["info"]["x-source"]["commit"]


@functools.cache
def operations() -> tuple[Operation, ...]:
    found = []
    for template, item in _spec()["paths"].items():
        segments = template.strip("/").split("/")
        regex = "^/" + "/".join(
            f"(?P<{s[1:-1]}>[^/]+)" if s.startswith("{") else re.escape(s) for s in segments
        )
        literals = sum(not s.startswith("{") for s in segments)
        for method, operation in item.items():
            found.append(
                Operation(
                    method=method.upper(),
                    template=template,
                    pattern=re.compile(regex + "$"),
                    literals=literals,
                    operation_id=operation["operationId"],
                    parameters=tuple(operation.get("parameters", [])),
                    body=operation.get("requestBody"),
                )
            )
    return tuple(sorted(found, key=lambda op: -op.literals))


def find_operation(method: str, path: str) -> tuple[Operation, dict[str, str]] | None:
    for operation in operations():
        if operation.method != method.upper():
            continue
        match = operation.pattern.match(path)
        if match is not None:
            return operation, match.groupdict()
    return None


@functools.cache
def _validator(schema_json: str) -> jsonschema_rs.Validator:
    """One compiled validator per distinct schema; `$ref`s resolve inside the trimmed spec."""
    root = {"components": _spec()["components"], **json.loads(schema_json)}
    # formats are checked too (Discord refuses an embed url that is not a URL); unknown ones pass
    return jsonschema_rs.Draft202012Validator(root, validate_formats=True)


def _validator_for(schema: dict) -> jsonschema_rs.Validator:
    return _validator(json.dumps(schema, sort_keys=True))


def _coerce(value: str, schema: dict) -> Any:
    """Query strings are text; Discord reads `1`/`true` as booleans and digits as integers."""
    kind = schema.get("type")
    if kind == "boolean":
        return {"true": True, "1": True, "false": False, "0": False}.get(value.lower(), value)
    if kind == "integer" and re.fullmatch(r"-?\d+", value):
        return int(value)
    return value


def check_request(
    method: str, path: str, query: Mapping[str, str], body: Any, *, has_body: bool
) -> FormErrors:
    """Discord's `Invalid Form Body` errors for this request (empty when it is valid)."""
    errors = FormErrors()
    found = find_operation(method, path)
    if found is None:
        return errors
    operation, path_values = found
    for parameter in operation.parameters:
        name, where = parameter["name"], parameter["in"]
        values = path_values if where == "path" else query if where == "query" else {}
        if name not in values:
            if parameter.get("required"):
                errors.add(name, "BASE_TYPE_REQUIRED", "This field is required")
            continue
        schema = parameter["schema"]
        value = _coerce(values[name], schema)
        _report(errors, _validator_for(schema).iter_errors(value), prefix=[name])
    if operation.body is not None:
        if not has_body:
            if operation.body.get("required"):
                errors.add("", "BASE_TYPE_REQUIRED", "This field is required")
        else:
            schema = operation.body["content"]["application/json"]["schema"]
            _report(errors, _validator_for(schema).iter_errors(body), prefix=[])
    return errors


# turning validator errors into Discord's --------------------------------------------------


def _report(errors: FormErrors, found: Iterable[jsonschema_rs.ValidationError], prefix: list) -> None:
    for error in _leaves(found):
        path = [*prefix, *error.instance_path]
        code, message = _discord_error(error)
        if type(error.kind).__name__ == "Required":
            path.append(error.kind.property)
        errors.add(".".join(str(p) for p in path), code, message)


def _leaves(found: Iterable[jsonschema_rs.ValidationError]) -> Iterator[jsonschema_rs.ValidationError]:
    """Unions (anyOf/oneOf) are explained by the branch meant, not by "matches none of 11"."""
    for error in found:
        context = getattr(error.kind, "context", None)
        branch = _meant_branch(error, context) if context else None
        if branch is None:
            yield error
        else:
            yield from _leaves(branch)


def _meant_branch(error: jsonschema_rs.ValidationError, branches: list) -> list | None:
    """The branch whose JSON type and `type` discriminator fit the value; None when unclear."""
    base = list(error.instance_path)

    def wrong_kind(failure: jsonschema_rs.ValidationError) -> bool:
        where = list(failure.instance_path)
        keyword = type(failure.kind).__name__
        if where == base and keyword == "Type":
            return True
        return where == [*base, "type"] and keyword in ("Enum", "Constant", "Type")

    candidates = [b for b in branches if b and not any(wrong_kind(f) for f in b)]
    if not candidates:
        return None
    return min(candidates, key=len)


def _discord_error(error: jsonschema_rs.ValidationError) -> tuple[str, str]:
    kind = error.kind
    name = type(kind).__name__
    limit = getattr(kind, "limit", None)
    simple = {
        "MaxLength": ("BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length."),
        "MaxItems": ("BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length."),
        "MinLength": ("BASE_TYPE_MIN_LENGTH", f"Must be {limit} or more in length."),
        "MinItems": ("BASE_TYPE_MIN_LENGTH", f"Must be {limit} or more in length."),
        "Required": ("BASE_TYPE_REQUIRED", "This field is required"),
        "Maximum": ("NUMBER_TYPE_MAX", f"int value should be less than or equal to {limit}."),
        "Minimum": ("NUMBER_TYPE_MIN", f"int value should be greater than or equal to {limit}."),
        "Pattern": ("STRING_TYPE_REGEX", "String value did not match validation regex."),
        "Enum": ("BASE_TYPE_CHOICES", f"Value must be one of {getattr(kind, 'options', '')}."),
        "Constant": ("BASE_TYPE_CHOICES", f"Value must be {getattr(kind, 'expected_value', '')}."),
        "UniqueItems": ("BASE_TYPE_DUPLICATES", "Items must be unique."),
        "Format": ("URL_TYPE_INVALID_URL", "Not a well formed URL.")
        if getattr(kind, "format", None) == "uri"
        else ("BASE_TYPE_INVALID", error.message),
        "Type": ("BASE_TYPE_BAD_TYPE", f"Value must be of type {getattr(kind, 'types', '')}."),
        "AnyOf": ("UNION_TYPE_CHOICES", "Value matches none of the allowed shapes."),
        "OneOfNotValid": ("UNION_TYPE_CHOICES", "Value matches none of the allowed shapes."),
    }
    code, message = simple.get(name, ("BASE_TYPE_INVALID", error.message))
    return code, f"{message} ({error.message})" if name in ("Type", "AnyOf", "OneOfNotValid") else message
