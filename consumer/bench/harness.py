"""Run `seqscore serve` as a child process and read what it produced: used by the benchmark
and by the integration tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Message

from consumer.net import free_port, http_get


def wait_for(condition: Callable[[], object], timeout: float = 30.0, interval: float = 0.05, what: str = "") -> object:
    """Poll `condition` until it returns a truthy value, against a monotonic deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


class ScorerProcess:
    def __init__(self, env: dict[str, str], registry: Path, log_path: Path) -> None:
        self.port = free_port()
        self.env = os.environ | {"SEQSCORE_BATCH__MAX_WAIT_MS": "20"} | env | {
            "SEQSCORE_REGISTRY": str(registry), "SEQSCORE_METRICS_PORT": str(self.port), "TF_CPP_MIN_LOG_LEVEL": "3"}
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ScorerProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen([sys.executable, "-m", "consumer.cli", "serve"], env=self.env,
                                        stdout=log, stderr=subprocess.STDOUT)
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> tuple[int, bytes]:
        return http_get(self.url(path))

    def wait_ready(self, timeout: float = 120.0) -> None:
        def ready() -> bool:
            assert self.process is not None and self.process.poll() is None, self.log_path.read_text()[-3000:]
            return self.get("/readyz")[0] == 200

        wait_for(ready, timeout=timeout, interval=0.2, what="/readyz 200")

    def metric(self, name: str, labels: str = "") -> float:
        _, body = self.get("/metrics")
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith(name + (("{" + labels) if labels else "")) and not line.startswith("#"):
                head, value = line.rsplit(" ", 1)
                if head == name or head.startswith(name + "{"):
                    total += float(value)
        return total

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)


@contextmanager
def running(env: dict[str, str], registry: Path, log_path: Path) -> Iterator[ScorerProcess]:
    scorer = ScorerProcess(env, registry, log_path).start()
    try:
        yield scorer
    finally:
        if scorer.process is not None and scorer.process.poll() is None:
            scorer.process.kill()
            scorer.process.wait(10)


def read_topic(kafka: str | dict[str, Any], topic: str, until: int, timeout: float = 90.0) -> list[Message]:
    """Every record of `topic` from the start, once at least `until` have arrived. `kafka` is a
    bootstrap address or a client configuration (`Settings.kafka_config()`, with its security)."""
    config = {"bootstrap.servers": kafka} if isinstance(kafka, str) else dict(kafka)
    consumer = Consumer({**config, "group.id": f"reader-{topic}-{time.time()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    got: list[Message] = []

    def enough() -> bool:
        for msg in consumer.consume(1000, 0.2):
            if msg.error() is None:
                got.append(msg)
        return len(got) >= until

    try:
        wait_for(enough, timeout=timeout, interval=0, what=f"{until} records on {topic}")
        deadline = time.monotonic() + 1.0  # and whatever else is already there
        while time.monotonic() < deadline:
            got.extend(m for m in consumer.consume(1000, 0.2) if m.error() is None)
    finally:
        consumer.close()
    return got


def predictions_by_event(messages: list[Message]) -> dict[str, list[dict[str, object]]]:
    out: dict[str, list[dict[str, object]]] = {}
    for msg in messages:
        value = json.loads(msg.value() or b"null")
        out.setdefault(value["event_id"], []).append(value)
    return out


# docs/design.md, "Numbers the checks use" (same output after a crash): a row's float result depends on the batch it was
# scored in (the matrix kernels pick their blocking by batch size), so two runs that batch the
# same events differently agree to float rounding, not bit for bit.
PROBABILITY_TOLERANCE = 1e-5


def assert_same_prediction(got: dict[str, Any], want: dict[str, Any], what: str = "") -> None:
    """Every field equal, except probabilities: the same top-1 action, and each action's
    probability and the churn risk within 1e-5."""
    floats = {"actions", "churn_risk"}
    assert {k: v for k, v in got.items() if k not in floats} == {k: v for k, v in want.items() if k not in floats}, what
    assert got["actions"][0]["activity"] == want["actions"][0]["activity"], f"{what}: top-1 action"
    got_p = {a["activity"]: a["probability"] for a in got["actions"]} | {"(churn)": got["churn_risk"]}
    want_p = {a["activity"]: a["probability"] for a in want["actions"]} | {"(churn)": want["churn_risk"]}
    gap = max(abs(got_p[name] - want_p[name]) for name in got_p.keys() & want_p.keys())
    assert gap <= PROBABILITY_TOLERANCE, f"{what}: probabilities differ by {gap:g}"
