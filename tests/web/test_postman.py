"""The Postman collection shipped for users: importable, documented, and actually working.

Every request in `bot/web/postman_collection.json` is sent, with its variables filled in the
way Postman does, to the server running the real queue and tiny models; the `jobId` a
create request saves is what the later requests use.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest

from bot.web.openapi import build_openapi
from generation.models import build_registry
from tests.web.conftest import API_KEYS

pytestmark = pytest.mark.timeout(120)

COLLECTION = Path(__file__).resolve().parents[2] / "bot" / "web" / "postman_collection.json"


def load() -> dict[str, Any]:
    return json.loads(COLLECTION.read_text(encoding="utf-8"))


def test_collection_is_postman_v21_and_matches_the_openapi_document(web_settings) -> None:
    coll = load()
    assert coll["info"]["schema"].endswith("/v2.1.0/collection.json")
    assert coll["auth"]["type"] == "bearer"
    doc = build_openapi(build_registry(web_settings))
    for item in coll["item"]:
        method = item["request"]["method"].lower()
        path = item["request"]["url"]["raw"].removeprefix("{{baseUrl}}")
        template = re.sub(r"\{\{jobId\}\}", "{job_id}", path)
        assert template in doc["paths"], template
        assert method in doc["paths"][template], (method, template)
        assert "/".join(item["request"]["url"]["path"]) == path.strip("/")
        body = item["request"].get("body")
        if body is not None:
            fields = json.loads(body["raw"])
            name = {"images": "ImageRequest", "videos": "VideoRequest", "upscales": "UpscaleRequest"}
            schema = doc["components"]["schemas"][name[path.rsplit("/", 1)[-1]]]
            assert set(fields) <= set(schema["properties"]), fields


async def test_every_request_of_the_collection_works(make_client, real_queue, web_settings) -> None:
    coll = load()
    client = await make_client(real_queue)
    variables = {v["key"]: v["value"] for v in coll["variable"]}
    variables["apiKey"] = API_KEYS["alice"]
    ids: dict[str, str] = {}

    def fill(text: str) -> str:
        return re.sub(r"\{\{(\w+)\}\}", lambda m: variables[m.group(1)], text)

    seen = {}
    for item in coll["item"]:
        request = item["request"]
        headers = {h["key"]: fill(h["value"]) for h in request.get("header", [])}
        auth = request.get("auth", coll["auth"])
        if auth["type"] == "bearer":
            headers["Authorization"] = "Bearer " + fill(auth["bearer"][0]["value"])
        url = fill(request["url"]["raw"]).removeprefix(variables["baseUrl"])
        data = fill(request["body"]["raw"]).encode() if "body" in request else None
        if item["name"] == "Download result":  # a user would wait for the job first
            await wait_complete(client, variables["jobId"], headers)
        if item["name"] == "Cancel job":  # cancel something still cancellable: a fresh job
            resp = await client.post("/api/v1/images", json={"prompt": "to cancel"}, headers=headers)
            variables["jobId"] = (await resp.json())["id"]
            url = fill(request["url"]["raw"]).removeprefix(variables["baseUrl"])
        resp = await client.request(request["method"], url, data=data, headers=headers)
        seen[item["name"]] = resp.status
        if resp.content_type == "application/json":
            body = await resp.json()
            if resp.status == 202:  # what the collection's test script does
                variables["jobId"] = ids[item["name"]] = body["id"]
    assert seen == {
        "Create image": 202,
        "Create image from a picture": 202,
        "Create video": 202,
        "Create video from a picture": 202,
        "Upscale a picture": 202,
        "Get job": 200,
        "Queue": 200,
        "Download result": 200,
        "Cancel job": 200,
        "OpenAPI document": 200,
        "Health": 200,
        "Readiness": 200,
    }
    created = {
        "Create image",
        "Create image from a picture",
        "Create video",
        "Create video from a picture",
        "Upscale a picture",
    }
    assert set(ids) == created
    # the saved-id script in the collection sets the same variable this test followed
    for name in ids:
        item = next(i for i in coll["item"] if i["name"] == name)
        assert (
            "pm.collectionVariables.set('jobId', pm.response.json().id);"
            in item["event"][0]["script"]["exec"]
        )


async def wait_complete(client: Any, job_id: str, headers: dict[str, str]) -> None:
    async with asyncio.timeout(60):
        while True:
            body = await (await client.get(f"/api/v1/jobs/{job_id}", headers=headers)).json()
            if body["state"] != "queued" and body["state"] != "in_progress":
                assert body["state"] == "complete", body
                return
            await asyncio.sleep(0.05)
