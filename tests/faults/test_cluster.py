"""seqscore on the cluster stack (3 Kafka nodes, Redis Cluster of 3 masters with a replica
each), through node failures: the stream ends with the same predictions, alerts and state,
customer by customer, as a clean run on the single-node stack."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

from consumer.bench.harness import ScorerProcess
from consumer.settings import Settings
from tests.conftest import ClusterStack
from tests.faults.runs import Streaming, assert_same_outcome, scored_run, variant, wait_flowing
from training.simulate import simulate

pytestmark = pytest.mark.slow


class Progress:
    """Samples the predictions of the running scorers; a stall is the longest time without
    one new prediction while the stream was flowing."""

    def __init__(self, scorers: list[ScorerProcess], streaming: Streaming) -> None:
        self.scorers, self.streaming = scorers, streaming
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            total = 0.0
            for scorer in list(self.scorers):
                try:
                    total += scorer.metric("seqscore_predictions_total")
                except (OSError, ValueError, AssertionError):
                    continue  # killed, or not serving yet
            self.samples.append((time.monotonic(), total))

    def stall_after(self, start: float, end: float) -> float:
        """The longest time between start and end in which no prediction was added."""
        longest, last_change, last_value = 0.0, start, None
        for at, value in self.samples:
            if at < start or at > end:
                continue
            if last_value is None or value > last_value:
                longest = max(longest, at - last_change)
                last_change, last_value = at, value
        return max(longest, end - last_change)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# a clean run, then a faulted one streamed slowly enough to span three failovers, on a
# cluster whose start (three JVMs, six Redis nodes) may fall into this test's setup
@pytest.mark.timeout(900)
# exactly_once is not here yet: its broker failover outlasted the stream (issue 25's note)
@pytest.mark.parametrize("guarantee", ["at_least_once"])
def test_two_scorers_on_the_cluster_lose_nothing_when_a_broker_a_redis_master_and_a_scorer_die(
    test_env: dict[str, str], tiny_registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unique: str,
    cluster_stack: ClusterStack, guarantee: str,
) -> None:
    """On the local cluster (3 KRaft nodes, replication factor 3, min.insync.replicas 2; Redis
    3 masters + 3 replicas), two members of one group stream while (a) a broker is killed with
    SIGKILL and restarted, (b) the Redis master with the most partitions is killed with
    SIGKILL and its replica takes over, (c) one scorer is killed. Everything ends as a clean
    run on the single-node stack ends: predictions, alerts, and state customer by customer
    (the cluster's keys carry their partition's hash tag; tests/faults/runs.py leaves it out).
    Under exactly-once a read_committed consumer must also see each prediction once."""
    history = simulate(300, seed=48)  # 3,888 events: 97 s at 40 a second, through all three failures
    logs = tmp_path / "faulted"
    env = test_env | cluster_stack.env | {"SEQSCORE_KAFKA__SESSION_TIMEOUT_MS": "6000",
                                          "SEQSCORE_PROCESSING_GUARANTEE": guarantee,
                                          # a killed member's open transaction holds its partitions this long
                                          "SEQSCORE_TRANSACTION_TIMEOUT_MS": "15000"}
    streaming = Streaming()
    stalls: dict[str, float] = {}

    def failures(a: ScorerProcess, settings: Settings) -> list[ScorerProcess]:
        b = ScorerProcess(a.env, tiny_registry, logs / "scorer-b.log").start()
        scorers = [a, b]
        progress = Progress(scorers, streaming)
        try:
            b.wait_ready()
            wait_flowing(a, predictions=200)
            for name, kill, heal in (
                ("kafka broker", lambda: cluster_stack.kill("kafka-2"), lambda: cluster_stack.up("kafka-2")),
                ("redis master", lambda: cluster_stack.kill_redis_master(settings.topics.events_partitions),
                 lambda: cluster_stack.up("redis")),
                ("scorer", lambda: b.stop(signal.SIGKILL), None),
            ):
                assert streaming.flowing.is_set(), f"the {name} fault came after the stream ended"
                started = time.monotonic()
                kill()
                time.sleep(8)  # down long enough for the failover to happen, not just a reconnect
                if heal is not None:
                    heal()
                time.sleep(4)
                stalls[name] = progress.stall_after(started, time.monotonic())
            return [a]
        finally:
            progress.stop()
            if b.process is not None and b.process.poll() is None:
                b.process.kill()  # on success already killed by the third fault; never left running

    for name in ("clean", "faulted"):
        (tmp_path / name).mkdir()
    clean = scored_run(variant(test_env, unique, "c"), tiny_registry, history, tmp_path / "clean", monkeypatch,
                       rate=0)
    faulted = scored_run(variant(env, unique, "f"), tiny_registry, history, logs, monkeypatch,
                         fault=failures, rate=40, streaming=streaming)
    assert_same_outcome(clean, faulted, history)
    if guarantee == "exactly_once":
        repeated = {event: len(seen) for event, seen in faulted.predictions.items() if len(seen) != 1}
        assert not repeated, f"read_committed saw more than one prediction for {len(repeated)} events"
    report = "; ".join(f"{name} {seconds:.1f} s" for name, seconds in stalls.items())
    (tmp_path / "stalls.txt").write_text(report + "\n")
    print(f"longest stall of the stream per failover: {report}")
    assert set(stalls) == {"kafka broker", "redis master", "scorer"}
