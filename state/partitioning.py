"""Where Kafka's Java clients put a keyed record: murmur2 of the key bytes, as the Java
producer's default partitioner (`Utils.murmur2`, then `toPositive(hash) % partitions`). The
project's producers use librdkafka's `murmur2_random`, the same function; this is for finding
a customer's partition without producing (an erasure)."""

from __future__ import annotations

M = 0x5BD1E995
SEED = 0x9747B28C
MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2, as an unsigned 32-bit value."""
    length = len(data)
    h = (SEED ^ length) & MASK
    for i in range(0, length - length % 4, 4):
        k = (int.from_bytes(data[i : i + 4], "little") * M) & MASK
        k ^= k >> 24
        h = ((h * M) & MASK) ^ ((k * M) & MASK)
    tail = data[length - length % 4 :]
    if len(tail) == 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h = ((h ^ tail[0]) * M) & MASK
    h ^= h >> 13
    h = (h * M) & MASK
    return h ^ (h >> 15)


def java_partition(key: bytes, partitions: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % partitions
