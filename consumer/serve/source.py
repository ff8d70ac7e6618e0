"""Kafka in: poll a batch (up to max_batch records or max_wait), split events from profiles,
decode and validate events into arrays; invalid records come back with their reason."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import orjson
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from state.encoding import AGE_GROUPS, GENDERS, activity_code
from state.errors import InvalidEvent
from state.events import DEFAULT_MAX_EVENT_BYTES, MAX_ID_CHARS, InvalidReason, decode_event
from state.store import EventBatch, event_tag


def poll_batch(consumer: Consumer, max_batch: int, max_wait_ms: int, min_batch: int = 1) -> list[Message]:
    """Up to `max_batch` records: all that are ready once there are at least `min_batch`, or
    what came within `max_wait_ms`. A batch never waits to fill beyond `min_batch`: under load
    the records that queued while the previous batch was scored make the next one, so batches
    grow with the backlog, and at a moderate rate an event waits for no timer."""
    messages: list[Message] = []
    deadline = time.monotonic() + max_wait_ms / 1000.0
    while True:
        messages.extend(consumer.consume(max_batch - len(messages), 0))  # what is ready now
        remaining = deadline - time.monotonic()
        if len(messages) >= min(min_batch, max_batch) or remaining <= 0:
            return messages
        # consume(n, t) blocks until n records or t: ask for one, so the first to come wakes it
        messages.extend(consumer.consume(1, remaining))


def next_offsets(messages: list[Message]) -> list[TopicPartition]:
    """The offset to commit per partition: one past the highest record seen (errors skipped)."""
    latest: dict[tuple[str, int], int] = {}
    for msg in messages:
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        if msg.error() is None and topic is not None and partition is not None and offset is not None:
            latest[(topic, partition)] = max(latest.get((topic, partition), -1), offset)
    return [TopicPartition(topic, partition, offset + 1) for (topic, partition), offset in latest.items()]


@dataclass
class Decoded:
    events: EventBatch
    event_ids: list[str]
    kafka_ts: np.ndarray  # per valid event: the input record's Kafka timestamp (ms)
    invalid: list[tuple[Message, str, str]] = field(default_factory=list)  # (record, reason, detail)
    errors: list[KafkaError] = field(default_factory=list)


class EventDecoder:
    """Decodes records into arrays; activity codes are cached by name (names repeat)."""

    def __init__(self, max_event_bytes: int, max_future_seconds: int | None = None, tag_key: bytes = b"") -> None:
        self.max_event_bytes = max_event_bytes
        self.max_future_seconds = max_future_seconds
        self.tag_key = tag_key  # the state's (StateStore.tag_key)
        self._codes: dict[str, int] = {}

    def _code(self, name: str) -> int:
        code = self._codes.get(name)
        if code is None:
            if len(self._codes) > 100_000:
                self._codes.clear()
            code = self._codes[name] = activity_code(name)
        return code

    def _not_far_ahead(self, ts: int, record_ms: int, now: int) -> None:
        """The reference is the record's own timestamp, so that a replay decides the same; the
        wall clock caps it (a producer's clock may be wrong too)."""
        assert self.max_future_seconds is not None
        reference = min(record_ms // 1000, now) if record_ms > 0 else now
        if ts > reference + self.max_future_seconds:
            raise InvalidEvent(
                InvalidReason.TS_OUT_OF_RANGE.value,
                f"ts is {ts - reference} s after the record's time (SEQSCORE_STATE__MAX_FUTURE_SECONDS "
                f"{self.max_future_seconds})",
            )

    def decode(self, messages: list[Message]) -> Decoded:
        customers, event_ids, partition, offset, ts, coarse, fine, tag, kafka_ts = [], [], [], [], [], [], [], [], []
        invalid: list[tuple[Message, str, str]] = []
        errors: list[KafkaError] = []
        now = int(time.time())
        for msg in messages:
            error = msg.error()
            if error is not None:
                errors.append(error)
                continue
            try:
                event = decode_event(msg.value(), self.max_event_bytes)
                if self.max_future_seconds is not None:
                    self._not_far_ahead(event.ts_seconds, msg.timestamp()[1], now)
            except InvalidEvent as exc:
                invalid.append((msg, exc.reason, exc.detail))
                continue
            customers.append(event.customer_id)
            event_ids.append(event.event_id)
            partition.append(msg.partition())
            offset.append(msg.offset())
            ts.append(event.ts_seconds)
            coarse.append(self._code(event.activity))
            fine.append(self._code(event.activity_detail or event.activity))
            tag.append(event_tag(event.event_id, self.tag_key))
            kafka_ts.append(msg.timestamp()[1])
        batch = EventBatch(
            customer_ids=customers,
            partition=np.array(partition, dtype=np.int64),
            offset=np.array(offset, dtype=np.int64),
            ts=np.array(ts, dtype=np.int64),
            coarse=np.array(coarse, dtype=np.uint32),
            fine=np.array(fine, dtype=np.uint32),
            tag=np.array(tag, dtype=np.uint32),
        )
        return Decoded(batch, event_ids, np.array(kafka_ts, dtype=np.int64), invalid, errors)


def decode_profile(value: bytes, max_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> tuple[str, int, int] | None:
    """A customer-profiles record: {"customer_id", "gender", "age_group"} -> indexes (-1 unknown).
    None (counted as invalid) for anything else, a record over `max_bytes` or an id over
    MAX_ID_CHARS included: the events' limits hold for profiles too."""
    if len(value) > max_bytes:
        return None
    try:
        data = orjson.loads(value)
        customer = data["customer_id"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    if not isinstance(customer, str) or not customer or len(customer) > MAX_ID_CHARS:
        return None
    gender = GENDERS.index(data["gender"]) if data.get("gender") in GENDERS else -1
    age = AGE_GROUPS.index(data["age_group"]) if data.get("age_group") in AGE_GROUPS else -1
    return customer, gender, age


def read_again_later(consumer: Consumer, msg: Message | None) -> None:
    """A poll meant to serve group callbacks handed back a record (a partition assigned and
    fetched before it could be paused): seek back to it, so that it is read again in a batch
    instead of skipped while the offsets after it commit."""
    if msg is None or msg.error() is not None:
        return
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    if topic is not None and partition is not None and offset is not None:
        consumer.seek(TopicPartition(topic, partition, offset))
