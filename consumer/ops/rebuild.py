"""`seqscore state rebuild`: re-derive the customers' windows in Redis from the retained
events topic, e.g. after Redis lost its data or before serving a model with a longer window.

A throwaway consumer (a random group id, assign() only, nothing committed) reads every
partition from the beginning, or from `--since` by offsets_for_times, up to the end offsets
captured at the start; records produced meanwhile are left to the scorers. Records are
decoded with the scorer's own EventDecoder (an invalid one is counted and skipped: its
dead-letter copy was made when it was first consumed) and applied with StateStore.apply,
which is idempotent, so a rebuild can be repeated or interrupted and run again.

Only windows (raw history: event times, activities, event_id tags, counts) are rebuilt.
Alert state (alerted flag, last alert time) is not in the events topic and starts empty;
profiles come from the compacted customer-profiles topic, which the scorers follow.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import TextIO

import numpy as np
import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from consumer.clients import state_store
from consumer.serve.source import EventDecoder
from consumer.settings import Settings
from state.backend import Store
from state.encoding import FeatureSpec
from state.errors import ConfigError, KafkaUnavailable, SeqscoreError
from state.store import STATUS_NAMES
from training.registry import Registry

PROGRESS_EVERY_S = 1.0
METADATA_TIMEOUT_S = 10.0


class StateUnavailable(SeqscoreError):
    """Redis failed while the rebuild was applying events."""


@dataclass
class RebuildReport:
    topic: str
    capacity: int
    planned: int = 0  # records between the start offsets and the end offsets captured at start
    records: int = 0
    events: int = 0
    invalid: Counter[str] = field(default_factory=Counter)
    status: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def summary(self) -> str:
        rate = self.records / max(self.seconds, 1e-9)
        invalid = sum(self.invalid.values())
        states = ", ".join(f"{self.status[name]:,} {name}" for name in STATUS_NAMES if self.status[name])
        return (
            f"rebuilt windows from {self.topic}: {self.records:,} records in {self.seconds:.1f}s "
            f"({rate:,.0f}/s), {self.events:,} events ({states or 'none'}), {invalid:,} invalid skipped, "
            f"window {self.capacity}"
        )


def current_model_shape(settings: Settings) -> tuple[int | None, float | None]:
    """The CURRENT model's window and churn horizon, read from its manifest without loading
    the model (None, None: no model yet): the rebuilt windows and quiet sets are the ones
    `seqscore serve` would keep for it."""
    registry = Registry(settings.registry)
    current = registry.current()
    if current is None:
        return None, None
    manifest = registry.manifest(current)
    return FeatureSpec.from_dict(manifest["features"]).window, float(manifest["churn"]["horizon_days"])


def _ranges(consumer: Consumer, topic: str, since_s: int | None, bootstrap: str) -> dict[int, tuple[int, int]]:
    """Per partition, [start, end): end is the high watermark now, start the low watermark
    or the first offset at or after `since_s` (Kafka record timestamps)."""
    try:
        metadata = consumer.list_topics(topic, timeout=METADATA_TIMEOUT_S)
    except KafkaException as exc:
        raise KafkaUnavailable(f"cannot read the metadata of {topic}: {exc}") from None
    described = metadata.topics.get(topic)
    if described is None or described.error is not None or not described.partitions:
        raise ConfigError(f"no topic {topic!r} on {bootstrap}")
    partitions = sorted(described.partitions)
    ranges: dict[int, tuple[int, int]] = {}
    try:
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=METADATA_TIMEOUT_S)
            ranges[p] = (low, high)
        if since_s is not None:
            wanted = [TopicPartition(topic, p, since_s * 1000) for p in partitions]
            for tp in consumer.offsets_for_times(wanted, timeout=METADATA_TIMEOUT_S):
                low, high = ranges[tp.partition]
                # -1: no record at or after that time in this partition
                ranges[tp.partition] = (high if tp.offset < 0 else max(low, tp.offset), high)
    except KafkaException as exc:
        raise KafkaUnavailable(f"cannot read the offsets of {topic}: {exc}") from None
    return ranges


class _Progress:
    def __init__(self, out: TextIO | None, planned: int) -> None:
        self.out, self.planned = out, planned
        self.started = self.shown = time.monotonic()

    def show(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if self.out is None or (not final and now - self.shown < PROGRESS_EVERY_S):
            return
        self.shown = now
        share = done / self.planned if self.planned else 1.0
        rate = done / max(now - self.started, 1e-9)
        self.out.write(f"rebuild: {done:,}/{self.planned:,} records ({share:.1%}), {rate:,.0f} events/s\n")
        self.out.flush()


def _throwaway_consumer(settings: Settings) -> Consumer:
    return Consumer(
        settings.kafka_config(
            **{
                # librdkafka wants a group id even for assign(); a fresh one, never committed,
                # so the scorers' group and offsets are untouched
                "group.id": f"seqscore-rebuild-{uuid.uuid4().hex[:12]}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": False,
            }
        )
    )


def _before_end(messages: list[Message], remaining: dict[int, int], topic: str) -> list[Message]:
    """The records of partitions still being read that precede the end offsets captured at start."""
    kept = []
    for msg in messages:
        error = msg.error()
        if error is not None:
            if error.fatal() or error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise KafkaUnavailable(f"reading {topic}: {error}")
            continue
        partition, offset = msg.partition(), msg.offset()
        if partition is None or offset is None or offset >= remaining.get(partition, -1):
            continue  # produced after the start: the scorers handle it
        kept.append(msg)
    return kept


def _pause_finished(consumer: Consumer, topic: str, remaining: dict[int, int]) -> None:
    """Pause and forget the partitions whose position reached the captured end: control records
    of transactions have offsets but never arrive as messages, so the position says when one is done."""
    done = [
        tp
        for tp in consumer.position([TopicPartition(topic, p) for p in remaining])
        if tp.offset is not None and tp.offset >= remaining[tp.partition]
    ]
    if done:
        consumer.pause(done)
        for tp in done:
            del remaining[tp.partition]


def rebuild_state(
    settings: Settings,
    topic: str,
    since_s: int | None = None,
    batch: int = 1000,
    progress: TextIO | None = sys.stderr,
    idle_timeout_s: float = 60.0,
) -> RebuildReport:
    """Apply every valid event of `topic` (from the start or `since_s`, up to the end offsets
    of now) to the windows under SEQSCORE_STATE__KEY_PREFIX; returns what was done."""
    started = time.monotonic()
    store = state_store(settings, "command", *current_model_shape(settings))
    report = RebuildReport(topic=topic, capacity=store.capacity)
    decoder = EventDecoder(settings.max_event_bytes, settings.state.max_future_seconds, store.tag_key())
    consumer = _throwaway_consumer(settings)
    try:
        ranges = _ranges(consumer, topic, since_s, settings.kafka_bootstrap)
        remaining = {p: end for p, (start, end) in ranges.items() if start < end}
        report.planned = sum(end - start for start, end in ranges.values())
        consumer.assign([TopicPartition(topic, p, ranges[p][0]) for p in remaining])
        shown = _Progress(progress, report.planned)
        last_progress = time.monotonic()
        while remaining:
            kept = _before_end(consumer.consume(batch, 0.5), remaining, topic)
            if kept:
                _apply(store, decoder, kept, report)
                last_progress = time.monotonic()
            _pause_finished(consumer, topic, remaining)
            if time.monotonic() - last_progress > idle_timeout_s:
                raise KafkaUnavailable(
                    f"no records from {topic} for {idle_timeout_s:.0f}s with partitions {sorted(remaining)} unfinished"
                )
            shown.show(report.records)
        report.seconds = time.monotonic() - started
        shown.show(report.records, final=True)
    finally:
        consumer.close()
        store.client.close()
    return report


def _apply(store: Store, decoder: EventDecoder, messages: list[Message], report: RebuildReport) -> None:
    decoded = decoder.decode(messages)
    report.records += len(messages)
    for _msg, reason, _detail in decoded.invalid:
        report.invalid[reason] += 1
    if not len(decoded.events):
        return
    try:
        applied = store.apply(decoded.events)
    except redis.RedisError as exc:
        raise StateUnavailable(
            f"Redis failed while applying events: {exc} (the rebuild is idempotent: run it again)"
        ) from exc
    report.events += len(decoded.events)
    counts = np.bincount(applied.status, minlength=len(STATUS_NAMES))
    for status, name in enumerate(STATUS_NAMES):
        report.status[name] += int(counts[status])
