"""HTTP concerns of the REST API: authentication, error shapes, request validation.

These use the stub queue (nothing runs); jobs running for real are in test_api_real.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from bot.core.jobs import JobState, Source
from bot.web.auth import ApiKeys
from generation.errors import UserError
from tests.web.conftest import API_KEYS, auth, make_job

pytestmark = pytest.mark.timeout(60)

VALID_IMAGE = {"prompt": "a red fox in snow", "steps": 2, "width": 64, "height": 64, "seed": 42}


async def assert_error(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


# -- authentication ------------------------------------------------------------------------------


async def test_no_key_is_401_with_bearer_challenge(make_client, stub_queue) -> None:
    client = await make_client(stub_queue)
    for method, path in (("GET", "/api/v1/queue"), ("POST", "/api/v1/images"), ("GET", "/api/v1/jobs/abc")):
        resp = await client.request(method, path, json=VALID_IMAGE if method == "POST" else None)
        await assert_error(resp, 401, "unauthorized")
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert stub_queue.queued == []


async def test_wrong_or_malformed_key_is_401(make_client, stub_queue) -> None:
    client = await make_client(stub_queue)
    for header in (
        "Bearer not-a-key",
        "Bearer " + API_KEYS["alice"][:-1],  # a prefix of a real key
        "Bearer " + API_KEYS["alice"] + "x",
        "Basic " + API_KEYS["alice"],
        "Bearer",
        API_KEYS["alice"],
    ):
        resp = await client.post("/api/v1/images", json=VALID_IMAGE, headers={"Authorization": header})
        await assert_error(resp, 401, "unauthorized")
    assert stub_queue.queued == []


async def test_banned_owner_is_403_and_other_keys_still_work(make_client, stub_queue, store) -> None:
    await store.set_ban("api:bob", banned=True, reason="scraping", by="admin:1")
    client = await make_client(stub_queue)
    resp = await client.post("/api/v1/images", json=VALID_IMAGE, headers=auth("bob"))
    error = await assert_error(resp, 403, "banned")
    assert "scraping" in error["message"]
    resp = await client.get("/api/v1/queue", headers=auth("bob"))
    await assert_error(resp, 403, "banned")

    resp = await client.post("/api/v1/images", json=VALID_IMAGE, headers=auth("alice"))
    assert resp.status == 202
    await store.set_ban("api:bob", banned=False, reason=None, by="admin:1")
    resp = await client.get("/api/v1/queue", headers=auth("bob"))
    assert resp.status == 200


def test_api_keys_identify_by_value_only() -> None:
    keys = ApiKeys({"a": "same-length-key-aaaa", "b": "same-length-key-bbbb", "empty": ""})
    assert len(keys) == 2  # the empty key is ignored, never matches ""
    assert keys.identify("same-length-key-aaaa") == "a"
    assert keys.identify("same-length-key-bbbb") == "b"
    assert keys.identify("") is None
    assert keys.identify("same-length-key-cccc") is None


# -- submitting ----------------------------------------------------------------------------------


async def test_submit_image_is_202_logged_as_the_key(make_client, stub_queue, store) -> None:
    client = await make_client(stub_queue)
    resp = await client.post("/api/v1/images", json=VALID_IMAGE, headers=auth("alice"))
    assert resp.status == 202
    body = await resp.json()
    assert body["state"] == "queued" and body["position"] == 1 and body["eta_s"] == 2.0
    assert body["seed"] == 42 and body["params"]["steps"] == 2 and body["model"] == "tiny-image"
    assert resp.headers["Location"] == f"/api/v1/jobs/{body['id']}"
    stored = await store.get_job(body["id"])
    assert stored is not None
    assert (stored.source, stored.user_id, stored.user_name) == (Source.API, "api:alice", "alice")
    assert stored.prompt == "a red fox in snow"
    history = await store.user_history("api:alice")
    assert [j.id for j in history] == [body["id"]]


async def test_submit_video_uses_the_video_limits(make_client, stub_queue) -> None:
    client = await make_client(stub_queue)
    resp = await client.post(
        "/api/v1/videos", json={"prompt": "waves", "frames": 8, "fps": 8, "steps": 2}, headers=auth("alice")
    )
    assert resp.status == 202
    body = await resp.json()
    assert body["kind"] == "video" and body["params"]["frames"] == 8 and body["model"] == "tiny-video"
    assert isinstance(body["seed"], int)  # drawn and recorded when none is given

    resp = await client.post("/api/v1/videos", json={"prompt": "waves", "frames": 65}, headers=auth("alice"))
    error = await assert_error(resp, 400, "invalid_request")
    assert "frames" in error["message"]


async def test_a_frame_count_off_the_models_rule_is_snapped_and_the_caller_told(
    make_client, stub_queue
) -> None:
    client = await make_client(stub_queue)
    resp = await client.post(
        "/api/v1/videos",
        json={"prompt": "waves", "model": "tiny-wan", "frames": 10, "width": 70, "steps": 2},
        headers=auth("alice"),
    )
    assert resp.status == 202
    body = await resp.json()
    assert (body["params"]["frames"], body["params"]["width"]) == (9, 64)
    assert "tiny-wan makes 4k+1 frames: using 9 (asked 10)." in body["notes"]
    assert any("multiple of 16" in note for note in body["notes"])
    again = await client.get(f"/api/v1/jobs/{body['id']}", headers=auth("alice"))
    assert (await again.json())["notes"] == body["notes"]  # kept with the request log


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({"steps": 3}, "prompt"),
        ({"prompt": "x", "steps": 0}, "steps"),
        ({"prompt": "x", "width": 4}, "width"),
        ({"prompt": "x", "guidance": "lots"}, "guidance"),
        ({"prompt": "x", "colour": "red"}, "colour"),
        ({"prompt": "x", "frames": 16}, "frames"),  # frames is a video parameter
        ({"prompt": "x", "aspect": "round"}, "aspect"),
        ({"prompt": "x" * 1001}, "prompt"),
    ],
)
async def test_invalid_parameters_are_400_naming_the_parameter(make_client, stub_queue, body, names) -> None:
    client = await make_client(stub_queue)
    resp = await client.post("/api/v1/images", json=body, headers=auth("alice"))
    error = await assert_error(resp, 400, "invalid_request")
    assert names in error["message"]
    assert stub_queue.queued == []


async def test_aspect_picks_a_shape_within_the_model_limits(make_client, stub_queue) -> None:
    client = await make_client(stub_queue)
    resp = await client.post("/api/v1/images", json={"prompt": "x", "aspect": "wide"}, headers=auth("alice"))
    assert resp.status == 202
    params = (await resp.json())["params"]
    assert params["width"] > params["height"] and params["width"] % 8 == 0 and params["height"] % 8 == 0


async def test_a_preset_of_the_key_owner_fills_in_what_the_request_leaves_out(
    make_client, stub_queue, store
) -> None:
    await store.set_defaults("member", "api:alice", {"steps": 3, "negative_prompt": "fog"})
    await store.set_defaults("preset", "api:alice", {"steps": 4, "count": 2}, name="pair")
    await store.set_defaults("preset", "api:bob", {"steps": 9}, name="other")
    client = await make_client(stub_queue)
    body = {"prompt": "x", "width": 64, "height": 64, "preset": "pair"}
    resp = await client.post("/api/v1/images", json=body, headers=auth("alice"))
    assert resp.status == 202
    params = (await resp.json())["params"]
    assert (params["steps"], params["count"], params["negative_prompt"]) == (4, 2, "fog")
    # the request wins over the preset; another key's presets are not this key's
    resp = await client.post("/api/v1/images", json={**body, "steps": 2}, headers=auth("alice"))
    assert (await resp.json())["params"]["steps"] == 2
    resp = await client.post("/api/v1/images", json={**body, "preset": "other"}, headers=auth("alice"))
    error = await assert_error(resp, 400, "invalid_request")
    assert "no preset named" in error["message"]
    assert len(stub_queue.queued) == 2


async def test_unknown_or_wrong_kind_model_is_400(make_client, stub_queue) -> None:
    client = await make_client(stub_queue)
    resp = await client.post("/api/v1/images", json={"prompt": "x", "model": "nope"}, headers=auth("alice"))
    error = await assert_error(resp, 400, "model_unavailable")
    assert "nope" in error["message"]
    resp = await client.post(
        "/api/v1/images", json={"prompt": "x", "model": "tiny-video"}, headers=auth("alice")
    )
    await assert_error(resp, 400, "model_unavailable")


async def test_body_must_be_a_json_object(make_client, stub_queue) -> None:
    client = await make_client(stub_queue)
    headers = {**auth("alice"), "Content-Type": "application/json"}
    resp = await client.post("/api/v1/images", data=b"{not json", headers=headers)
    await assert_error(resp, 400, "invalid_json")
    resp = await client.post("/api/v1/images", data=b'["a list"]', headers=headers)
    await assert_error(resp, 400, "invalid_json")
    resp = await client.post(
        "/api/v1/images", data=b"prompt=x", headers={**auth("alice"), "Content-Type": "text/plain"}
    )
    await assert_error(resp, 415, "unsupported_media_type")
    # the cap is the parameters' 64 KiB plus an input picture's INPUT_IMAGE_MAX_BYTES (8 MiB) as base64
    resp = await client.post("/api/v1/images", data=b"x" * (16 * 1024 * 1024), headers=headers)
    await assert_error(resp, 413, "payload_too_large")


class TooManyQueued(UserError):
    code = "too_many_queued"


class QueueFull(UserError):
    code = "queue_full"


@pytest.mark.parametrize(
    ("error", "status"),
    [(TooManyQueued("You have 5 jobs waiting."), 429), (QueueFull("The queue is full."), 503)],
)
async def test_queue_refusals_keep_their_code_and_message(make_client, stub_queue, error, status) -> None:
    stub_queue.submit_error = error
    client = await make_client(stub_queue)
    resp = await client.post("/api/v1/images", json=VALID_IMAGE, headers=auth("alice"))
    body = await assert_error(resp, status, error.code)
    assert body["message"] == error.message


async def test_unexpected_errors_are_500_json_without_details(make_client, stub_queue, caplog) -> None:
    stub_queue.submit_error = RuntimeError("secret internal detail")
    client = await make_client(stub_queue)
    resp = await client.post("/api/v1/images", json=VALID_IMAGE, headers=auth("alice"))
    error = await assert_error(resp, 500, "internal_error")
    assert "secret" not in error["message"] and "error id" in error["message"]
    assert any("secret internal detail" in (r.exc_text or "") for r in caplog.records)


async def test_unknown_routes_and_methods_are_json_errors(make_client, stub_queue) -> None:
    client = await make_client(stub_queue)
    await assert_error(await client.get("/api/v1/nothing-here"), 404, "not_found")
    await assert_error(await client.get("/no/such/page"), 404, "not_found")
    resp = await client.put("/api/v1/images", json=VALID_IMAGE, headers=auth("alice"))
    await assert_error(resp, 405, "method_not_allowed")
    assert "POST" in resp.headers["Allow"]


# -- reading and cancelling ----------------------------------------------------------------------


async def test_get_job_reports_position_eta_and_progress(make_client, stub_queue) -> None:
    client = await make_client(stub_queue)
    first = await (await client.post("/api/v1/images", json=VALID_IMAGE, headers=auth("alice"))).json()
    second = await (await client.post("/api/v1/images", json=VALID_IMAGE, headers=auth("alice"))).json()
    body = await (await client.get(f"/api/v1/jobs/{second['id']}", headers=auth("alice"))).json()
    assert (body["state"], body["position"], body["eta_s"], body["progress"]) == ("queued", 2, 6.0, None)

    stub_queue.run(stub_queue.queued[0], step=1, total=2)
    body = await (await client.get(f"/api/v1/jobs/{first['id']}", headers=auth("alice"))).json()
    assert body["position"] == 0 and body["progress"] == {"step": 1, "total": 2}


async def test_jobs_of_others_look_like_missing_jobs(make_client, stub_queue, store) -> None:
    client = await make_client(stub_queue)
    job = (await (await client.post("/api/v1/images", json=VALID_IMAGE, headers=auth("alice"))).json())["id"]
    discord_job = make_job(user_id="1234", source=Source.DISCORD, guild_id="9", state=JobState.QUEUED)
    await store.insert_job(discord_job)
    for job_id in (job, discord_job.id, "f" * 32, "x" * 65, "a.b"):
        for method, path in (
            ("GET", f"/api/v1/jobs/{job_id}"),
            ("DELETE", f"/api/v1/jobs/{job_id}"),
            ("GET", f"/api/v1/jobs/{job_id}/result"),
        ):
            await assert_error(await client.request(method, path, headers=auth("bob")), 404, "job_not_found")
    assert (await store.get_job(job)).state is JobState.QUEUED


async def test_cancel_own_job_then_cancel_again_is_409(make_client, stub_queue) -> None:
    client = await make_client(stub_queue)
    job = (await (await client.post("/api/v1/images", json=VALID_IMAGE, headers=auth("alice"))).json())["id"]
    resp = await client.delete(f"/api/v1/jobs/{job}", headers=auth("alice"))
    assert resp.status == 200
    assert (await resp.json())["state"] == "cancelled"
    await assert_error(
        await client.delete(f"/api/v1/jobs/{job}", headers=auth("alice")), 409, "already_finished"
    )
    await assert_error(
        await client.get(f"/api/v1/jobs/{job}/result", headers=auth("alice")), 409, "not_ready"
    )


async def test_queue_lists_only_my_jobs(make_client, stub_queue) -> None:
    client = await make_client(stub_queue)
    mine = (await (await client.post("/api/v1/images", json=VALID_IMAGE, headers=auth("alice"))).json())["id"]
    await client.post("/api/v1/images", json=VALID_IMAGE, headers=auth("bob"))
    body = await (await client.get("/api/v1/queue", headers=auth("alice"))).json()
    assert body["length"] == 2 and body["paused"] is False and body["running"] is None
    assert [j["id"] for j in body["jobs"]] == [mine] and body["jobs"][0]["position"] == 1
