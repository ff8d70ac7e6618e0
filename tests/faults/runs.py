"""Clean run vs faulted run of the same simulated stream, on the real stack.

Each fault test streams one history twice, into separate topics, groups and key prefixes:
once undisturbed, once with a fault injected while the stream is flowing. Afterwards every
valid event must have a prediction, every prediction must equal the clean run's (replays
may repeat one, never change it) and Redis must hold exactly the clean run's state.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import redis
from confluent_kafka import Consumer

from consumer.bench.harness import PROBABILITY_TOLERANCE, ScorerProcess, assert_same_prediction, wait_for
from consumer.bench.loadgen import StreamPlan, stream
from consumer.clients import redis_client
from consumer.settings import Settings, load_settings
from state.layout import STORED_HEADER_BYTES, STORED_HEADER_DTYPE, Keys
from training.simulate import SimulatedHistory

# returns the scorers still running: the fault may leave several members in the group
Fault = Callable[[ScorerProcess, Settings], "ScorerProcess | list[ScorerProcess]"]


# what the outside check sends too: malformed records, repeated records and events out of
# order (late within and beyond the lateness bound), among the valid ones
HOSTILE_STREAM = {"malformed": 0.02, "duplicates": 0.03, "out_of_order": 0.05}
FAULT_RUNS_TAG_KEY = b"fault-runs-tags!"


@dataclass
class RunResult:
    predictions: dict[str, list[dict[str, object]]]
    state: dict[str, object]
    alerts: dict[str, list[dict[str, object]]]  # churn-alerts by prediction_id


class Streaming:
    """Set while the producer streams: a fault can check it still lands mid-stream."""

    def __init__(self) -> None:
        self.flowing = threading.Event()


def valid_event_ids(history: SimulatedHistory, plan: StreamPlan) -> set[str]:
    """The event ids the plan sends at least once as a valid record."""
    from consumer.bench.loadgen import StreamReport, plan_records
    from state.errors import InvalidEvent
    from state.events import decode_event

    ids = set()
    for _key, value in plan_records(history, plan, StreamReport()):
        try:
            ids.add(decode_event(value).event_id)
        except InvalidEvent:
            continue
    return ids


def wait_flowing(scorer: ScorerProcess, predictions: int = 300) -> None:
    wait_for(lambda: scorer.metric("seqscore_predictions_total") > predictions, timeout=60, what="stream flowing")


def kill_repeatedly(
    times: int,
    rng: random.Random,
    logs: Path,
    restarted: list[ScorerProcess] | None = None,
    streaming: Streaming | None = None,
) -> Fault:
    """A fault: SIGKILL the scorer `times` times at random points, each time restarting it with
    the same environment (so the same instance id) once the previous one is gone. With
    `streaming`, every kill must land while the producer is still sending."""

    def fault(scorer: ScorerProcess, _settings: Settings) -> ScorerProcess:
        for attempt in range(times):
            time.sleep(rng.uniform(0.2, 1.5))
            if streaming is not None:
                assert streaming.flowing.is_set(), f"kill {attempt + 1} of {times} came after the stream ended"
            scorer.stop(signal.SIGKILL)
            scorer = ScorerProcess(scorer.env, Path(scorer.env["SEQSCORE_REGISTRY"]),
                                   logs / f"scorer-{attempt + 1}.log").start()
            if restarted is not None:
                restarted.append(scorer)
            scorer.wait_ready()
        return scorer

    return fault


def variant(test_env: dict[str, str], unique: str, suffix: str) -> dict[str, str]:
    """The test's environment with its own topics, group and key prefix."""
    return {k: v.replace(unique, unique + suffix) for k, v in test_env.items()}


def redis_state(url: str, prefix: str) -> dict[str, object]:
    """Every key of the prefix: values, silence sets (member, score) and clocks. Not the undo
    records of exactly-once serving, the partitions' write versions nor their owner
    generations: they hold whatever the last batch replaced, how many writes and how many
    assignments there were, and batches are cut and partitions moved differently in every run.
    On a Redis Cluster (a `redis+cluster://` URL) each partition's keys carry `{pN}:` after
    the prefix: it is left out of the names and the partitions' clocks are merged, so that
    the state compares customer by customer with one Redis's."""
    if "+cluster://" in url:
        return _cluster_state(url, prefix)
    return _state_of(redis.Redis.from_url(url), prefix, prefix)


