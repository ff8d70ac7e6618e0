"""The metrics port under abuse: idle connections hold no thread, slow pages never starve the
probes, and /segments can require a token (no servers beyond the HTTP server itself)."""

from __future__ import annotations

import base64
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from consumer.bench.harness import free_port, http_get
from consumer.net import Response
from consumer.serve.health import serve_routes

IDLE_SOCKETS = 2000


def slow_page(_query: str) -> Response:
    time.sleep(3)
    return Response(200, b"segments\n", "text/plain")


@pytest.fixture
def port() -> Iterator[int]:
    chosen = free_port()
    server = serve_routes("127.0.0.1", chosen, {"/healthz": lambda _q: Response(200, b"ok\n", "text/plain"),
                                                 "/segments": slow_page,
                                                 "/segments.csv": lambda _q: Response(200, b"a,b\n", "text/csv")},
                          protected=("/segments", "/segments.csv"), token="s3cret-token")
    yield chosen
    server.shutdown()


def timed_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, float]:
    started = time.monotonic()
    status, _ = http_get(url, timeout=5.0, headers=headers)
    return status, time.monotonic() - started


def test_two_thousand_idle_connections_hold_no_thread_and_healthz_still_answers(port: int) -> None:
    before = threading.active_count()
    idle = []
    for _ in range(IDLE_SOCKETS):
        sock = socket.create_connection(("127.0.0.1", port))
        idle.append(sock)
    try:
        time.sleep(0.5)
        status, seconds = timed_get(f"http://127.0.0.1:{port}/healthz")
        assert status == 200 and seconds < 1.0, seconds
        assert threading.active_count() - before < 40, "threads stay bounded"
    finally:
        for sock in idle:
            sock.close()


def test_healthz_answers_while_segments_requests_are_busy(port: int) -> None:
    bearer = {"Authorization": "Bearer s3cret-token"}
    with ThreadPoolExecutor(12) as pool:
        busy = [pool.submit(timed_get, f"http://127.0.0.1:{port}/segments", bearer) for _ in range(12)]
        time.sleep(0.3)
        status, seconds = timed_get(f"http://127.0.0.1:{port}/healthz")
        assert status == 200 and seconds < 1.0, seconds
        statuses = [future.result()[0] for future in busy]
    assert 200 in statuses and set(statuses) <= {200, 503}, "beyond the pages' own limit: 503, never a hang"


def test_segments_require_the_token_when_one_is_set(port: int) -> None:
    base = f"http://127.0.0.1:{port}"
    assert http_get(f"{base}/segments.csv")[0] == 401
    assert http_get(f"{base}/segments.csv", headers={"Authorization": "Bearer wrong"})[0] == 401
    assert http_get(f"{base}/segments.csv", headers={"Authorization": "Bearer s3cret-token"})[0] == 200
    basic = base64.b64encode(b"marketing:s3cret-token").decode()  # what a browser sends after its prompt
    assert http_get(f"{base}/segments.csv", headers={"Authorization": f"Basic {basic}"})[0] == 200
    assert http_get(f"{base}/healthz")[0] == 200, "probes and metrics stay open"
    request = urllib.request.Request(f"{base}/segments.csv")
    try:
        urllib.request.urlopen(request, timeout=5)
    except urllib.error.HTTPError as exc:
        assert exc.headers["WWW-Authenticate"].startswith("Basic"), "a browser asks for it"
