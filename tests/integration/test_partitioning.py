"""The project's own producers (the scorer's outputs, `dlq replay`, `erase`, the load generator
behind `simulate --kafka-topic`) put a key on the partition a Java client would: murmur2, as
Kafka's DefaultPartitioner. Otherwise a replayed event or an erasure tombstone lands on another
partition than its customer's other records."""

from __future__ import annotations

import pytest

from consumer.emit import Emitter
from consumer.harness import read_topic
from consumer.loadgen import send
from consumer.settings import load_settings
from consumer.topics import ensure_topics

KEYS = [f"customer-{i}" for i in range(60)] + ["3454BA", "é-ü", "x" * 300]


def murmur2(data: bytes) -> int:
    """Kafka's Utils.murmur2, in unsigned 32-bit arithmetic."""
    m, length = 0x5BD1E995, len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail = data[length - length % 4:]
    if len(tail) == 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h ^= tail[0]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    return h ^ (h >> 15)


def java_partition(key: str, partitions: int) -> int:
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


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
    assert placed == {key: java_partition(key, partitions) for key in KEYS}
    assert len(set(placed.values())) == partitions, "the keys spread over every partition"
