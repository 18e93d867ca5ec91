"""The real-MongoDB leg: which tests ran on `MONGODB_TEST_URI`, and the known deviations of the
test server from mongod.

A test runs on the real server when it is the `mongodb` case of a parametrized fixture (the store
fixtures of tests/store/conftest.py) or carries `@pytest.mark.real_mongodb`. The terminal summary
counts their outcomes, so CI output shows that the leg ran rather than skipped.

CI serves MongoDB's wire protocol with SecantusDB (a beta server on WiredTiger; no mongod can be
installed on these machines). Where it answers differently from mongod, the test carries
`@pytest.mark.mongo_deviation(server=…, reason=…)` with a minimal reproduction in the reason: it
becomes `xfail(strict=True)` only when the server names itself that way (`hello` -> `setName`),
so a real mongod still runs every test, and a fixed server turns the xfail into a failure.
"""

from __future__ import annotations

import functools
import logging
import os
from collections import Counter
from urllib.parse import urlsplit, urlunsplit

import pytest

log = logging.getLogger(__name__)

MONGODB_TEST_URI = os.environ.get("MONGODB_TEST_URI", "").strip()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "real_mongodb: runs against the server at MONGODB_TEST_URI")
    config.addinivalue_line(
        "markers",
        "mongo_deviation(server, reason): a known difference of that MongoDB server from mongod; "
        "strict xfail on that server only",
    )


@functools.cache
def server_name() -> str:
    """`setName` of the server at MONGODB_TEST_URI (SecantusDB says "secantus"), "mongod" for a
    standalone, "" when no URI is set. Sync PyMongo: this runs once, at collection."""
    if not MONGODB_TEST_URI:
        return ""
    from pymongo import MongoClient

    client: MongoClient = MongoClient(MONGODB_TEST_URI, serverSelectionTimeoutMS=5000)
    try:
        hello = client.admin.command("hello")
    finally:
        client.close()
    return str(hello.get("setName") or "mongod")


def shown_uri() -> str:
    """The URI without credentials (this goes into CI logs)."""
    parts = urlsplit(MONGODB_TEST_URI)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def runs_on_real_server(item: pytest.Item) -> bool:
    if item.get_closest_marker("real_mongodb"):
        return True
    callspec = getattr(item, "callspec", None)
    return callspec is not None and "mongodb" in callspec.params.values()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if not runs_on_real_server(item):
            continue
        item.add_marker(pytest.mark.real_mongodb)
        if not MONGODB_TEST_URI:
            continue
        for mark in item.iter_markers("mongo_deviation"):
            if mark.kwargs["server"] == server_name():
                item.add_marker(pytest.mark.xfail(strict=True, reason=mark.kwargs["reason"]))


#: outcomes of the tests that ran on the real server, by pytest's words (passed, xfailed, ...)
OUTCOMES: Counter[str] = Counter()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "real_mongodb" not in report.keywords:
        return
    xfail = hasattr(report, "wasxfail")
    if report.when == "call":
        outcome = ("xfailed" if report.skipped else "xpassed") if xfail else report.outcome
    elif report.outcome == "passed":
        return
    else:  # a skip, or an error in setup or teardown
        outcome = "error" if report.failed else "skipped"
    OUTCOMES[outcome] += 1


def summary() -> str:
    text = ", ".join(f"{n} {what}" for what, n in sorted(OUTCOMES.items()))
    if not MONGODB_TEST_URI:
        return f"real MongoDB leg: not run, MONGODB_TEST_URI is unset ({text})"
    return f"real MongoDB leg: {text or 'no tests selected'} on {shown_uri()} ({server_name()})"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if OUTCOMES or MONGODB_TEST_URI:
        terminalreporter.write_line(summary())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With a server given, a leg where nothing passed (every test skipped) fails the run."""
    if MONGODB_TEST_URI and OUTCOMES and not OUTCOMES["passed"] and session.exitstatus == 0:
        log.error("MONGODB_TEST_URI is set but no real-MongoDB test passed: %s", dict(OUTCOMES))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
