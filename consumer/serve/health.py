"""HTTP surface on the metrics port: /metrics (Prometheus text), /healthz (the loop is alive),
/readyz (model loaded, partitions assigned, Redis and Kafka reachable, not stalled)."""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from consumer.net import Response, Route
from consumer.serve.http_server import REQUEST_TIMEOUT_S, GuardedHTTPServer
from state.errors import ConfigError

log = logging.getLogger(__name__)



class HealthState:
    """What the loop reports and the probes read; updated per batch, read by the HTTP thread."""

    def __init__(self, stall_seconds: float = 60.0, heartbeat_seconds: float = 30.0) -> None:
        self.stall_seconds = stall_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.heartbeat = time.monotonic()
        self.last_progress = time.monotonic()
        self.model_version: str | None = None
        self.assigned = 0
        self.lag = 0
        self.paused_reason: str | None = None

    def beat(self) -> None:
        self.heartbeat = time.monotonic()

    def progressed(self) -> None:
        self.last_progress = time.monotonic()

    def alive(self) -> tuple[bool, str]:
        age = time.monotonic() - self.heartbeat
        return age < self.heartbeat_seconds, f"loop heartbeat {age:.1f}s ago"

    def ready(self) -> tuple[bool, list[str]]:
        problems = []
        if self.model_version is None:
            problems.append("no model loaded")
        if self.assigned == 0:
            problems.append("no partitions assigned")
        if self.paused_reason:
            problems.append(f"paused: {self.paused_reason} unavailable")
        stalled_for = time.monotonic() - self.last_progress
        if self.lag > 0 and stalled_for > self.stall_seconds:
            problems.append(f"stalled: lag {self.lag} and no progress for {stalled_for:.0f}s")
        return not problems, problems


def scorer_routes(registry: CollectorRegistry, health: HealthState) -> dict[str, Route]:
    """/metrics, /healthz and /readyz of one scoring loop."""

    def metrics(_query: str) -> Response:
        return Response(200, generate_latest(registry), CONTENT_TYPE_LATEST)

    def healthz(_query: str) -> Response:
        ok, detail = health.alive()
        return json_response(200 if ok else 503, {"alive": ok, "detail": detail})

    def readyz(_query: str) -> Response:
        ok, problems = health.ready()
        body = {"ready": ok, "problems": problems, "model_version": health.model_version}
        return json_response(200 if ok else 503, body)

    return {"/metrics": metrics, "/healthz": healthz, "/readyz": readyz}


def json_response(status: int, body: object) -> Response:
    return Response(status, json.dumps(body).encode(), "application/json")


# pages that scan Redis: they may take seconds, so they run on few threads, and the token
# (SEQSCORE_SEGMENTS_TOKEN) guards them, since they list every customer
SEGMENT_PAGES = ("/segments", "/segments.csv")


def serve_http(
    host: str,
    port: int,
    registry: CollectorRegistry,
    health: HealthState,
    routes: dict[str, Route] | None = None,
    token: str | None = None,
) -> GuardedHTTPServer:
    """Start the HTTP server of one scoring loop in a daemon thread; returns it (call shutdown() to stop)."""
    return serve_routes(host, port, scorer_routes(registry, health) | dict(routes or {}), SEGMENT_PAGES, token)


def authorized(header: str | None, token: str) -> bool:
    """`Authorization: Bearer TOKEN`, or Basic with TOKEN as the password (what a browser sends
    once it asked: the page's CSV link then works too)."""
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() == "bearer":
        given = value.strip()
    elif scheme.lower() == "basic":
        try:
            given = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return False
    else:
        return False
    return hmac.compare_digest(given.encode(), token.encode())


# long because the handler class closes over this call's routes, token and server
def serve_routes(
    host: str,
    port: int,
    routes: dict[str, Route],
    protected: tuple[str, ...] = (),
    token: str | None = None,
    slow: tuple[str, ...] = SEGMENT_PAGES,
) -> GuardedHTTPServer:
    """Serve GET `routes` (path -> page) in a daemon thread; returns the server. With a `token`,
    the `protected` paths answer 401 without it; `slow` paths run on a few threads at most."""

    class Handler(BaseHTTPRequestHandler):
        timeout = REQUEST_TIMEOUT_S

        def log_message(self, format: str, *args: object) -> None:
            return

        def _send(self, code: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path, _, query = self.path.partition("?")
            page = routes.get(path)
            if page is None:
                self._send(404, b"not found\n", "text/plain")
                return
            if token and path in protected and not authorized(self.headers.get("Authorization"), token):
                self._send(401, b"a token is required (SEQSCORE_SEGMENTS_TOKEN)\n", "text/plain",
                           {"WWW-Authenticate": 'Basic realm="seqscore segments", charset="UTF-8"'})
                return
            if path in slow:
                if not server.slow_pages.acquire(blocking=False):
                    self._send(503, b"busy: try again in a few seconds\n", "text/plain", {"Retry-After": "5"})
                    return
                try:
                    response = self._page(page, path, query)
                finally:
                    server.slow_pages.release()
            else:
                response = self._page(page, path, query)
            self._send(response.status, response.body, response.content_type, response.headers)

        def _page(self, page: Route, path: str, query: str) -> Response:
            try:
                return page(query)
            except Exception as exc:  # a page must never take the HTTP thread (and the probes) down
                log.exception("%s failed", path)
                return Response(500, f"{type(exc).__name__}: {exc}\n".encode(), "text/plain; charset=utf-8")

    try:
        server = GuardedHTTPServer((host, port), Handler)
    except OSError as exc:  # another process has the port, or the host is not this machine's
        raise ConfigError(f"SEQSCORE_METRICS_PORT: cannot listen on {host}:{port}: {exc.strerror}") from None
    threading.Thread(target=server.serve_forever, name="seqscore-http", daemon=True).start()
    return server
