"""Faults injected into the real stack while a stream flows: the scorer killed with SIGKILL
several times, Redis stopped for 10 s and killed with SIGKILL, the broker stopped and restarted. Each faulted run
must end exactly like a clean run of the same stream (tests/faults/runs.py)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from consumer.bench.harness import ScorerProcess, wait_for
from consumer.settings import Settings
from tests.conftest import REPO
from tests.faults.runs import Streaming, faulted_equals_clean, kill_repeatedly, wait_flowing
from training.simulate import simulate

pytestmark = pytest.mark.slow
STACK = str(REPO / "deploy" / "stack")


def stack(*args: str) -> None:
    result = subprocess.run([STACK, *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"deploy/stack {' '.join(args)}: {result.stderr}"


def test_sigkill_at_random_points_three_times_matches_a_clean_run(
    test_env: dict[str, str], tiny_registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unique: str
) -> None:
    history = simulate(300, seed=41)
    streaming = Streaming()
    kill_three_times = kill_repeatedly(3, random.Random(41), tmp_path / "faulted", streaming=streaming)
    # slow enough (about 70 s) that each kill, a restart and a rejoin apart, lands mid-stream;
    # malformed, repeated and out-of-order records among the valid ones, as the outside check sends
    faulted_equals_clean(test_env, unique, tiny_registry, history, tmp_path, monkeypatch, kill_three_times,
                         rate=60.0, hostile=True, streaming=streaming)


def test_redis_down_for_ten_seconds_pauses_and_resumes_without_loss(
    test_env: dict[str, str], tiny_registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unique: str
) -> None:
    history = simulate(200, seed=42)

    def redis_outage(scorer: ScorerProcess, _settings: Settings) -> ScorerProcess:
        wait_flowing(scorer)
        stack("down", "redis")
        try:
            down_at = time.monotonic()
            wait_for(lambda: scorer.metric("seqscore_paused", 'reason="redis"') == 1, timeout=30,
                     what="paused for Redis")
            status, body = scorer.get("/readyz")
            assert status == 503 and b"paused: redis unavailable" in body
            assert scorer.get("/healthz")[0] == 200, "alive while paused"
            time.sleep(max(0.0, 10 - (time.monotonic() - down_at)))
        finally:
            stack("up", "redis")
        wait_for(lambda: scorer.metric("seqscore_paused", 'reason="redis"') == 0, timeout=60, what="resumed")
        wait_for(lambda: scorer.get("/readyz")[0] == 200, timeout=60, what="ready again")
        assert scorer.metric("seqscore_redis_errors_total") > 0
        return scorer

    faulted_equals_clean(test_env, unique, tiny_registry, history, tmp_path, monkeypatch, redis_outage)


def test_broker_restart_mid_stream_loses_nothing(
    test_env: dict[str, str], tiny_registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unique: str
) -> None:
    history = simulate(200, seed=43)

    def broker_restart(scorer: ScorerProcess, _settings: Settings) -> ScorerProcess:
        wait_flowing(scorer)
        stack("down", "kafka")
        try:
            time.sleep(3)
            assert scorer.get("/healthz")[0] == 200, "alive while the broker is away"
        finally:
            stack("up", "kafka")
        return scorer

    faulted_equals_clean(test_env, unique, tiny_registry, history, tmp_path, monkeypatch, broker_restart)


def test_redis_killed_with_sigkill_twice_mid_stream_loses_nothing(
    test_env: dict[str, str], tiny_registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unique: str
) -> None:
    """Not a graceful stop: redis-server gets SIGKILL, so only what its AOF already holds survives.
    Redis appends a write to the AOF before it replies, and the scorer stores offsets only after
    the reply, so even `appendfsync everysec` loses nothing here (a host crash could: see
    docs/guarantees.md)."""
    history = simulate(200, seed=44)

    def redis_sigkills(scorer: ScorerProcess, _settings: Settings) -> ScorerProcess:
        run_dir = Path(os.environ.get("SEQSCORE_STACK_DIR", REPO / "deploy" / ".run"))
        for attempt in range(2):
            wait_flowing(scorer, predictions=300 + 900 * attempt)
            pid = int((run_dir / "redis.pid").read_text())
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: scorer.metric("seqscore_paused", 'reason="redis"') == 1, timeout=30,
                     what="paused for Redis")
            stack("up", "redis")
            wait_for(lambda: scorer.metric("seqscore_paused", 'reason="redis"') == 0, timeout=60, what="resumed")
        return scorer

    faulted_equals_clean(test_env, unique, tiny_registry, history, tmp_path, monkeypatch, redis_sigkills,
                         rate=200.0)
