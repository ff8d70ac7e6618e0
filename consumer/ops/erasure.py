"""Erasing a customer (`seqscore erase`, or a tombstone on the profiles topic): the erasure
covers the customer's events partition up to its end offset at that moment, so that nothing
from before it (a batch in flight, a rebuild from the topic, a rollback's replay) brings the
customer back, while events produced after it start a new history (state/store.py, erase)."""

from __future__ import annotations

from confluent_kafka import Consumer, KafkaException, TopicPartition

from state.backend import Store
from state.errors import KafkaUnavailable
from state.partitioning import java_partition

TIMEOUT_S = 10.0


def erase_customer(store: Store, customer_id: str, consumer: Consumer, events_topic: str) -> int:
    """Erase the customer's state; returns the number of keys that held data. The partition is
    the one of their newest stored event, else where a Java client puts their key."""
    try:
        partition = store.stored_partition(customer_id)
        if partition is None:
            topic = consumer.list_topics(events_topic, timeout=TIMEOUT_S).topics.get(events_topic)
            if topic is None or topic.error is not None or not topic.partitions:
                raise KafkaUnavailable(f"no events topic {events_topic!r} on the broker (SEQSCORE_TOPICS__EVENTS)")
            partition = java_partition(customer_id.encode(), len(topic.partitions))
        _, end = consumer.get_watermark_offsets(TopicPartition(events_topic, partition), timeout=TIMEOUT_S,
                                                cached=False)
    except KafkaException as exc:
        raise KafkaUnavailable(f"cannot read the end offset of {events_topic}: {exc}") from None
    return store.erase(customer_id, partition, end)
