"""The project's own producers (the scorer's outputs, `dlq replay`, `erase`, the load generator
behind `simulate --kafka-topic`) put a key on the partition a Java client would: murmur2, as
Kafka's DefaultPartitioner. Otherwise a replayed event or an erasure tombstone lands on another
partition than its customer's other records."""

from __future__ import annotations

import pytest

from consumer.bench.harness import read_topic
from consumer.bench.loadgen import send
from consumer.serve.emit import Emitter
from consumer.serve.topics import ensure_topics
from consumer.settings import load_settings
from state.partitioning import java_partition, murmur2

KEYS = [f"customer-{i}" for i in range(60)] + ["3454BA", "é-ü", "x" * 300]


def java_partition_of(key: str, partitions: int) -> int:
    return java_partition(key.encode(), partitions)


def test_the_reference_hash_is_kafkas() -> None:
    # the values of Kafka's own UtilsTest, as signed ints
    assert [h - (1 << 32) if h >= 1 << 31 else h for h in map(murmur2, (b"21", b"foobar"))] == [-973932308,
                                                                                              -790332482]


@pytest.mark.parametrize("producer", ["emitter", "load generator"])
def test_keys_land_where_a_java_producer_puts_them(test_env: dict[str, str], producer: str) -> None:
    settings = load_settings()
    ensure_topics(settings)
    topic, partitions = settings.topics.events, settings.topics.events_partitions
    if producer == "emitter":  # the producer of serve, dlq replay and erase
        emitter = Emitter(settings.kafka_config())
        for key in KEYS:
            emitter.send(topic, key, b"{}")
        emitter.wait_delivered(keep_membership=False)
    else:
        send([(key.encode(), b"{}") for key in KEYS], topic, settings.kafka_config(), progress=False)
    placed = {m.key().decode(): m.partition() for m in read_topic(settings.kafka_bootstrap, topic, len(KEYS))}
    assert placed == {key: java_partition_of(key, partitions) for key in KEYS}
    assert len(set(placed.values())) == partitions, "the keys spread over every partition"
