"""Redis calls through an outage: consumption pauses and the call is retried with backoff,
while the consumer keeps its group membership; readiness and a metric say why."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from typing import TypeVar

import redis

from consumer.serve.health import HealthState
from consumer.serve.metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")
BACKOFF_S = (0.1, 5.0)  # the first wait after a failure, doubling up to the second


class RedisRetry:
    """`retry(call)` runs `call` until Redis answers. A failing state script raises
    `StateScriptError`, which is a bug and not an outage, so it is not retried."""

    def __init__(
        self, metrics: Metrics, health: HealthState, keep_membership: Callable[[], None], resume: Callable[[], None]
    ) -> None:
        self.metrics, self.health = metrics, health
        self._keep_membership, self._resume = keep_membership, resume

    def __call__(self, call: Callable[[], T], attempts: int | None = None) -> T:
        """With `attempts` (consumer callbacks, shutdown: no polling allowed) the last failure
        is raised after that many tries; without, it waits for as long as the outage lasts."""
        delay = BACKOFF_S[0]
        for attempt in itertools.count(1):
            try:
                result = call()
            except redis.RedisError as exc:
                self._failed(exc)
                if attempts is not None and attempt >= attempts:
                    raise
                deadline = time.monotonic() + delay
                while time.monotonic() < deadline:
                    if attempts is None:
                        self._keep_membership()
                    time.sleep(0.05)
                delay = min(delay * 2, BACKOFF_S[1])
                continue
            if self.health.paused_reason == "redis":
                log.info("Redis is back, resuming")
                self.health.paused_reason = None
                self.metrics.paused.labels("redis").set(0)
                self._resume()
            return result
        raise AssertionError("unreachable")

    def _failed(self, exc: redis.RedisError) -> None:
        self.metrics.redis_errors.inc()
        if self.health.paused_reason != "redis":
            log.error("Redis unavailable, pausing consumption: %s", exc)
        self.health.paused_reason = "redis"
        self.metrics.paused.labels("redis").set(1)
