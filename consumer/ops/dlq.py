"""`seqscore dlq replay`: send dead-lettered records back to the events topic once the reason
they were refused is fixed (a raised size limit, a corrected producer, a new scorer version).

The DLQ is read from the beginning up to its end offsets at start, by a throwaway consumer
that joins no group and commits nothing, so a replay can be repeated and never moves anyone's
offsets. Records dead-lettered while it runs (a replayed record refused again) are not re-read.
Selection is by the DLQ record's own Kafka timestamp: the time the scorer dead-lettered the
record (the DLQ record does not carry the original record's timestamp).
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from consumer.clients import state_store
from consumer.serve.emit import Emitter
from consumer.settings import Settings
from state.backend import Store
from state.errors import ConfigError, KafkaUnavailable
from state.events import InvalidReason

REASON_HEADER = "seqscore.reason"
REPLAYED_FROM_HEADER = "seqscore.replayed-from"
TRUNCATED_HEADER = "seqscore.truncated"
NO_REASON = "(none)"  # a DLQ record without a seqscore.reason header (written by something else)
PROGRESS_EVERY_S = 2.0
# a replay is run by hand: a broker that does not acknowledge within this fails the command
# instead of waiting forever like the scorer's emitter does
DELIVERY_TIMEOUT_MS = 60_000
STALL_S = 60.0  # no record and no end of partition for this long: the broker is gone

Headers = list[tuple[str, str | bytes | None]]


@dataclass
class ReplayReport:
    read: int = 0
    selected: int = 0
    replayed: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)  # of the selected records
    truncated: int = 0  # selected, but cut to fit the DLQ: never replayed (the value is not whole)
    erased: int = 0  # selected, but their customer was erased since: never replayed
    dry_run: bool = False

    def summary(self) -> str:
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(self.by_reason.items())) or "none"
        verb = "would replay" if self.dry_run else "replayed"
        cut = (f"; {self.truncated} truncated copies left out (find the originals by seqscore.original_sha256)"
               if self.truncated else "")
        gone = f"; {self.erased} of erased customers left out" if self.erased else ""
        left = self.selected - self.truncated - self.erased
        return (f"dlq replay: read {self.read}, selected {self.selected}, {verb} "
                f"{left if self.dry_run else self.replayed}; by reason: {reasons}{cut}{gone}")


def _headers(msg: Message) -> Headers:
    original = msg.headers() or []
    pairs = original.items() if isinstance(original, dict) else original
    return [(str(k), v) for k, v in pairs]


def replay_headers(msg: Message) -> Headers:
    """The record's original headers (every seqscore.* one dropped, an earlier replayed-from
    included) plus where this copy came from."""
    kept = [(k, v) for k, v in _headers(msg) if not k.startswith("seqscore.")]
    return [*kept, (REPLAYED_FROM_HEADER, f"dlq:{msg.partition()}:{msg.offset()}".encode())]


def reason_of(msg: Message) -> str:
    for key, value in _headers(msg):
        if key == REASON_HEADER and value is not None:
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return NO_REASON


def check_reasons(reasons: list[str] | None) -> frozenset[str] | None:
    if not reasons:
        return None
    known = {r.value for r in InvalidReason}
    unknown = sorted(set(reasons) - known)
    if unknown:
        raise ConfigError(f"unknown reason {', '.join(unknown)} (one of: {', '.join(sorted(known))})")
    return frozenset(reasons)


def _text(exc: KafkaException) -> str:
    error = exc.args[0] if exc.args else None
    return error.str() if isinstance(error, KafkaError) else str(exc)


def _end_offsets(consumer: Consumer, topic: str, bootstrap: str) -> dict[int, tuple[int, int]]:
    """partition -> (low, high) watermarks; a missing DLQ topic is an error, not auto-created."""
    try:
        metadata = consumer.list_topics(timeout=10)
    except KafkaException as exc:
        raise KafkaUnavailable(f"cannot reach the broker at {bootstrap}: {_text(exc)}") from None
    if topic not in metadata.topics or metadata.topics[topic].error is not None:
        raise ConfigError(f"no dead-letter topic {topic!r} on the broker (SEQSCORE_TOPICS__DLQ)")
    marks = {}
    for partition in metadata.topics[topic].partitions:
        try:
            marks[partition] = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        except KafkaException as exc:
            raise KafkaUnavailable(f"cannot read the end offsets of {topic}: {_text(exc)}") from None
    return marks


@dataclass(frozen=True)
class _Selection:
    """Which DLQ records a replay takes: dead-lettered in [since_ms, until_ms), for one of
    `reasons` when given."""

    since_ms: int
    until_ms: int | None
    reasons: frozenset[str] | None

    def takes(self, stamp: int, reason: str) -> bool:
        if stamp < self.since_ms or (self.until_ms is not None and stamp >= self.until_ms):
            return False
        return self.reasons is None or reason in self.reasons


class _ReadUpToEnd:
    """Reading the DLQ up to the end offsets seen at start: records dead-lettered during the
    replay (a replayed record refused again) are never read, so a replay always ends."""

    def __init__(self, topic: str, marks: dict[int, tuple[int, int]]) -> None:
        self.topic, self.marks = topic, marks
        self.total = sum(high - low for low, high in marks.values())
        # done once past the end offsets seen at start, or at the end (EOF) under read_committed,
        # which stops at the last stable offset when a transaction is still open
        self.pending = {p for p, (low, high) in marks.items() if high > low}
        self.last_seen = time.monotonic()

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in sorted(self.pending)]

    def batches(self, consumer: Consumer) -> Iterator[list[Message]]:
        self.last_seen = time.monotonic()
        while self.pending:
            if time.monotonic() - self.last_seen > STALL_S:
                raise KafkaUnavailable(f"no progress reading {self.topic} for {STALL_S:.0f}s")
            yield consumer.consume(500, 1.0)

    def admits(self, msg: Message) -> bool:
        """Whether `msg` is a record from before the start; notes ends of partitions on the way."""
        partition = msg.partition()
        error = msg.error()
        if error is None or error.code() == KafkaError._PARTITION_EOF:
            self.last_seen = time.monotonic()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                self.pending.discard(partition)
                return False
            if error.fatal() or not error.retriable():
                raise KafkaUnavailable(f"reading {self.topic}: {error.str()}")
            return False
        if partition not in self.pending:
            return False
        offset = msg.offset()
        if offset is not None and offset + 1 >= self.marks[partition][1]:
            self.pending.discard(partition)
        return offset is None or offset < self.marks[partition][1]  # else dead-lettered after the replay began


def _reader_config(settings: Settings, quiet: dict[str, int]) -> dict[str, object]:
    return settings.kafka_config(**quiet, **{
        "group.id": f"seqscore-dlq-replay-{uuid.uuid4().hex}",  # assign() only: never joins, never commits
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "isolation.level": "read_committed",
        "enable.partition.eof": True,
    })


def _erased_customers(store: Store, messages: list[Message]) -> set[str]:
    """Those of the batch's customers whose state is an erasure tombstone."""
    return store.erased(sorted({key.decode("utf-8", "replace") for m in messages
                                if m.error() is None and (key := m.key())}))


