"""Poison in the stream, on the real Kafka and Redis: a few hundred hostile records of every
kind in tests/poison_cases.py, interleaved with valid events (some on the same customers'
partitions, some without a key), through one real scorer."""

from __future__ import annotations

import random
import signal
from pathlib import Path

import pytest
from confluent_kafka import Producer

from consumer.harness import predictions_by_event, read_topic, running
from consumer.loadgen import event_values
from consumer.settings import load_settings
from tests.poison_cases import hostile_records
from training.simulate import simulate

pytestmark = pytest.mark.slow

HOSTILE = 330  # every kind six times
Record = tuple[bytes | None, bytes, list[tuple[str, bytes]]]


def test_every_hostile_record_is_dead_lettered_and_every_valid_event_scored_once(
    test_env: dict[str, str], tiny_registry: Path, tmp_path: Path
) -> None:
    settings = load_settings()
    history = simulate(40, seed=41)
    valid = list(event_values(history))
    hostile = hostile_records(valid[0][1], HOSTILE, seed=5)
    rng = random.Random(9)
    records: list[Record] = [(key, value, []) for key, value in valid]
    for i, (_, value, _) in enumerate(hostile):
        # a real customer's key (its partition, between its events), no key, or a key of its own
        key = [rng.choice(valid)[0], None, f"poison-{i}".encode()][i % 3]
        records.insert(rng.randrange(len(records) + 1), (key, value, [("poison-id", str(i).encode()),
                                                                       ("origin", b"test")]))

    with running(test_env, tiny_registry, tmp_path / "serve.log") as scorer:
        scorer.wait_ready()
        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 5})
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
