"""A re-created events topic on the real stack: its offsets start again below what the state
holds for every customer, and its events must still be scored (docs/serving.md, "Offsets
behind the state")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from consumer.bench.harness import predictions_by_event, read_topic, running, wait_for
from consumer.bench.loadgen import event_values
from consumer.settings import load_settings
from training.simulate import simulate

pytestmark = pytest.mark.slow


def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for key, value in records:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0


def delete_topic(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.delete_topics([topic], operation_timeout=30)[topic].result(timeout=60)
    wait_for(lambda: topic not in admin.list_topics(timeout=10).topics, timeout=60, interval=0.5,
             what=f"topic {topic} gone")


def test_events_of_a_re_created_topic_are_scored_though_the_state_passed_their_offsets(
    test_env: dict[str, str], tiny_registry: Path, tmp_path: Path
) -> None:
    """Audit B5: the windows remember the offsets of the old topic, so the new topic's events,
    from offset 0 again, were all taken for replays: not stored, not emitted, only counted as
    `replay`. Now each is scored once, and counted as behind the state."""
    settings = load_settings()
    bootstrap, topic = settings.kafka_bootstrap, settings.topics.events
    records = list(event_values(simulate(40, seed=43)))
    old, new = records[: len(records) // 2], records[len(records) // 2:]
    new_ids = {json.loads(value)["event_id"] for _, value in new}

    with running(test_env, tiny_registry, tmp_path / "old.log") as scorer:
        scorer.wait_ready()
        produce(bootstrap, topic, old)
        read_topic(bootstrap, settings.topics.next_actions, len(old))
        assert scorer.stop() == 0

    delete_topic(bootstrap, topic)
    with running(test_env, tiny_registry, tmp_path / "new.log") as scorer:
        scorer.wait_ready()  # the scorer creates the missing topic
        produce(bootstrap, topic, new)
        by_event = predictions_by_event(read_topic(bootstrap, settings.topics.next_actions, len(records)))
        wait_for(lambda: scorer.metric("seqscore_events_total") >= len(new), timeout=60, interval=0.5,
                 what="every new event read")
        behind = scorer.metric("seqscore_offsets_behind_state_total")
        assert scorer.stop() == 0
    missing = new_ids - set(by_event)
    assert not missing, f"{len(missing)} of {len(new_ids)} events of the new topic were never scored"
    assert all(len(by_event[event_id]) == 1 for event_id in new_ids), "each once"
    assert behind > 0, "events at offsets the windows had passed are counted"
