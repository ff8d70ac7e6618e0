"""The loop's Redis calls through an outage (consumer/serve/retry.py): retried while Redis is
down, with the scorer paused and its membership kept; a failing state script is not waited on."""

from __future__ import annotations

import pytest
import redis

from consumer.serve import retry
from consumer.serve.health import HealthState
from consumer.serve.metrics import Metrics
from consumer.serve.retry import RedisRetry
from state.errors import StateScriptError


class Calls:
    def __init__(self, failures: list[Exception]) -> None:
        self.failures, self.calls, self.kept, self.resumed = failures, 0, 0, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "answer"


def retrier(calls: Calls, metrics: Metrics, health: HealthState) -> RedisRetry:
    def keep() -> None:
        calls.kept += 1

    def resume() -> None:
        calls.resumed += 1

    return RedisRetry(metrics, health, keep, resume)


@pytest.fixture(autouse=True)
def short_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retry, "BACKOFF_S", (0.06, 0.06))


def test_an_outage_pauses_keeps_membership_and_resumes_with_the_answer() -> None:
    metrics, health = Metrics(), HealthState()
    calls = Calls([redis.ConnectionError("down"), redis.TimeoutError("slow")])
    assert retrier(calls, metrics, health)(calls) == "answer"
    assert calls.calls == 3 and calls.kept > 0 and calls.resumed == 1
    assert health.paused_reason is None
    assert metrics.redis_errors._value.get() == 2
    assert metrics.paused.labels("redis")._value.get() == 0


def test_with_attempts_the_last_failure_is_raised_and_the_pause_stays() -> None:
    metrics, health = Metrics(), HealthState()
    calls = Calls([redis.ConnectionError("down")] * 5)
    with pytest.raises(redis.ConnectionError):
        retrier(calls, metrics, health)(calls, attempts=3)
    assert calls.calls == 3 and calls.kept == 0, "callbacks and shutdown may not poll"
    assert health.paused_reason == "redis"


def test_a_failing_state_script_is_raised_at_once_not_waited_on() -> None:
    metrics, health = Metrics(), HealthState()
    calls = Calls([StateScriptError("user_script:12: attempt to compare nil with number")])
    with pytest.raises(StateScriptError):
        retrier(calls, metrics, health)(calls)
    assert calls.calls == 1 and health.paused_reason is None
