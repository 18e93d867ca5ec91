"""The OpenAPI document against the running server: schemathesis, and route-table parity.

The server runs for real (its own thread and event loop, real queue, worker, tiny models
and SQLite) on 127.0.0.1, and schemathesis drives it over HTTP from the document served at
/api/v1/openapi.json, checking status codes, content types, headers and response bodies.
"""

from __future__ import annotations

import asyncio
import base64
import io
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from PIL import Image
from schemathesis import GenerationMode

from bot.core.inprocess import InProcessExecutor
from bot.core.queue import JobQueue
from bot.core.store import create_store
from bot.settings import Settings
from bot.web import create_web_app, serve
from bot.web.openapi import build_openapi
from generation.models import build_registry
from tests.web.conftest import auth, make_web_settings

pytestmark = pytest.mark.timeout(120)

# routes that are for browsers, not API clients, and stay out of the document
#: the status page and what it loads: for browsers, not API clients
UNDOCUMENTED = {"/", "/status.json", "/status.js", "/gallery/{job_id}", "/gallery/{job_id}/poster"}


class LiveServer:
    """The whole web stack in a background thread, as `python -m bot.web` would run it."""

    def __init__(self, settings: Settings, manager: object) -> None:
        self.settings = settings
        self.manager = manager
        self.url = ""
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="live-web", daemon=True)

    def __enter__(self) -> LiveServer:
        self._thread.start()
        if not self._ready.wait(60):
            raise RuntimeError("web server did not start")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced to the test thread
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        store = create_store(self.settings)
        await store.open()
        executor = InProcessExecutor(settings=self.settings, manager=self.manager)  # type: ignore[arg-type]
        queue = JobQueue(settings=self.settings, store=store, executor=executor)
        await queue.start()
        try:
            app = create_web_app(
                settings=self.settings, store=store, queue=queue, registry=build_registry(self.settings)
            )
            async with serve(app, host="127.0.0.1", port=0) as runner:
                host, port = runner.addresses[0][:2]
                self.url = f"http://{host}:{port}"
                self._ready.set()
                await self._stop.wait()
        finally:
            await queue.stop(graceful=False, timeout_s=10)
            await store.close()


@pytest.fixture(scope="module")
def live_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_cache: Path, pipeline_manager
) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("live-web")
    # small images only, so accepted jobs stay cheap on the CPU while schemathesis runs
    settings = make_web_settings(tmp, tiny_model_cache, max_steps=2, max_queued_per_user=3)
    with LiveServer(settings, pipeline_manager) as server:
        yield server.url


@pytest.fixture(scope="module")
def api_schema(live_server: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{live_server}/api/v1/openapi.json")


MAX_EXAMPLES = 20


def _tiny_png() -> str:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 160, 30)).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


TINY_PNG = _tiny_png()


def _with_a_real_picture(case: schemathesis.Case) -> schemathesis.Case:
    """Random base64 is schema-valid but no picture, and rightly refused: a positive case that
    carries an image carries a real one (pictures themselves are tested in test_api_inputs)."""
    if isinstance(case.body, dict) and case.body.get("image") is not None:
        case.body = {**case.body, "image": TINY_PNG}
    if isinstance(case.body, dict) and case.body.get("preset") is not None:
        # a random name is one the key never saved, rightly refused (presets: test_http.py)
        case.body = {k: v for k, v in case.body.items() if k != "preset"}
    return case


def test_server_matches_its_openapi_document(api_schema: schemathesis.BaseSchema, live_server: str) -> None:
    """Positive and negative cases for every operation, each checked by schemathesis.

    (Driven through Hypothesis directly: schemathesis' pytest plugin does not run under pytest 9.)
    """
    failures: dict[str, str] = {}
    calls: dict[str, int] = {}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:
        label = operation.label
        positive = operation.as_strategy(generation_mode=GenerationMode.POSITIVE).map(_with_a_real_picture)
        strategy = positive | operation.as_strategy(generation_mode=GenerationMode.NEGATIVE)

        @given(case=strategy)
        @hypothesis_settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.generate],
        )
        def check(case: schemathesis.Case) -> None:
            calls[label] = calls.get(label, 0) + 1  # noqa: B023 - check() runs within this iteration
            case.call_and_validate(base_url=live_server, headers=auth("alice"), timeout=20)

        try:
            check()
        except Exception as exc:  # collect every operation's problem, then fail once
            failures[operation.label] = f"{type(exc).__name__}: {exc}"[:2000]
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
    # operations without parameters have a single possible request; the others get many
    assert len(calls) == len(operations) and min(calls.values()) >= 1 and sum(calls.values()) >= 100, calls


def test_every_route_is_documented_and_every_documented_path_exists(web_settings) -> None:
    from aiohttp import web

    from tests.web.conftest import StubQueue

    app = create_web_app(
        settings=web_settings,
        store=None,
        queue=StubQueue(store=None),
        registry=build_registry(web_settings),  # type: ignore[arg-type]
    )
    served: dict[str, set[str]] = {}
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        served.setdefault(path, set()).add(route.method.lower())
    doc = build_openapi(build_registry(web_settings))
    documented = {path: {m for m in ops if m != "parameters"} for path, ops in doc["paths"].items()}
    assert {p: m for p, m in served.items() if p not in UNDOCUMENTED} == documented
    assert doc["openapi"].startswith("3.1")
    assert isinstance(web.Application, type)
