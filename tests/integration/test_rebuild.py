"""`seqscore state rebuild` on the real Kafka and Redis: windows wiped after a scorer ran are
re-derived from the events topic, and scoring then continues exactly as on the state that
was never wiped."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
import redis
from confluent_kafka import Producer

from consumer.bench.harness import assert_same_prediction, predictions_by_event, read_topic, running
from consumer.bench.loadgen import MALFORMED_KINDS, corrupt, event_values
from consumer.settings import load_settings
from state.store import RECORD_DTYPE, STORED_HEADER_BYTES
from training.simulate import simulate

pytestmark = pytest.mark.slow

# The stored header starts with the raw-history fields, '<dIII': last offset, its partition,
# events ever counted, first event time. The rest of the header is alert state (and reserved
# bytes), which the events topic cannot give back.
HISTORY_FIELDS = np.dtype([("offset", "<f8"), ("partition", "<u4"), ("count", "<u4"), ("first_ts", "<u4")])


def windows_of(client: redis.Redis, prefix: str) -> dict[str, bytes]:
    windows = {}
    for key in client.scan_iter(f"{prefix}:*:w", count=1000):
        value = client.get(key)
        assert isinstance(value, bytes), key
        windows[key.decode()] = value
    return windows


def silence_tracking(client: redis.Redis, prefix: str) -> tuple[dict[str, dict[bytes, float]], dict[bytes, bytes]]:
    """Every partition's quiet set (customer -> last event time) and the partitions' clocks."""
    quiet = {}
    for key in client.scan_iter(f"{prefix}:quiet:*", count=1000):
        quiet[key.decode().rsplit(":", 1)[1]] = dict(client.zrange(key, 0, -1, withscores=True))
    return quiet, client.hgetall(f"{prefix}:clock")


def send(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for value in values:
        try:
            key = orjson.loads(value)["customer_id"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            key = "bad"
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0


def test_rebuild_restores_wiped_windows_and_scoring_goes_on_as_before(
    test_env: dict[str, str], tiny_registry: Path, tmp_path: Path
) -> None:
    settings = load_settings()
    topic, prefix = settings.topics.events, settings.state.key_prefix
    client = redis.Redis.from_url(settings.redis_url)
    values = [v for _, v in event_values(simulate(60, seed=38))]
    old, new = values[:-30], values[-30:]
    malformed = [corrupt(old[0], kind) for kind in MALFORMED_KINDS]
    # repeated event_ids and bad records: the rebuild must skip them as the scorer did
    send(settings.kafka_bootstrap, topic, old[:200] + malformed + old[:5] + old[200:])

    with running(test_env, tiny_registry, tmp_path / "serve.log") as scorer:
        scorer.wait_ready()
        read_topic(settings.kafka_bootstrap, settings.topics.next_actions, len(old))
        assert scorer.stop(signal.SIGTERM) == 0  # stores the last batch's state
    env = scorer.env
    before = windows_of(client, prefix)
    assert len(before) >= 40
    quiet_before, clocks_before = silence_tracking(client, prefix)
    assert sum(len(members) for members in quiet_before.values()) >= 10, "customers to score when silent"

    copy = f"{prefix}copy"  # the unwiped state, to score the new events on later
    for key, value in before.items():
        client.set(copy + key.removeprefix(prefix), value)
    client.set(f"{copy}:tag-key", client.get(f"{prefix}:tag-key") or b"")  # the windows' tags are keyed
    assert client.delete(*before) == len(before)  # only this test's prefix
    client.delete(*[f"{prefix}:quiet:{p}" for p in quiet_before], f"{prefix}:clock", f"{prefix}:version")

    rebuild = subprocess.run([sys.executable, "-m", "consumer.cli", "state", "rebuild", "--from-topic", topic,
                              "--batch", "50"], env=env, capture_output=True, text=True, timeout=120)
    assert rebuild.returncode == 0, rebuild.stderr
    assert "rebuild: " in rebuild.stderr and "(100.0%)" in rebuild.stderr and "events/s" in rebuild.stderr
    summary = rebuild.stdout.strip()
    assert len(summary.splitlines()) == 1
    assert f"{len(old) + len(malformed) + 5:,} records" in summary and f"{len(malformed)} invalid skipped" in summary

    after = windows_of(client, prefix)
    assert set(after) == set(before)
    # the customers silent now are tracked again, or no silence of theirs would ever be scored
    assert silence_tracking(client, prefix) == (quiet_before, clocks_before)
    alerted = 0
    for key, value in before.items():
        rebuilt = after[key]
        assert rebuilt[STORED_HEADER_BYTES:] == value[STORED_HEADER_BYTES:], f"{key}: records"
        assert len(rebuilt[STORED_HEADER_BYTES:]) % RECORD_DTYPE.itemsize == 0
        head = np.frombuffer(value, HISTORY_FIELDS, count=1)
        assert np.frombuffer(rebuilt, HISTORY_FIELDS, count=1).tobytes() == head.tobytes(), f"{key}: header"
        assert not any(rebuilt[HISTORY_FIELDS.itemsize:STORED_HEADER_BYTES]), f"{key}: alert state starts empty"
        alerted += any(value[HISTORY_FIELDS.itemsize:STORED_HEADER_BYTES])
    assert alerted, "some customer had alert state to lose, or the comparison above shows nothing"

    # idempotent: a second rebuild, and one from a time after every record, change nothing
    for extra in ([], ["--since", "2099-01-01"]):
        again = subprocess.run([sys.executable, "-m", "consumer.cli", "state", "rebuild", "--from-topic", topic,
                                *extra], env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stderr
        assert windows_of(client, prefix) == after
    assert f"{topic}: 0 records" in again.stdout

    # the same new events, scored on the rebuilt state and on the unwiped copy
    send(settings.kafka_bootstrap, topic, new)
    copy_env = env | {"SEQSCORE_STATE__KEY_PREFIX": copy, "SEQSCORE_GROUP_ID": f"{settings.group_id}-copy",
                      "SEQSCORE_TOPICS__NEXT_ACTIONS": f"{settings.topics.next_actions}-copy"}
    with running(env, tiny_registry, tmp_path / "rebuilt.log") as rebuilt_scorer, \
            running(copy_env, tiny_registry, tmp_path / "copy.log") as copy_scorer:
        rebuilt_scorer.wait_ready()
        copy_scorer.wait_ready()
        on_rebuilt = predictions_by_event(
            read_topic(settings.kafka_bootstrap, settings.topics.next_actions, len(old) + len(new)))
        # the copy's group starts at the beginning: every old event is a replay, not scored again
        on_copy = predictions_by_event(
            read_topic(settings.kafka_bootstrap, copy_env["SEQSCORE_TOPICS__NEXT_ACTIONS"], len(new)))
    new_ids = {orjson.loads(v)["event_id"] for v in new}
    assert set(on_copy) == new_ids
    for event_id in new_ids:
        assert len(on_rebuilt[event_id]) == len(on_copy[event_id]) == 1, event_id
        assert_same_prediction(on_rebuilt[event_id][0], on_copy[event_id][0], event_id)
