"""`seqscore dlq replay` on the real Kafka and Redis: events refused only because of a setting
(a size limit too small) are dead-lettered, the setting is fixed, the replay sends them back,
and the next scorer run scores them; other reasons stay on the DLQ."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from consumer.bench.harness import predictions_by_event, read_topic, running
from consumer.bench.loadgen import event_values
from consumer.settings import load_settings
from tests.poison_cases import HOSTILE
from training.simulate import simulate

pytestmark = pytest.mark.slow

SMALL_LIMIT = 256  # the lowest SEQSCORE_MAX_EVENT_BYTES; the simulated events stay below it


def dlq_cli(*args: str) -> str:
    """Run `seqscore dlq replay ARGS` with this test's settings; its one-line summary."""
    done = subprocess.run([sys.executable, "-m", "consumer.cli", "dlq", "replay", *args], env=dict(os.environ),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "dlq replay: reading" in done.stderr, "progress goes to stderr"
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout
    return lines[0]


def end_offsets(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"offsets-{time.time()}"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions)
    finally:
        consumer.close()


def test_dead_letters_replayed_after_the_fix_are_scored(
    test_env: dict[str, str], tiny_registry: Path, tmp_path: Path
) -> None:
    settings = load_settings()
    bootstrap, events_topic = settings.kafka_bootstrap, settings.topics.events
    history = simulate(30, seed=42)
    small = list(event_values(history))
    assert max(len(v) for _, v in small) <= SMALL_LIMIT
    template = orjson.loads(small[0][1])
    # valid in every way but size, each of its own customer: refused only while the limit is small
    big = [orjson.dumps(template | {"event_id": f"big-{i}", "customer_id": f"big-{i}",
                                    "attrs": {"note": "n" * (300 + i)}}) for i in range(12)]
    build, _ = HOSTILE["truncated"]
    broken = [build(template, random.Random(i)) for i in range(5)]  # bad_json: no setting fixes these
    total = len(big) + len(broken)

    since = datetime.now(UTC).replace(microsecond=0)
    producer = Producer({"bootstrap.servers": bootstrap})
    for key, value in small:
        producer.produce(events_topic, key=key, value=value)
    for i, value in enumerate(big):
        producer.produce(events_topic, key=f"big-{i}", value=value, headers=[("origin", b"test")])
    for value in broken:
        producer.produce(events_topic, key=b"broken", value=value, headers=[("origin", b"test")])
    assert producer.flush(30) == 0

    with running(test_env | {"SEQSCORE_MAX_EVENT_BYTES": str(SMALL_LIMIT)}, tiny_registry,
                 tmp_path / "first.log") as scorer:
        scorer.wait_ready()
        read_topic(bootstrap, settings.topics.next_actions, len(small))
        dlq = read_topic(bootstrap, settings.topics.dlq, len(big) + len(broken))
        assert sorted(dict(m.headers())["seqscore.reason"].decode() for m in dlq) == \
            ["bad_json"] * len(broken) + ["too_large"] * len(big)
        assert scorer.stop() == 0

    # counting only: nothing is produced
    sent_before = end_offsets(bootstrap, events_topic)
    assert dlq_cli("--since", since.isoformat(), "--dry-run") == (
        f"dlq replay: read {total}, selected {total}, would replay {total}; "
        f"by reason: bad_json {len(broken)}, too_large {len(big)}")
    # the time window: all were dead-lettered after `since` and before an hour from now
    later = str(int(time.time()) + 3600)
    nothing = f"dlq replay: read {total}, selected 0, would replay 0; by reason: none"
    assert dlq_cli("--since", later, "--dry-run") == nothing
    assert dlq_cli("--since", "0", "--until", since.isoformat(), "--dry-run") == nothing
    assert dlq_cli("--since", "0", "--until", later, "--dry-run").startswith(f"dlq replay: read {total}, "
                                                                             f"selected {total},")
    assert end_offsets(bootstrap, events_topic) == sent_before

    # one of them asked to be forgotten meanwhile: a replay must not bring them back
    erase = subprocess.run([sys.executable, "-m", "consumer.cli", "erase", "--customer", "big-0"],
                           env=os.environ | test_env, capture_output=True, text=True, timeout=120)
    assert erase.returncode == 0, erase.stderr
    # the fix is a larger limit; only the records it fixes go back
    fixed = big[1:]
    assert dlq_cli("--since", since.isoformat(), "--reason", "too_large") == (
        f"dlq replay: read {total}, selected {len(big)}, replayed {len(fixed)}; by reason: too_large {len(big)}"
        "; 1 of erased customers left out")
    assert end_offsets(bootstrap, events_topic) == sent_before + len(fixed)
    replayed = [m for m in read_topic(bootstrap, events_topic, sent_before + len(fixed))
                if any(k == "seqscore.replayed-from" for k, _ in m.headers() or [])]
    assert sorted(m.value() for m in replayed) == sorted(fixed), "original value bytes"
    dlq_positions = {f"dlq:{m.partition()}:{m.offset()}".encode() for m in dlq}
    for msg in replayed:
        headers = msg.headers()
        assert msg.key() == orjson.loads(msg.value())["customer_id"].encode(), "original key"
        assert [k for k, _ in headers] == ["origin", "seqscore.replayed-from"], "seqscore.* dropped"
        assert dict(headers)["seqscore.replayed-from"] in dlq_positions

    with running(test_env, tiny_registry, tmp_path / "second.log") as scorer:
        scorer.wait_ready()
        outputs = read_topic(bootstrap, settings.topics.next_actions, len(small) + len(fixed))
        by_event = predictions_by_event(outputs)
        assert set(by_event) == set(history.event_ids()) | {f"big-{i}" for i in range(1, len(big))}
        assert all(len(v) == 1 for v in by_event.values()), "one prediction each, over both runs"
        assert scorer.metric("seqscore_predictions_total") == len(fixed)
        assert scorer.metric("seqscore_events_invalid_total") == 0
        assert scorer.stop() == 0
    assert len(read_topic(bootstrap, settings.topics.dlq, len(dlq))) == len(dlq), "no new dead letters"
