"""The metrics port's HTTP server, safe to expose: idle connections hold no thread, requests
have time limits, and slow pages cannot take every thread from the probes.

`http.server.ThreadingHTTPServer` starts a thread per connection and reads with no timeout,
so a few thousand idle sockets (slowloris) pin a few thousand threads. Here one thread
accepts and watches connections with a selector; a connection goes to a small pool of request
threads only once its first bytes arrive, and one idle for IDLE_TIMEOUT_S is closed. A request
must then arrive within REQUEST_TIMEOUT_S per read. Pages marked slow (`/segments`) run on at
most SLOW_PAGES threads at once and answer 503 beyond, so the probes always find a thread.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer

log = logging.getLogger(__name__)

IDLE_TIMEOUT_S = 10.0  # a connection that sends nothing for this long is closed
REQUEST_TIMEOUT_S = 5.0  # each read of a request, and each write of its answer
REQUEST_THREADS = 8
MAX_OPEN = 4096  # connections held at once; beyond, the oldest idle one is closed
SLOW_PAGES = 2  # concurrent requests of pages marked slow


class GuardedHTTPServer(HTTPServer):
    """An HTTPServer whose `serve_forever` runs the accept-and-watch loop described above."""

    # the listen backlog: socketserver's 5 made a burst of connections wait on the kernel's SYN
    # retries (1, 3, 7, 15 s ...) whenever the accept loop fell a few behind; the kernel caps
    # it at net.core.somaxconn
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self.socket.setblocking(False)
        self._pool = ThreadPoolExecutor(REQUEST_THREADS, thread_name_prefix="seqscore-http")
        self._selector = selectors.DefaultSelector()
        self._idle: dict[socket.socket, float] = {}  # connection -> when it was accepted
        self._stopped = threading.Event()
        self._loop_done = threading.Event()
        self.slow_pages = threading.BoundedSemaphore(SLOW_PAGES)

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._selector.register(self.socket, selectors.EVENT_READ)
        try:
            while not self._stopped.is_set():
                for key, _ in self._selector.select(poll_interval):
                    if key.fileobj is self.socket:
                        self._accept()
                    else:
                        self._hand_over(key.fileobj)  # type: ignore[arg-type]
                self._close_idle(time.monotonic() - IDLE_TIMEOUT_S)
        finally:
            for conn in list(self._idle):
                self._drop(conn)
            self._selector.close()
            self._loop_done.set()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors: the idle ones go first
                log.warning("HTTP accept failed: %s", exc)
                self._close_idle(float("inf"), keep=len(self._idle) // 2)
                return
            conn.setblocking(False)
            self._idle[conn] = time.monotonic()
            self._selector.register(conn, selectors.EVENT_READ)
            if len(self._idle) > MAX_OPEN:
                self._drop(next(iter(self._idle)))  # the oldest: dicts keep insertion order

    def _hand_over(self, conn: socket.socket) -> None:
        self._selector.unregister(conn)
        del self._idle[conn]
        conn.setblocking(True)
        conn.settimeout(REQUEST_TIMEOUT_S)
        self._pool.submit(self._answer, conn)

    def _answer(self, conn: socket.socket) -> None:
        try:
            self.finish_request(conn, conn.getpeername())
        except Exception:  # a client that hangs up or times out mid-request: its problem only
            log.debug("HTTP request failed", exc_info=True)
        finally:
            self.shutdown_request(conn)

    def _close_idle(self, accepted_before: float, keep: int = 0) -> None:
        stale = [conn for conn, at in self._idle.items() if at < accepted_before]
        for conn in stale[: max(0, len(stale) - keep)]:
            self._drop(conn)

    def _drop(self, conn: socket.socket) -> None:
        self._selector.unregister(conn)
        del self._idle[conn]
        conn.close()

    def shutdown(self) -> None:
        self._stopped.set()
        self._loop_done.wait(5.0)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.server_close()
