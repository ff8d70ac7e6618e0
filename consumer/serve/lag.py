"""Consumer lag per assigned partition, in records and in seconds, for the metrics and /readyz."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from consumer.serve.health import HealthState
from consumer.serve.metrics import Metrics

LAG_EVERY_S = 1.0
LAG_QUERY_BUDGET_S = 1.0  # a broker that does not answer must not hold up a stop request for long


def has_offset(tp: TopicPartition) -> bool:
    """Whether a position or committed offset is a real offset (not librdkafka's OFFSET_INVALID)."""
    return tp.offset is not None and tp.offset >= 0


class LagTracker:
    def __init__(self, metrics: Metrics, health: HealthState, topic: str) -> None:
        self.metrics, self.health, self.topic = metrics, health, topic
        self._lag_at = 0.0
        self._lag: dict[int, int] = {}  # events partition -> records behind, as last known
        self._last_ts_ms: dict[int, int] = {}

    def clear(self) -> None:
        """The assignment changed: figures of partitions no longer ours must not linger."""
        self.metrics.lag_messages.clear()
        self.metrics.lag_seconds.clear()
        self._lag.clear()

    def note_record_times(self, messages: list[Message]) -> None:
        """The newest record time per partition whose offsets were stored: lag in seconds."""
        for msg in messages:
            partition = msg.partition()
            if msg.error() is None and partition is not None:
                self._last_ts_ms[partition] = msg.timestamp()[1]

    def update(self, consumer: Consumer | None, assigned: set[tuple[str, int]], from_broker: bool = False) -> None:
        """Lag per assigned partition from the consumer's position to the high watermark: the
        one its fetches brought, or `from_broker` (while paused) one queried within a second in
        all; a partition the broker does not answer for in time keeps its last figure."""
        if time.monotonic() - self._lag_at < LAG_EVERY_S or consumer is None:
            return
        self._lag_at = time.monotonic()
        partitions = [TopicPartition(t, p) for t, p in assigned if t == self.topic]
        if not partitions:
            self.health.lag = 0
            return
        now_ms = time.time() * 1000
        deadline = self._lag_at + LAG_QUERY_BUDGET_S
        positions = consumer.position(partitions)
        if from_broker:
            positions = self._from_committed(consumer, positions, deadline)
        for tp in positions:
            try:
                if from_broker:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        continue
                    low, high = consumer.get_watermark_offsets(tp, timeout=remaining, cached=False)
                else:
                    low, high = consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            start = tp.offset
            if from_broker and not has_offset(tp):
                start = low  # nothing committed either: where the reset (earliest) starts it
            if high is None or high < 0 or start is None or start < 0:
                continue
            lag = self._lag[tp.partition] = max(0, high - start)
            self.metrics.lag_messages.labels(str(tp.partition)).set(lag)
            last = self._last_ts_ms.get(tp.partition)
            self.metrics.lag_seconds.labels(str(tp.partition)).set(
                max(0.0, (now_ms - last) / 1000.0) if lag and last else 0.0
            )
        self.health.lag = sum(self._lag.values())

    def _from_committed(
        self, consumer: Consumer, positions: list[TopicPartition], deadline: float
    ) -> list[TopicPartition]:
        """Where the consumer has not fetched yet since it was assigned a partition, it has no
        position: it starts from the group's committed offset."""
        unknown = [tp for tp in positions if not has_offset(tp)]
        remaining = deadline - time.monotonic()
        if not unknown or remaining <= 0:
            return positions
        try:
            committed = {tp.partition: tp for tp in consumer.committed(unknown, timeout=remaining)}
        except KafkaException:
            return positions
        return [tp if has_offset(tp) else committed.get(tp.partition, tp) for tp in positions]
