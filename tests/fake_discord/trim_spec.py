"""Regenerate the fake's copy of Discord's OpenAPI description from the full one.

    python -m tests.fake_discord.trim_spec /work/shared/discord-api-spec/openapi.json [--commit SHA]

Keeps the operations the fake serves (`rest.ROUTES`; a route parameter also stands for a
literal such as `@original` or `@me`), with their parameters and request bodies, and every
schema those reach through `$ref`; responses, examples and other content types are dropped.
The source commit comes from `--commit` or from the README beside the input file, and is
written into the copy's `info.x-source` and into `discord_openapi.md`; the MIT licence
beside the input is copied to `discord_openapi.LICENSE`.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .rest import ROUTES

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
TRIMMED = HERE / "discord_openapi.json"
NOTE = HERE / "discord_openapi.md"
LICENSE = HERE / "discord_openapi.LICENSE"
SOURCE_REPOSITORY = "discord/discord-api-spec"
SOURCE_PATH = "specs/openapi.json"
METHODS = ("get", "put", "post", "patch", "delete")
COMMIT = re.compile(r"\b[0-9a-f]{40}\b")


def _segments(path: str) -> list[str]:
    return path.strip("/").split("/")


def _is_param(segment: str) -> bool:
    return segment.startswith("{") and segment.endswith("}")


def served(method: str, spec_path: str) -> bool:
    """Whether a route of the fake answers `method spec_path`."""
    wanted = _segments(spec_path)
    for route_method, pattern, _, _ in ROUTES:
        mine = _segments(pattern)
        if route_method.lower() != method or len(mine) != len(wanted):
            continue
        pairs = zip(mine, wanted, strict=True)
        if all(a == b or (_is_param(a) and (_is_param(b) or b.startswith("@"))) for a, b in pairs):
            return True
    return False


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            yield ref
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _operation(operation: dict, shared_parameters: list[dict]) -> dict:
    kept: dict[str, Any] = {"operationId": operation["operationId"]}
    parameters = shared_parameters + operation.get("parameters", [])
    if parameters:
        kept["parameters"] = parameters
    body = operation.get("requestBody")
    if body is not None:
        json_body = body["content"].get("application/json")
        kept["requestBody"] = {
            "required": body.get("required", False),
            "content": {"application/json": json_body},
        }
    return kept


def trim(spec: dict, commit: str) -> dict:
    paths: dict[str, dict] = {}
    for path, item in spec["paths"].items():
        operations = {
            method: _operation(item[method], item.get("parameters", []))
            for method in METHODS
            if method in item and served(method, path)
        }
        if operations:
            paths[path] = operations
    schemas = spec["components"]["schemas"]
    keep: set[str] = set()
    pending = list(_refs(paths))
    while pending:
        ref = pending.pop()
        name = ref.rsplit("/", 1)[-1]
        if not ref.startswith("#/components/schemas/"):
            raise ValueError(f"unexpected reference {ref} in a request; extend trim_spec")
        if name not in keep:
            keep.add(name)
            pending.extend(_refs(schemas[name]))
    info = dict(spec["info"])
    info["x-source"] = {
        "repository": SOURCE_REPOSITORY,
        "path": SOURCE_PATH,
        "commit": commit,
        "trimmed_by": "python -m tests.fake_discord.trim_spec",
    }
    return {
        "openapi": spec["openapi"],
        "info": info,
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": {name: schemas[name] for name in sorted(keep)}},
    }


def find_commit(spec_file: Path) -> str:
    readme = spec_file.parent / "README.md"
    found = COMMIT.search(readme.read_text()) if readme.exists() else None
    if found is None:
        raise SystemExit(f"no commit given and none found in {readme}: pass --commit SHA")
    return found.group(0)


def write_note(trimmed: dict) -> None:
    source = trimmed["info"]["x-source"]
    operations = [f"{m.upper()} {p}" for p, ops in trimmed["paths"].items() for m in ops]
    NOTE.write_text(
        "# Discord's OpenAPI description, trimmed for the fake\n\n"
        f"`discord_openapi.json` is `{source['path']}` from `{source['repository']}` at commit "
        f"`{source['commit']}` (MIT licence), cut down to the {len(operations)} operations the fake "
        f"serves and the {len(trimmed['components']['schemas'])} schemas their requests use. "
        "Regenerate it with `python -m tests.fake_discord.trim_spec PATH/TO/openapi.json` "
        "(the commit is read from the README beside that file, or given with `--commit`).\n\n"
        "The fake validates every request against it (`spec_check.py`) and adds the documented "
        "limits the schema does not encode (`messages.py`, `commands.py`).\n\n"
        "## Operations\n\n" + "".join(f"- `{op}`\n" for op in operations)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path, help="the full specs/openapi.json")
    parser.add_argument("--commit", help="the discord-api-spec commit it comes from")
    args = parser.parse_args(argv)
    spec = json.loads(args.spec.read_text())
    trimmed = trim(spec, args.commit or find_commit(args.spec))
    TRIMMED.write_text(json.dumps(trimmed, indent=1, sort_keys=False) + "\n")
    write_note(trimmed)
    licence = args.spec.parent / "LICENSE"
    if licence.exists():
        LICENSE.write_text(licence.read_text())
    operations = sum(len(ops) for ops in trimmed["paths"].values())
    schemas = len(trimmed["components"]["schemas"])
    sys.stdout.write(f"wrote {TRIMMED} ({operations} operations, {schemas} schemas)\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
