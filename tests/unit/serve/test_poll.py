"""How a poll forms a batch: what is ready at once, never a wait to fill (no servers: a consumer
whose records arrive on a clock)."""

from __future__ import annotations

import time

import pytest

from consumer.serve.source import poll_batch


class ArrivingRecords:
    """consume(n, timeout) as librdkafka's: up to n records, blocking until n or the timeout.
    Record i becomes ready `arrivals[i]` seconds after the start."""

    def __init__(self, arrivals: list[float]) -> None:
        self.start = time.monotonic()
        self.arrivals = arrivals
        self.taken = 0

    def _ready(self) -> int:
        now = time.monotonic() - self.start
        return sum(1 for at in self.arrivals if at <= now) - self.taken

    def consume(self, n: int, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        while self._ready() < n and time.monotonic() < deadline:
            time.sleep(0.001)
        got = list(range(self.taken, self.taken + min(n, self._ready())))
        self.taken += len(got)
        return got


def timed_poll(arrivals: list[float], **kwargs: int) -> tuple[list[int], float]:
    consumer = ArrivingRecords(arrivals)
    started = time.monotonic()
    batch = poll_batch(consumer, **kwargs)  # type: ignore[arg-type]
    return batch, time.monotonic() - started


def test_ready_records_are_taken_at_once_without_waiting_to_fill_the_batch() -> None:
    batch, took = timed_poll([0.0] * 40 + [0.5] * 10, max_batch=1024, max_wait_ms=1000)
    assert batch == list(range(40)) and took < 0.2


def test_a_full_backlog_is_cut_at_max_batch() -> None:
    batch, _ = timed_poll([0.0] * 100, max_batch=64, max_wait_ms=1000)
    assert len(batch) == 64


def test_an_idle_poll_returns_with_the_first_record_to_come() -> None:
    batch, took = timed_poll([0.15, 0.15, 0.9], max_batch=1024, max_wait_ms=1000)
    assert batch == [0, 1] and 0.1 < took < 0.5


def test_an_idle_poll_gives_up_after_max_wait() -> None:
    batch, took = timed_poll([5.0], max_batch=1024, max_wait_ms=100)
    assert batch == [] and 0.09 < took < 0.5


@pytest.mark.parametrize(("min_batch", "expected"), [(30, 30), (1000, 40)])
def test_min_batch_waits_for_more_until_max_wait(min_batch: int, expected: int) -> None:
    arrivals = [0.0] * 10 + [0.1] * 20 + [0.2] * 10 + [5.0]
    batch, took = timed_poll(arrivals, max_batch=1024, max_wait_ms=400, min_batch=min_batch)
    assert len(batch) == expected
    assert (0.05 < took < 0.3) if min_batch == 30 else (0.35 < took < 0.8)
