"""`seqscore serve` with several workers: one scoring loop per core behind one endpoint.

A scoring loop holds the GIL for most of a batch (decode, encode, the output JSON), so loops
in threads of one process do not add up: two drained 10,900 events/s where one drained 15,400
(docs/performance.md). Kafka Streams runs `num.stream.threads` consumers in one instance;
here each worker is a `seqscore serve` child process with its own consumer in the group, its
own producer, Redis connections and model copy. The group splits the partitions between the
workers exactly as between instances, so every guarantee of one scorer holds for each.

The parent owns the instance's endpoint: /metrics merges the workers' metrics under a
`worker` label, /healthz and /readyz answer for all of them, /segments is served by a ready
worker. It forwards SIGTERM and SIGINT, restarts a worker that dies while serving (after a
back-off), and stops with the exit status of a worker that fails before it ever served
(configuration, credentials) instead of restarting it forever. Workers get SIGTERM when the
parent dies, so a killed parent leaves no loop consuming.
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from consumer.bench.harness import free_port, http_get
from consumer.net import Response
from consumer.serve.health import SEGMENT_PAGES, json_response, serve_routes
from consumer.settings import Settings

log = logging.getLogger(__name__)

WORKER_ENV = "SEQSCORE_WORKER"  # set in a worker's environment: its index, shown in its log lines
PARENT_ENV = "SEQSCORE_WORKER_PARENT"  # and the pid of the instance that started it
RESTART_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
WATCH_EVERY_S = 0.5
STOP_TIMEOUT_S = 60.0
WORKER_HTTP_TIMEOUT_S = 2.0
PR_SET_PDEATHSIG = 1


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def worker_count(settings: Settings) -> int:
    """SEQSCORE_WORKERS, or for 0 one per usable core and at most one per events partition."""
    return settings.workers or min(usable_cores(), settings.topics.events_partitions)


def follow_parent() -> None:
    """In a worker: get SIGTERM when the instance that started it dies (Linux), and stop now
    if it already died. Set here, after exec, rather than between fork and exec, where a
    process with threads (the endpoint's) must not run Python."""
    parent = os.environ.get(PARENT_ENV)
    if not parent:
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(parent):
        raise SystemExit(f"worker {os.environ.get(WORKER_ENV)}: the instance that started it is gone")


@dataclass
class Worker:
    index: int
    port: int
    process: subprocess.Popen[bytes] | None = None
    served: bool = False  # was ready once since its last start
    restarts: int = 0
    restart_at: float | None = None  # while it waits for its back-off to restart it

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """(status, body) of its endpoint; (0, b"") when it does not answer."""
        return http_get(f"http://127.0.0.1:{self.port}{path}", WORKER_HTTP_TIMEOUT_S, headers)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class WorkerPool:
    """Runs `count` workers of the settings' scorer and serves their endpoint."""

    def __init__(self, settings: Settings, count: int) -> None:
        self.settings = settings
        self.stop_requested = threading.Event()
        base = settings.instance_id or f"{os.uname().nodename}:{settings.metrics_port}"
        self._instance_ids = [f"{base}-w{i}" for i in range(count)]
        self.workers = [Worker(i, free_port()) for i in range(count)]
        self.exit_status = 0

    def _start(self, worker: Worker) -> None:
        env = os.environ | {
            "SEQSCORE_WORKERS": "1",
            "SEQSCORE_METRICS_HOST": "127.0.0.1",
            "SEQSCORE_METRICS_PORT": str(worker.port),
            "SEQSCORE_INSTANCE_ID": self._instance_ids[worker.index],  # its own transactional id
            WORKER_ENV: str(worker.index),
            PARENT_ENV: str(os.getpid()),
        }
        worker.process = subprocess.Popen([sys.executable, "-m", "consumer.cli", "serve"], env=env)
        worker.served = False
        worker.restart_at = None
        log.info("worker %d started (pid %d)", worker.index, worker.process.pid)

    def run(self) -> int:
        s = self.settings
        server = serve_routes(s.metrics_host, s.metrics_port, self.routes(), SEGMENT_PAGES, s.segments_token)
        log.info("%d workers; serving /metrics /healthz /readyz /segments on %s:%d",
                 len(self.workers), s.metrics_host, s.metrics_port)
        try:
            for worker in self.workers:
                self._start(worker)
            while not self.stop_requested.wait(WATCH_EVERY_S):
                for worker in self.workers:
                    self._watch(worker)
        finally:
            self._stop_all()
            server.shutdown()
        return self.exit_status

    def _watch(self, worker: Worker) -> None:
        if worker.restart_at is not None:
            if time.monotonic() >= worker.restart_at:
                self._start(worker)
            return
        assert worker.process is not None
        status = worker.process.poll()
        if status is None:
            if not worker.served and worker.get("/readyz")[0] == 200:
                worker.served = True
            return
        if not worker.served:
            # it never served: configuration, credentials or an unreachable service; a
            # restart would fail the same way, so the instance stops and says so
            log.error("worker %d exited with status %d before it served: stopping the instance",
                      worker.index, status)
            self.exit_status = status or 1
            self.stop_requested.set()
            return
        delay = RESTART_DELAYS_S[min(worker.restarts, len(RESTART_DELAYS_S) - 1)]
        worker.restarts += 1
        worker.restart_at = time.monotonic() + delay
        log.error("worker %d exited with status %d: restarting it in %.0fs (its partitions move to the others)",
                  worker.index, status, delay)

    def _stop_all(self) -> None:
        for worker in self.workers:
            if worker.running:
                assert worker.process is not None
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for worker in self.workers:
            if worker.process is None:
                continue
            try:
                worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d did not stop within %.0fs: killing it", worker.index, STOP_TIMEOUT_S)
                worker.process.kill()
                worker.process.wait()

    # -- the endpoint ---------------------------------------------------------------------
    def routes(self) -> dict[str, Any]:
        return {"/metrics": self._metrics, "/healthz": self._healthz, "/readyz": self._readyz,
                "/segments": self._segments, "/segments.csv": self._segments_csv}

    def _metrics(self, _query: str) -> Response:
        scraped = []
        for worker in self.workers:
            status, body = worker.get("/metrics") if worker.running else (0, b"")
            scraped.append((worker, body.decode() if status == 200 else None))
        return Response(200, merged_metrics(scraped), "text/plain; version=0.0.4; charset=utf-8")

    def _healthz(self, _query: str) -> Response:
        problems = []
        for worker in self.workers:
            if worker.restart_at is not None:
                continue  # it is being restarted: killing the instance would not help
            status, body = worker.get("/healthz")
            if status != 200:
                problems.append(f"worker {worker.index}: {_detail(body, 'detail') or 'not answering'}")
        ok = not problems
        return json_response(200 if ok else 503, {"alive": ok, "detail": "; ".join(problems) or "all workers alive"})

    def _readyz(self, _query: str) -> Response:
        problems: list[str] = []
        version = None
        for worker in self.workers:
            if worker.restart_at is not None:
                problems.append(f"worker {worker.index}: restarting")
                continue
            status, body = worker.get("/readyz")
            if status != 200:
                found = _detail(body, "problems") or ["not answering"]
                problems += [f"worker {worker.index}: {p}" for p in found]
            version = version or _detail(body, "model_version")
        ok = not problems
        return json_response(200 if ok else 503, {"ready": ok, "problems": problems, "model_version": version})

    def _segments(self, query: str) -> Response:
        return self._from_a_worker("/segments", query, "text/html; charset=utf-8")

    def _segments_csv(self, query: str) -> Response:
        return self._from_a_worker("/segments.csv", query, "text/csv; charset=utf-8",
                                   {"Content-Disposition": 'attachment; filename="segment.csv"'})

    def _from_a_worker(self, path: str, query: str, content_type: str,
                       headers: dict[str, str] | None = None) -> Response:
        """Every worker reads the same Redis: the first one serving answers for the instance."""
        token = self.settings.segments_token  # checked here already; the worker checks it too
        auth = {"Authorization": f"Bearer {token}"} if token else None
        for worker in self.workers:
            if worker.running and worker.served:
                status, body = worker.get(f"{path}?{query}" if query else path, auth)
                if status == 200:
                    return Response(status, body, content_type, headers or {})
                if status:
                    return Response(status, body, "text/plain; charset=utf-8")
        return Response(503, b"no worker is serving yet\n", "text/plain; charset=utf-8")


def _detail(body: bytes, key: str) -> Any:
    try:
        return json.loads(body).get(key)
    except (ValueError, AttributeError):
        return None


class _Families:
    """A collector of already built metric families (the workers' merged ones)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def merged_metrics(scraped: list[tuple[Worker, str | None]]) -> bytes:
    """The workers' metrics as one exposition, each sample labelled with its `worker`, plus
    `seqscore_worker_up` and `seqscore_worker_restarts_total` per worker."""
    families: dict[str, Metric] = {}
    up = Metric("seqscore_worker_up", "1 while the worker answers its metrics scrape.", "gauge")
    restarts = Metric("seqscore_worker_restarts", "Times the worker was restarted after it died.", "counter")
    for worker, text in scraped:
        label = {"worker": str(worker.index)}
        up.samples.append(Sample("seqscore_worker_up", label, float(text is not None)))
        restarts.samples.append(Sample("seqscore_worker_restarts_total", label, float(worker.restarts)))
        for family in text_string_to_metric_families(text or ""):
            merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
            merged.samples += [s._replace(labels={**s.labels, **label}) for s in family.samples]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([*families.values(), up, restarts]))
    return generate_latest(registry)