def _state_of(client: redis.Redis, match: str, prefix: str) -> dict[str, object]:
    keys = Keys(prefix)
    state: dict[str, object] = {}
    for key in client.scan_iter(f"{match}:*"):
        if key.startswith(keys.undo_prefix.encode()) or key in (keys.version.encode(), keys.owner.encode()):
            continue
        kind = client.type(key)
        name = key.decode()[len(prefix) + 1 :]
        if kind == b"zset":
            state[name] = client.zrange(key, 0, -1, withscores=True)
        elif kind == b"hash":
            state[name] = client.hgetall(key)
        else:
            state[name] = client.get(key)
    return state


def _cluster_state(url: str, prefix: str) -> dict[str, object]:
    from redis.cluster import RedisCluster

    from consumer.settings import cluster_seed_urls

    cluster = RedisCluster.from_url(cluster_seed_urls(url)[0])
    state: dict[str, object] = {}
    try:
        for node in cluster.get_primaries():
            client = cluster.get_redis_connection(node)
            for name, value in _state_of(client, prefix, prefix).items():
                if not name.startswith("{p"):
                    state[name] = value
                    continue
                rest = name.partition("}:")[2]
                if rest in ("version", "owner") or rest.startswith("undo:"):
                    continue
                if rest == "clock" and isinstance(value, dict):
                    clocks = state.setdefault("clock", {})
                    assert isinstance(clocks, dict)
                    clocks.update(value)
                else:
                    state[rest] = value
    finally:
        cluster.close()
    return state


def assert_same_state(faulted: dict[str, object], clean: dict[str, object]) -> None:
    """Byte-identical, except each window's cached latest churn risk: a float from a batch of
    another size, equal within the predictions' tolerance."""
    assert faulted.keys() == clean.keys(), "the same keys"
    for key, want in clean.items():
        got = faulted[key]
        if key.endswith(":w") and isinstance(got, bytes) and isinstance(want, bytes):
            head_got, head_want = (np.frombuffer(v[:STORED_HEADER_BYTES], STORED_HEADER_DTYPE) for v in (got, want))
            risk = "pred_risk"
            assert abs(float(head_got[risk][0]) - float(head_want[risk][0])) <= PROBABILITY_TOLERANCE, key
            others = [f for f in STORED_HEADER_DTYPE.names or () if f != risk]
            assert all(head_got[f][0] == head_want[f][0] for f in others), key
            assert got[STORED_HEADER_BYTES:] == want[STORED_HEADER_BYTES:], key
        else:
            assert got == want, key


def predictions_of(
    settings: Settings, expected: set[str], timeout: float = 180.0
) -> tuple[dict[str, list[dict[str, object]]], dict[str, list[dict[str, object]]]]:
    """Every record on next-actions (by event_id), once each expected event_id has at least
    one, and every record on churn-alerts (by prediction_id)."""
    import orjson

    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"check-{id(expected)}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "isolation.level": "read_committed"})  # what downstream consumers should read
    consumer.subscribe([settings.topics.next_actions, settings.topics.churn_alerts])
    seen: dict[str, list[dict[str, object]]] = {}
    alerts: dict[str, list[dict[str, object]]] = {}

    def complete() -> bool:
        for msg in consumer.consume(1000, 0.2):
            value = msg.value()
            if msg.error() is None and value:
                record = orjson.loads(value)
                if msg.topic() == settings.topics.churn_alerts:
                    alerts.setdefault(record["prediction_id"], []).append(record)
                else:
                    seen.setdefault(record["event_id"], []).append(record)
        return expected <= set(seen)

    try:
        wait_for(complete, timeout=timeout, interval=0, what=f"a prediction for each of {len(expected)} events")
        for _ in range(5):  # and whatever else is already there
            complete()
    finally:
        consumer.close()
    return seen, alerts


