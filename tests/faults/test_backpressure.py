"""Backpressure: Redis stalling (CLIENT PAUSE, longer than the scorer's socket timeout) and
the broker throttling the scorer's produce requests (a client quota) while a stream flows.
The scorer must stop consuming rather than buffer, keep its memory flat, and end exactly
like a clean run of the same stream."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis

from consumer.bench.harness import ScorerProcess, running, wait_for
from consumer.bench.loadgen import StreamPlan, stream
from consumer.settings import Settings, load_settings
from tests.conftest import REPO
from tests.faults.runs import faulted_equals_clean, wait_flowing
from training.simulate import simulate

pytestmark = pytest.mark.slow
SCORER_CLIENT_ID = "seqscore-throttled"


def rss_mb(scorer: ScorerProcess) -> float:
    assert scorer.process is not None
    for line in Path(f"/proc/{scorer.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def client_quota(settings: Settings, add: str | None) -> None:
    """Set (or with None delete) the broker's produce quota for the scorer's client id."""
    change = ["--add-config", add] if add else ["--delete-config", "producer_byte_rate"]
    command = ["java", "-cp", str(REPO / "deploy" / ".cache" / "kafka" / "lib" / "*"), "kafka.admin.ConfigCommand",
               "--bootstrap-server", settings.kafka_bootstrap, "--alter", "--entity-type", "clients",
               "--entity-name", SCORER_CLIENT_ID, *change]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def records_waiting(settings: Settings) -> int:
    """Records on the events topic beyond the group's committed offsets, from the broker: the
    scorer's lag gauge comes from high watermarks its fetches bring, and a paused consumer
    fetches nothing, so the gauge holds its value from before the wait."""
    from confluent_kafka import Consumer, TopicPartition

    probe = Consumer({**settings.kafka_config(), "group.id": settings.group_id, "enable.auto.commit": False})
    try:
        partitions = [TopicPartition(settings.topics.events, p) for p in range(settings.topics.events_partitions)]
        waiting = 0
        for tp in probe.committed(partitions, timeout=30):
            low, high = probe.get_watermark_offsets(tp, timeout=30, cached=False)
            waiting += high - (tp.offset if tp.offset >= 0 else low)
        return waiting
    finally:
        probe.close()


def test_a_stalling_redis_pauses_the_scorer_and_loses_nothing(
    test_env: dict[str, str], tiny_registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unique: str
) -> None:
    history = simulate(200, seed=43)

    def stalls(scorer: ScorerProcess, settings: Settings) -> ScorerProcess:
        wait_flowing(scorer)
        admin = redis.Redis.from_url(settings.redis_url)
        baseline = rss_mb(scorer)
        paused_seen, rss = [], []
        for _ in range(3):  # each stall outlasts the scorer's 5 s socket timeout
            admin.execute_command("CLIENT", "PAUSE", 7000, "ALL")
            started = time.monotonic()
            while time.monotonic() - started < 7.0:
                paused_seen.append(scorer.metric("seqscore_paused", 'reason="redis"'))
                rss.append(rss_mb(scorer))
                time.sleep(0.25)
            time.sleep(1.0)
        print(f"\nRedis stalled 3 x 7 s: paused seen, RSS {baseline:.0f} -> {max(rss):.0f} MB")
        assert max(paused_seen) == 1, "a stalled Redis shows as a pause (metric and readiness)"
        assert max(rss) - baseline < 150, f"memory grew while Redis stalled: {baseline:.0f} -> {max(rss):.0f} MB"
        wait_for(lambda: scorer.metric("seqscore_paused", 'reason="redis"') == 0, timeout=30, what="resumed")
        return scorer

    faulted_equals_clean(test_env, unique, tiny_registry, history, tmp_path, monkeypatch, stalls)


def test_a_throttled_producer_stops_consumption_with_flat_memory_and_loses_nothing(
    test_env: dict[str, str], tiny_registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unique: str
) -> None:
    history = simulate(600, seed=44)  # long enough that records wait while the output is throttled

    throttled: list[ScorerProcess] = []

    def throttle(scorer: ScorerProcess, settings: Settings) -> ScorerProcess:
        wait_flowing(scorer)
        # the same scorer under a client id the broker throttles to 4 KB/s (a few outputs a second)
        assert scorer.stop() == 0
        client_quota(settings, "producer_byte_rate=4096")
        try:
            env = scorer.env | {"SEQSCORE_KAFKA__CLIENT_ID": SCORER_CLIENT_ID}
            scorer = ScorerProcess(env, Path(env["SEQSCORE_REGISTRY"]), tmp_path / "faulted" / "throttled.log").start()
            throttled.append(scorer)
            scorer.wait_ready()
            wait_for(lambda: scorer.metric("seqscore_events_total") > 0, timeout=60, what="consuming again")
            baseline, consumed_at_start = rss_mb(scorer), scorer.metric("seqscore_events_total")
            rss, stop = [baseline], threading.Event()

            def sample() -> None:
                while not stop.wait(0.25):
                    rss.append(rss_mb(scorer))

            sampler = threading.Thread(target=sample)
            sampler.start()
            time.sleep(10)
            stop.set()
            sampler.join()
            consumed = scorer.metric("seqscore_events_total") - consumed_at_start
            waiting = records_waiting(settings)
            max_batch = int(env.get("SEQSCORE_BATCH__MAX_BATCH", "1024"))
            print(f"\nthrottled 10 s: consumed {consumed:.0f}, {waiting:.0f} waiting, RSS {baseline:.0f} -> "
                  f"{max(rss):.0f} MB")
            # the loop waits for each batch's acknowledgements before it takes the next but one
            assert consumed <= 3 * max_batch, f"consumed {consumed} records while the output was throttled"
            assert waiting > max_batch, "records were there to consume: the scorer held back, it did not run dry"
            # ops watch the lag most during such a wait: it must come from the broker, not from the
            # last fetch before the pause (the scorer's position is at most the batches it holds
            # ahead of the group's committed offsets)
            time.sleep(2.5)  # one more lag update after the broker was read
            lag = scorer.metric("seqscore_consumer_lag_messages")
            print(f"lag gauge {lag:.0f}, waiting on the broker before it {waiting}")
            assert lag >= waiting - 3 * max_batch, f"the lag gauge shows {lag:.0f} while {waiting} records wait"
            assert max(rss) - baseline < 150, f"memory grew while throttled: {baseline:.0f} -> {max(rss):.0f} MB"
            assert scorer.get("/healthz")[0] == 200, "a throttled scorer is slow, not dead"
        finally:
            client_quota(settings, None)
        return scorer

    try:
        faulted_equals_clean(test_env, unique, tiny_registry, history, tmp_path, monkeypatch, throttle)
    finally:  # a failure inside the fault leaves the restarted scorer to us
        for scorer in throttled:
            if scorer.process is not None and scorer.process.poll() is None:
                scorer.process.kill()


def test_sigterm_while_redis_stalls_stops_the_scorer_without_committing_the_batch(
    test_env: dict[str, str], tiny_registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in test_env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    history = simulate(100, seed=46)
    admin = redis.Redis.from_url(settings.redis_url)
    with running(test_env, tiny_registry, tmp_path / "serve.log") as scorer:
        scorer.wait_ready()
        stream(history, settings.topics.events, settings.kafka_config(), StreamPlan(rate=300), progress=False)
        wait_flowing(scorer, 100)
        admin.execute_command("CLIENT", "PAUSE", 30_000, "ALL")  # it ends by itself: UNPAUSE would wait too
        paused_until = time.monotonic() + 30
        try:
            wait_for(lambda: scorer.metric("seqscore_paused", 'reason="redis"') == 1, timeout=30,
                     what="paused for Redis")
            stopped_at = time.monotonic()
            assert scorer.process is not None
            scorer.process.send_signal(signal.SIGTERM)
            code = scorer.process.wait(timeout=60)
            took = time.monotonic() - stopped_at
        finally:
            time.sleep(max(0.0, paused_until - time.monotonic()))
    assert code == 0 and took < 20, f"exit {code} after {took:.0f}s: a stalled Redis must not hold a SIGTERM"
    assert "stopping without storing the last batch" in (tmp_path / "serve.log").read_text()
    assert_committed_only_what_is_stored(settings, admin)


def assert_committed_only_what_is_stored(settings: Settings, client: redis.Redis) -> None:
    """Every event below the group's committed offset of its partition has its state stored: the
    customer's window records that partition's offset or a later one."""
    import numpy as np
    import orjson
    from confluent_kafka import Consumer, TopicPartition

    from consumer.bench.harness import read_topic
    from state.store import STORED_HEADER_BYTES, STORED_HEADER_DTYPE, StateStore

    events = read_topic(settings.kafka_bootstrap, settings.topics.events, 1)
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": settings.group_id,
                         "enable.auto.commit": False})
    try:
        partitions = sorted({m.partition() for m in events})
        committed = {tp.partition: tp.offset for tp in consumer.committed(
            [TopicPartition(settings.topics.events, p) for p in partitions], timeout=10)}
    finally:
        consumer.close()
    store = StateStore(client, settings.state.key_prefix, settings.state.window, 0, 3600)
    newest: dict[tuple[str, int], int] = {}  # (customer, partition) -> its newest committed offset
    for msg in events:
        if msg.offset() < committed[msg.partition()]:
            key = (orjson.loads(msg.value())["customer_id"], msg.partition())
            newest[key] = max(newest.get(key, -1), msg.offset())
    assert newest, "something was committed before the stall"
    for (customer, partition), offset in newest.items():
        head = np.frombuffer((store.raw_value(customer) or b"")[:STORED_HEADER_BYTES], STORED_HEADER_DTYPE)
        assert len(head) and int(head["partition"][0]) == partition and int(head["offset"][0]) >= offset, \
            f"{customer}: offset {offset} of partition {partition} committed, its state not stored"
