"""Poison in the stream, on the real Kafka and Redis: a few hundred hostile records of every
kind in tests/poison_cases.py, interleaved with valid events (some on the same customers'
partitions, some without a key), and records up to what the broker accepts, through one real
scorer; and a dead-letter topic that stops accepting what the scorer sends."""

from __future__ import annotations

import hashlib
import random
import signal
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from consumer.bench.harness import predictions_by_event, read_topic, running, wait_for
from consumer.bench.loadgen import event_values
from consumer.settings import load_settings
from tests.poison_cases import hostile_records
from training.simulate import simulate

pytestmark = pytest.mark.slow

HOSTILE = 330  # every kind six times
# values the broker accepts on a topic with the default max.message.bytes (1,048,588 for the
# whole batch): librdkafka's own default message.max.bytes, a Java producer's default
# max.request.size (1,048,576) less its framing, and the practical top for one record
BIG = (999_900, 1_040_000, 1_048_000)
Record = tuple[bytes | None, bytes, list[tuple[str, bytes]]]


def big_records() -> list[tuple[str, bytes, str]]:
    rng = random.Random(3)
    return [(f"big-{size}", rng.randbytes(size), "too_large") for size in BIG]


def test_every_hostile_record_is_dead_lettered_and_every_valid_event_scored_once(
    test_env: dict[str, str], tiny_registry: Path, tmp_path: Path
) -> None:
    settings = load_settings()
    history = simulate(40, seed=41)
    valid = list(event_values(history))
    hostile = hostile_records(valid[0][1], HOSTILE, seed=5) + big_records()
    rng = random.Random(9)
    records: list[Record] = [(key, value, []) for key, value in valid]
    for i, (_, value, _) in enumerate(hostile):
        # a real customer's key (its partition, between its events), no key, or a key of its own
        key = [rng.choice(valid)[0], None, f"poison-{i}".encode()][i % 3]
        records.insert(rng.randrange(len(records) + 1), (key, value, [("poison-id", str(i).encode()),
                                                                       ("origin", b"test")]))

    with running(test_env, tiny_registry, tmp_path / "serve.log") as scorer:
        scorer.wait_ready()
        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 5,
                             "message.max.bytes": 2_000_000})
        for key, value, headers in records:
            producer.produce(settings.topics.events, key=key, value=value, headers=headers)
        assert producer.flush(60) == 0

        outputs = read_topic(settings.kafka_bootstrap, settings.topics.next_actions, len(valid))
        by_event = predictions_by_event(outputs)
        assert set(by_event) == set(history.event_ids()), "every valid event has a prediction"
        assert all(len(v) == 1 for v in by_event.values()), "exactly one each"

        dlq = read_topic(settings.kafka_bootstrap, settings.topics.dlq, len(hostile))
        assert len(dlq) == len(hostile), "every hostile record once on the DLQ, nothing else"
        seen = set()
        for msg in dlq:
            headers = dict(msg.headers())
            i = int(headers["poison-id"])
            kind, value, reason = hostile[i]
            seen.add(i)
            assert headers["seqscore.reason"].decode() == reason, (kind, headers["seqscore.detail"])
            if kind.startswith("big-"):  # cut to what the DLQ takes, with what finds the original
                assert headers["seqscore.truncated"] == b"1", kind
                assert headers["seqscore.original_size"] == str(len(value)).encode()
                assert headers["seqscore.original_sha256"] == hashlib.sha256(value).hexdigest().encode()
                assert value.startswith(msg.value()) and len(msg.value()) > 900_000, kind
            else:
                assert msg.value() == value or (value == b"" and msg.value() is None), kind
            assert headers["origin"] == b"test" and headers["seqscore.detail"], kind
            assert headers["seqscore.topic"].decode() == settings.topics.events
        assert seen == set(range(len(hostile)))

        assert scorer.process is not None and scorer.process.poll() is None, "the scorer stays up"
        assert scorer.get("/healthz")[0] == 200 and scorer.get("/readyz")[0] == 200
        assert scorer.metric("seqscore_events_invalid_total") == len(hostile)
        assert scorer.metric("seqscore_predictions_total") == len(valid)
        assert scorer.stop(signal.SIGTERM) == 0
    log = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in log, log[-3000:]


def test_a_dead_letter_the_topic_refuses_fails_readyz_commits_nothing_and_goes_out_once_it_fits(
    test_env: dict[str, str], tiny_registry: Path, tmp_path: Path
) -> None:
    """The DLQ topic is made to refuse even a cut copy (its max.message.bytes lowered under a
    running scorer): the scorer stays up, /readyz fails, the group's committed offsets stay
    before the refused record; once the topic takes records again, everything is delivered."""
    settings = load_settings()
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})

    def dlq_limit(limit: int) -> None:
        entry = ConfigEntry("max.message.bytes", str(limit), incremental_operation=AlterConfigOpType.SET)
        dlq = ConfigResource(ConfigResource.Type.TOPIC, settings.topics.dlq, incremental_configs=[entry])
        for future in admin.incremental_alter_configs([dlq]).values():
            future.result(timeout=30)

    history = simulate(10, seed=43)
    valid = list(event_values(history))
    poison = b"{" + b"x" * 5000

    with running(test_env, tiny_registry, tmp_path / "serve.log") as scorer:
        scorer.wait_ready()
        dlq_limit(64)  # less than any dead letter's own headers
        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
        half = len(valid) // 2
        for key, value in valid[:half]:
            producer.produce(settings.topics.events, key=key, value=value)
        producer.produce(settings.topics.events, key=valid[0][0], value=poison)
        for key, value in valid[half:]:
            producer.produce(settings.topics.events, key=key, value=value)
        assert producer.flush(60) == 0

        wait_for(lambda: scorer.metric("seqscore_kafka_errors_total", "kind=\"delivery\"") >= 2, timeout=60,
                 what="the refused dead letter retried")
        assert scorer.process is not None and scorer.process.poll() is None, "the scorer stays up"
        status, body = scorer.get("/readyz")
        assert status == 503 and b"output delivery" in body
        assert scorer.get("/healthz")[0] == 200
        time.sleep(2)  # auto-commit runs every second: it must have nothing past the poison to send
        poison_partition = next(m for m in read_topic(settings.kafka_bootstrap, settings.topics.events,
                                                      len(valid) + 1) if m.value() == poison)
        committed = committed_offset(settings.kafka_bootstrap, settings.group_id, settings.topics.events,
                                     poison_partition.partition())
        assert committed <= poison_partition.offset(), "nothing at or after the refused record is committed"

        dlq_limit(1_048_588)
        wait_for(lambda: scorer.get("/readyz")[0] == 200, timeout=90, what="/readyz 200 again")
        dead = read_topic(settings.kafka_bootstrap, settings.topics.dlq, 1)
        assert len(dead) == 1 and dead[0].value() == poison
        by_event = predictions_by_event(read_topic(settings.kafka_bootstrap, settings.topics.next_actions, len(valid)))
        assert set(by_event) == set(history.event_ids()), "every valid event has a prediction"
        assert scorer.stop(signal.SIGTERM) == 0
    assert committed_offset(settings.kafka_bootstrap, settings.group_id, settings.topics.events,
                            poison_partition.partition()) > poison_partition.offset()


def committed_offset(bootstrap: str, group: str, topic: str, partition: int) -> int:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        return int(consumer.committed([TopicPartition(topic, partition)], timeout=10)[0].offset)
    finally:
        consumer.close()