def scored_run(
    env: dict[str, str],
    registry: Path,
    history: SimulatedHistory,
    logs: Path,
    monkeypatch: pytest.MonkeyPatch,
    fault: Fault | None = None,
    rate: float = 800.0,
    hostile: bool = False,
    streaming: Streaming | None = None,
) -> RunResult:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    # both runs tag events with one key, so that their windows compare byte for byte
    redis_client(settings, "command").set(Keys(settings.state.key_prefix).tag_key, FAULT_RUNS_TAG_KEY)
    plan = StreamPlan(seed=5, rate=rate, **(HOSTILE_STREAM if hostile else {}))
    flowing = (streaming or Streaming()).flowing
    scorer = ScorerProcess(env, registry, logs / "scorer-0.log").start()
    scorers = [scorer]

    def send() -> None:
        flowing.set()
        try:
            stream(history, settings.topics.events, settings.kafka_config(), plan, progress=False)
        finally:
            flowing.clear()

    try:
        scorer.wait_ready()
        producer = threading.Thread(target=send)
        producer.start()
        if fault is not None:
            survivors = fault(scorer, settings)
            scorers = survivors if isinstance(survivors, list) else [survivors]
        producer.join()
        predictions, alerts = predictions_of(settings, valid_event_ids(history, plan))
        for survivor in scorers:
            assert survivor.stop() == 0, survivor.log_path.read_text()[-2000:]
    finally:
        for survivor in scorers:
            if survivor.process is not None and survivor.process.poll() is None:
                survivor.process.kill()
    return RunResult(predictions, redis_state(settings.redis_url, settings.state.key_prefix), alerts)


def assert_same_outcome(clean: RunResult, faulted: RunResult, history: SimulatedHistory) -> None:
    assert set(faulted.predictions) == set(clean.predictions), "nothing lost"
    assert set(clean.predictions) <= set(history.event_ids())
    for event_id, seen in faulted.predictions.items():
        reference = clean.predictions[event_id][0]
        for value in seen:  # a replay may repeat a prediction; every copy equals the clean one
            assert_same_prediction(value, reference, event_id)
    # churn alerts and recoveries too: the same ones, each equal to the clean run's
    missing, extra = set(clean.alerts) - set(faulted.alerts), set(faulted.alerts) - set(clean.alerts)
    assert not missing and not extra, (
        f"the same churn alerts: {len(missing)} missing, e.g. {[clean.alerts[p][0] for p in sorted(missing)[:3]]}; "
        f"{len(extra)} extra, e.g. {[faulted.alerts[p][0] for p in sorted(extra)[:3]]}")
    for prediction_id, copies in faulted.alerts.items():
        want = clean.alerts[prediction_id][0]
        for got in copies:
            assert {k: v for k, v in got.items() if k != "churn_risk"} == \
                {k: v for k, v in want.items() if k != "churn_risk"}, prediction_id
            assert abs(float(got["churn_risk"]) - float(want["churn_risk"])) <= PROBABILITY_TOLERANCE  # type: ignore[arg-type]
    assert_same_state(faulted.state, clean.state)


def faulted_equals_clean(
    test_env: dict[str, str],
    unique: str,
    registry: Path,
    history: SimulatedHistory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fault: Fault,
    rate: float = 800.0,
    hostile: bool = False,
    streaming: Streaming | None = None,
) -> None:
    """Stream `history` once cleanly and once with `fault`; both must end the same. `hostile`:
    malformed, repeated and out-of-order records among the valid ones, in both runs."""
    for name in ("clean", "faulted"):
        (tmp_path / name).mkdir(exist_ok=True)
    clean = scored_run(variant(test_env, unique, "c"), registry, history, tmp_path / "clean", monkeypatch,
                       hostile=hostile)
    faulted = scored_run(variant(test_env, unique, "f"), registry, history, tmp_path / "faulted", monkeypatch,
                         fault=fault, rate=rate, hostile=hostile, streaming=streaming)
    assert_same_outcome(clean, faulted, history)