def _take(msg: Message, selection: _Selection, erased: set[str], emitter: Emitter | None, target: str,
          report: ReplayReport) -> None:
    """Count a record read from before the start, and re-produce it to `target` when selected
    and replayable (a dry run has no emitter)."""
    report.read += 1
    _, stamp = msg.timestamp()
    reason = reason_of(msg)
    if not selection.takes(stamp, reason):
        return
    report.selected += 1
    report.by_reason[reason] += 1
    if any(k == TRUNCATED_HEADER for k, _ in _headers(msg)):
        report.truncated += 1
        return
    key = msg.key()
    if key and key.decode("utf-8", "replace") in erased:
        report.erased += 1  # erased since: replaying would bring the customer back
        return
    if emitter is not None:
        emitter.send(target, msg.key(), msg.value(), replay_headers(msg))
        report.replayed += 1


def replay(
    settings: Settings,
    since_ms: int,
    until_ms: int | None = None,
    reasons: list[str] | None = None,
    dry_run: bool = False,
    progress: Callable[[str], None] | None = None,
) -> ReplayReport:
    """Re-produce the selected DLQ records (timestamp in [since_ms, until_ms), reason in
    `reasons` when given) to the events topic with their original key, value and headers,
    and wait until every one is acknowledged."""
    if until_ms is not None and until_ms <= since_ms:
        raise ConfigError("--until must be later than --since")
    selection = _Selection(since_ms, until_ms, check_reasons(reasons))
    note = progress or (lambda line: print(line, file=sys.stderr))
    topic, target = settings.topics.dlq, settings.topics.events
    # librdkafka logs each failed connection attempt to stderr; the command reports a broker
    # it cannot reach in one line instead, and shows them with `seqscore -v`
    quiet = {} if logging.getLogger().isEnabledFor(logging.DEBUG) else {"log_level": 0}
    consumer = Consumer(_reader_config(settings, quiet))
    producer_config = settings.kafka_config(**quiet, **{"message.timeout.ms": DELIVERY_TIMEOUT_MS})
    emitter = None if dry_run else Emitter(producer_config)
    store = state_store(settings, "command", None, None)  # asked only which customers are erased
    report = ReplayReport(dry_run=dry_run)
    try:
        reading = _ReadUpToEnd(topic, _end_offsets(consumer, topic, settings.kafka_bootstrap))
        consumer.assign(reading.assignment())
        note(f"dlq replay: reading {topic} ({reading.total} records in {len(reading.marks)} partitions)"
             + (" (dry run)" if dry_run else f", replaying to {target}"))
        last_note = time.monotonic()
        for messages in reading.batches(consumer):
            erased = _erased_customers(store, messages)
            for msg in messages:
                if reading.admits(msg):
                    _take(msg, selection, erased, emitter, target, report)
            if time.monotonic() - last_note > PROGRESS_EVERY_S:
                last_note = time.monotonic()
                note(f"  read {report.read}/{reading.total}, selected {report.selected}")
        if emitter is not None:
            emitter.wait_delivered(keep_membership=False)
    finally:
        consumer.close()
    return report
