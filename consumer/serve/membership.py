"""This member's place in the consumer group: the partitions it owns, what a rebalance does to
them, and how it keeps its membership while a batch waits on Kafka or Redis.

- Revoked partitions: the pending batch is settled first (see checkpoint.py), so that their
  next owner starts from stored state and committed offsets.
- Lost partitions (the session expired): what is uncommitted is void; the loop drops it and
  replays what is still ours, since the new owner may already have moved on.
- Exactly-once, newly assigned partitions stay paused until the loop has claimed them in
  Redis and rolled back a previous owner's uncommitted write; a callback must not wait for
  that, because a dead member's open transaction holds the committed offsets until the
  broker aborts it.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable

import numpy as np
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from numpy.typing import NDArray

from consumer.serve.checkpoint import Checkpoint, StopServing
from consumer.serve.health import HealthState
from consumer.serve.lag import LagTracker
from consumer.serve.metrics import Metrics
from consumer.serve.retry import RedisRetry
from consumer.serve.source import read_again_later
from consumer.settings import Settings
from state.backend import Store
from state.store import EventBatch

log = logging.getLogger(__name__)

# exactly-once: a newly assigned partition's committed offsets are asked for once a second
# while they are not stable, each time waiting longer (the first figure doubling up to the
# second), so that a slow broker is waited for and a stuck one holds up the loop briefly
CHECK_EVERY_S = 1.0
CHECK_TIMEOUT_S = (0.25, 4.0)


class Membership:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        health: HealthState,
        lag: LagTracker,
        stop_requested: threading.Event,
        forget: Callable[[int], None],
    ) -> None:
        self.settings, self.metrics, self.health, self.lag = settings, metrics, health, lag
        self.topic = settings.topics.events
        self._stop_requested, self._forget = stop_requested, forget
        self.assigned: set[tuple[str, int]] = set()  # shared with the checkpoint: mutated in place only
        # exactly-once: events partitions assigned but paused until their rollback check ran
        self.unchecked: set[int] = set()
        self._check_at, self._check_timeout_s = 0.0, CHECK_TIMEOUT_S[0]
        self._assignments = 0  # exactly-once assignments so far: a check that spans one starts over
        self.consumer: Consumer | None = None
        self.store: Store | None = None
        self._checkpoint: Checkpoint | None = None
        self._with_redis: RedisRetry | None = None

    def bind(self, checkpoint: Checkpoint, with_redis: RedisRetry) -> None:
        """The objects that need this one to exist first (they pause and resume through it)."""
        self._checkpoint, self._with_redis = checkpoint, with_redis

    def open(self, consumer: Consumer, store: Store) -> None:
        self.consumer, self.store = consumer, store
        consumer.subscribe([self.topic], on_assign=self.on_assign, on_revoke=self.on_revoke, on_lost=self.on_lost)

    # -- group callbacks (served inside consumer.poll) ----------------------------------
    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # librdkafka keeps a partition's pause across a lost assignment; one paused while the
        # batch waited (e.g. on a restarting broker) would come back paused and never fetch
        consumer.resume(partitions)
        events = [p for p in partitions if p.topic == self.topic]
        if self.settings.exactly_once and events:
            consumer.incremental_assign(partitions)
            consumer.pause(events)
            self.unchecked |= {p.partition for p in events}
            self._assignments += 1
            self._check_at, self._check_timeout_s = 0.0, CHECK_TIMEOUT_S[0]
        self.assigned |= {(p.topic, p.partition) for p in partitions}
        self._changed()

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # whatever stays pending is stored later; a new owner of these partitions replays it
        # against either state consistently (the write is idempotent)
        checkpoint = self._checkpoint
        assert checkpoint is not None
        if not checkpoint.abandoned:
            stored = checkpoint.flush_unless_failed(attempts=3)
            if not stored and self.settings.exactly_once and not checkpoint.lost and not checkpoint.aborted:
                # its outputs sit in the open transaction; carrying on would commit them with the
                # next batch while the partitions' new owner replays them: stop, let it abort
                raise StopServing("exactly-once: a revoked batch could not be stored")
            if stored and not self.settings.exactly_once:
                checkpoint.commit_now()
        self._drop(partitions)

    def on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # their new owner may already have moved on from the committed offsets: storing the
        # pending batch now could put back older state, and (exactly-once) its outputs would
        # commit a second time. The loop drops it and replays what is still ours.
        assert self._checkpoint is not None
        self._checkpoint.lost = True
        self._drop(partitions)

    def _drop(self, partitions: list[TopicPartition]) -> None:
        self.assigned -= {(p.topic, p.partition) for p in partitions}
        for p in partitions:
            if p.topic == self.topic:
                self.unchecked.discard(p.partition)
                if self.store is not None:
                    self.store.claims.pop(p.partition, None)
                self._forget(p.partition)
        self._changed()

    def _changed(self) -> None:
        events = sum(1 for topic, _ in self.assigned if topic == self.topic)
        self.metrics.assigned.set(events)
        self.health.assigned = events
        self.lag.clear()
        log.info("assigned %d partitions of %s", events, self.topic)

    # -- in the loop ----------------------------------------------------------------------
    def roll_back_uncommitted(self) -> None:
        """Before fetching from a newly assigned partition (exactly-once): claim it, and undo
        the state a previous owner stored for a batch whose transaction never committed (its
        outputs were aborted, so it is replayed whole). A partition whose committed offset is
        not stable yet (a dead member's transaction still open) stays paused and is tried
        again shortly."""
        if not self.unchecked or time.monotonic() < self._check_at:
            return
        assert self.consumer is not None and self.store is not None and self._with_redis is not None
        store, generation = self.store, self._assignments
        waiting = [TopicPartition(self.topic, p) for p in sorted(self.unchecked)]
        failure: object = None
        try:
            committed = self.consumer.committed(waiting, timeout=self._check_timeout_s)
        except KafkaException as exc:
            committed, failure = [], exc.args[0]
        for tp in committed:
            if tp.error is not None:
                failure = tp.error
                continue
            offset = tp.offset if tp.offset is not None and tp.offset >= 0 else -1
            # claimed first: a former owner's late write can then no longer land after the check
            self._with_redis(functools.partial(store.claim, tp.partition))
            restored = self._with_redis(functools.partial(store.rollback, tp.partition, offset))
            if restored >= 0:
                log.warning("partition %d: rolled back %d windows of an uncommitted batch (committed offset %d)",
                            tp.partition, restored, offset)
            if self._assignments != generation:
                return  # a rebalance while Redis was waited for: check the new assignment afresh
            self.unchecked.discard(tp.partition)
            self.consumer.resume([tp])
        if self.unchecked:
            if failure is not None and self._check_timeout_s == CHECK_TIMEOUT_S[0]:
                log.warning("partitions %s wait for their committed offsets (%s): a previous owner's "
                            "transaction is likely open until the broker aborts it", sorted(self.unchecked), failure)
            self._check_timeout_s = min(self._check_timeout_s * 2, CHECK_TIMEOUT_S[1])
            self._check_at = time.monotonic() + CHECK_EVERY_S
        self.metrics.paused.labels("open_transaction").set(1 if self.unchecked else 0)

    def check_again(self) -> None:
        """Exactly-once: treat every events partition as newly assigned (paused until claimed
        and checked), after a transaction of ours aborted with its state already stored."""
        assert self.consumer is not None
        events = [TopicPartition(t, p) for t, p in sorted(self.assigned) if t == self.topic]
        if events:
            self.consumer.pause(events)
        self.unchecked |= {tp.partition for tp in events}
        self._assignments += 1
        self._check_at, self._check_timeout_s = 0.0, CHECK_TIMEOUT_S[0]

    def owned(self, messages: list[Message]) -> list[Message]:
        """The records of partitions still ours, less those of partitions not checked yet
        (fetched before their pause took hold): read again after the check, never scored
        before it. A revocation served while the batch gathered leaves records that are no
        longer ours: their new owner scores them."""
        messages = [m for m in messages if (m.topic(), m.partition()) in self.assigned]
        if not self.unchecked:
            return messages
        assert self.consumer is not None
        kept: list[Message] = []
        first: dict[int, Message] = {}
        for m in messages:
            partition = m.partition()
            if m.topic() == self.topic and partition is not None and partition in self.unchecked:
                first.setdefault(partition, m)
            else:
                kept.append(m)
        for m in first.values():
            read_again_later(self.consumer, m)
        return kept

    def owned_rows(self, events: EventBatch) -> NDArray[np.bool_]:
        owned = np.array(sorted(p for t, p in self.assigned if t == self.topic), dtype=np.int64)
        return np.isin(events.partition, owned)

    def seek_back(self, first: dict[tuple[str, int], int]) -> None:
        """Read these partitions again from these offsets, where they are still ours."""
        assert self.consumer is not None
        for (topic, partition), offset in first.items():
            if (topic, partition) in self.assigned:
                self.consumer.seek(TopicPartition(topic, partition, offset))

    def keep(self) -> None:
        """While a batch waits on Kafka or Redis: stop fetching, but keep serving group callbacks."""
        if self.consumer is None:  # a sweep has no consumer
            return
        if self._stop_requested.is_set():
            raise StopServing("stop requested while a batch waited on Kafka or Redis")
        self.health.beat()
        assignment = self.consumer.assignment()
        if assignment:
            self.consumer.pause(assignment)
        read_again_later(self.consumer, self.consumer.poll(0))
        # a wait is when ops most need to see the lag grow, and a paused consumer's fetches no
        # longer bring the high watermarks: ask the broker
        self.lag.update(self.consumer, self.assigned, from_broker=True)

    def resume(self) -> None:
        """Fetch again from every partition, except those still waiting for their check."""
        if self.consumer is None:  # a sweep has no consumer
            return
        assignment = [tp for tp in self.consumer.assignment()
                      if not (tp.topic == self.topic and tp.partition in self.unchecked)]
        if assignment:
            self.consumer.resume(assignment)
