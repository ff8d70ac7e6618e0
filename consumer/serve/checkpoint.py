"""The batches between scoring and commit, and the order in which they are settled.

A batch goes through these steps, in this order, on every path: the next batch, an idle
poll, a revocation, shutdown.

 1. in hand: it is being scored, and its outputs and dead letters are produced;
 2. pending: everything it produced waits for Kafka's acknowledgements;
 3. once all are acknowledged, its state is stored in Redis: with the next batch's read in
    one round trip (`acknowledged_previous`, then `stored`), or alone (`flush`);
 4. only then are its offsets stored for the auto-commit, or (exactly-once) committed in
    its transaction together with its outputs.

So a crash before 3 replays the batch against unchanged state, and gives the same
predictions; a replayed event whose state was stored had its outputs delivered, and is not
emitted again. What stops a batch early:

- a failed delivery (`DeliveryFailed`, latched by the producer) stops it before 3. The loop
  drops it and everything after it (`drop_uncommitted`) and sends it again from its first
  offsets;
- partitions lost without a revocation, or a write fenced by a newer owner, make what is
  uncommitted void (`lost`). The loop drops it and replays it on the partitions still
  assigned;
- exactly-once, a transaction the broker aborts after the batch's state was stored (a
  rebalance moved the group's generation) makes it void too (`aborted`). Its state must go
  first: the loop checks its partitions again as if newly assigned, so that their undo
  records roll the state back, and then replays it;
- a stop while a batch waits on an outage leaves it unsettled (`abandoned`), for the
  partitions' next owner to replay.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, Message

from consumer.serve import failpoints
from consumer.serve.emit import DeliveryFailed, Emitter, TransactionAborted
from consumer.serve.health import HealthState
from consumer.serve.lag import LagTracker
from consumer.serve.metrics import Metrics
from consumer.serve.retry import RedisRetry
from consumer.serve.source import next_offsets
from consumer.settings import Settings
from state.backend import Store
from state.errors import Fenced, KafkaUnavailable
from state.store import PendingWrite

log = logging.getLogger(__name__)

DELIVERY_RETRY_S = (0.5, 30.0)  # the first wait before a batch whose delivery failed is sent again, and the most

Pending = tuple[PendingWrite | None, list[Message]]  # a batch's state write (None: no events) and its records


class PartitionsLost(Exception):
    """The group took partitions away without a revocation: the uncommitted batches are void."""


class CommitAborted(Exception):
    """A batch's transaction aborted after its state was stored: its partitions must be rolled
    back (checked as if newly assigned) before the batch is read again."""


class StopServing(Exception):
    """A stop was requested while a batch waited on an outage: the batch stays uncommitted."""


class Checkpoint:
    """Owns the producer, the pending batch and the batch in hand (see the module docstring).
    `assigned` is the loop's live set of (topic, partition): offsets of partitions no longer
    ours are never stored or committed."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        health: HealthState,
        lag: LagTracker,
        with_redis: RedisRetry,
        assigned: set[tuple[str, int]],
        resume: Callable[[], None],
        stop_requested: threading.Event,
    ) -> None:
        self.settings, self.metrics, self.health, self.lag = settings, metrics, health, lag
        self._with_redis, self._assigned, self._resume = with_redis, assigned, resume
        self._stop_requested = stop_requested
        self.consumer: Consumer | None = None
        self.store: Store | None = None
        self.emitter: Emitter | None = None
        self.pending: Pending | None = None  # outputs produced, state and offsets not yet stored
        self.in_hand: list[Message] = []  # the batch being scored (not yet pending)
        self.lost = False  # partitions were lost (not revoked): what is pending or in hand is void
        self.abandoned = False  # stopped mid-batch during an outage: store and commit nothing more
        self.aborted = False  # exactly-once: a stored batch's transaction aborted; roll back, then replay
        self.delivery_retry_s = DELIVERY_RETRY_S[0]

    def open(self, consumer: Consumer | None, store: Store, emitter: Emitter) -> None:
        self.consumer, self.store, self.emitter = consumer, store, emitter

    def hold(self, write: PendingWrite | None, messages: list[Message]) -> None:
        """Step 2: the batch in hand was produced; it is settled once acknowledged."""
        self.pending, self.in_hand = (write, messages), []

    def acknowledged_previous(self) -> Pending | None:
        """Before the next batch's state read: the pending batch, once its outputs are all
        acknowledged, to be stored in the same round trip; None when there is none, or when
        a revocation served during the wait settled it already."""
        pending = self.pending
        if pending is not None:
            self.await_acks()  # may serve a revocation, which stores the pending batch itself
        self.abandon_if_lost()
        if pending is None or self.pending is not pending:
            return None
        if pending[0] is not None:
            failpoints.hit("acknowledged_before_stored")  # where a paused member's late write comes from
        return pending

    def stored(self, pending: Pending | None) -> None:
        """Step 4 for a batch whose state the last round trip stored."""
        if pending is not None and self.pending is pending:
            self.settle(pending[1])

    def flush(self, attempts: int | None = None) -> bool:
        """Steps 3 and 4 for the pending batch on its own. With `attempts` (in callbacks and at
        shutdown), give up after that many Redis failures and keep it pending."""
        if self.pending is None:
            return True
        assert self.store is not None
        self.await_acks(keep_membership=attempts is None)
        if attempts is None:
            self.abandon_if_lost()
        if self.pending is None:  # a revocation served while waiting stored it
            return True
        write, messages = self.pending
        if write is not None:
            store = self.store
            try:
                self._with_redis(lambda: store.write(write), attempts)
            except redis.RedisError:
                log.warning("the last batch's state stays pending: Redis unavailable")
                return False
        self.settle(messages)
        return True

    def flush_unless_failed(self, attempts: int) -> bool:
        """`flush` from a callback or at shutdown: a failed delivery leaves the batch unstored
        and uncommitted (False), and stays latched for the loop to send it again."""
        try:
            return self.flush(attempts)
        except DeliveryFailed as exc:
            log.error("%s: the last batch is neither stored nor committed", exc)
            return False
        except Fenced as exc:
            log.warning("%s: the last batch is void", exc)
            self.lost = True  # as if its partitions were lost: the loop drops it and aborts
            return False
        except CommitAborted as exc:
            log.warning("%s: the last batch is void", exc)
            return False

    def await_acks(self, keep_membership: bool = True) -> None:
        """Until Kafka acknowledged every record produced so far (the pending batch's outputs)."""
        assert self.emitter is not None
        t = time.perf_counter()
        self.emitter.wait_delivered(keep_membership=keep_membership)
        if keep_membership:
            self._resume()
        self.metrics.stage_timers["produce"].observe(time.perf_counter() - t)

    def settle(self, messages: list[Message]) -> None:
        """Step 4: the batch's state is stored; its offsets go out."""
        self.pending = None
        if self.health.paused_reason == "output delivery":
            log.info("outputs are delivered again, resuming")
            self.health.paused_reason = None
            self.metrics.paused.labels("kafka").set(0)
            self.delivery_retry_s = DELIVERY_RETRY_S[0]
        t = time.perf_counter()
        if self.settings.exactly_once and self.consumer is not None:
            try:
                self._commit_transaction(messages)
            except CommitAborted:
                self.in_hand = messages + self.in_hand  # void: read again from its first offsets
                self.aborted = True
                raise
        else:
            self._store_offsets(messages)
        self.metrics.stage_timers["commit"].observe(time.perf_counter() - t)

    def abandon_if_lost(self) -> None:
        """After a wait that may have served a lost assignment: void what is uncommitted."""
        if self.aborted:
            raise CommitAborted("a transaction was aborted while the loop waited")
        if self.lost:
            if self.pending is None and not self.in_hand:
                self.lost = False
                return
            raise PartitionsLost()

    def drop_uncommitted(self, on_wait: Callable[[], None]) -> dict[tuple[str, int], int]:
        """Forget the pending batch and the batch in hand, after what was sent is settled (the
        open transaction aborted); returns each partition's first offset among them."""
        assert self.emitter is not None
        unsent = (self.pending[1] if self.pending is not None else []) + self.in_hand
        self.pending, self.in_hand, self.lost, self.aborted = None, [], False, False
        if not self.emitter.recover():
            log.warning("the producer cannot go on after a fatal error: starting a new one")
            s = self.settings
            self.emitter = Emitter(
                s.kafka_config(),
                on_wait=on_wait,
                transactional_id=s.transactional_id() if s.exactly_once else None,
                transaction_timeout_ms=s.transaction_timeout_ms,
            )
        first: dict[tuple[str, int], int] = {}
        for msg in unsent:
            topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
            if topic is not None and partition is not None and offset is not None and offset >= 0:
                first[topic, partition] = min(offset, first.get((topic, partition), offset))
        return first

    def delivery_failed(self) -> float:
        """A delivery failed: readiness fails until one succeeds; returns how long to wait
        before sending again (doubling while it keeps failing)."""
        self.metrics.kafka_errors.labels("delivery").inc()
        self.health.paused_reason = "output delivery"
        self.metrics.paused.labels("kafka").set(1)
        wait = self.delivery_retry_s
        self.delivery_retry_s = min(2 * self.delivery_retry_s, DELIVERY_RETRY_S[1])
        return wait

    def commit_now(self) -> None:
        """At-least-once, on revocation and shutdown: the stored offsets, synchronously."""
        assert self.consumer is not None
        try:
            self.consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                self.metrics.kafka_errors.labels("commit").inc()
                log.warning("commit failed: %s", exc)

    def _commit_transaction(self, messages: list[Message]) -> None:
        """The batch's outputs, dead letters and offsets become visible together. A transaction
        that fails is aborted and the scorer stops: its state was stored, and only the next
        owner's rollback (on assignment) makes the replay whole again."""
        assert self.consumer is not None and self.emitter is not None
        self.lag.note_record_times(messages)
        offsets = [tp for tp in next_offsets(messages) if (tp.topic, tp.partition) in self._assigned]
        failpoints.hit("state_stored_before_commit")  # the window the undo record exists for
        try:
            self.emitter.commit(offsets, self.consumer.consumer_group_metadata())
        except TransactionAborted as exc:
            self.metrics.kafka_errors.labels("commit").inc()
            log.warning("%s: rolling the batch back and reading it again", exc)
            raise CommitAborted(str(exc)) from exc
        except KafkaUnavailable:
            self.metrics.kafka_errors.labels("commit").inc()
            log.error("transaction aborted: stopping, so the partitions' next owner rolls the batch back")
            self._stop_requested.set()
            raise

    def _store_offsets(self, messages: list[Message]) -> None:
        self.lag.note_record_times(messages)
        if self.consumer is None:
            return
        offsets = [tp for tp in next_offsets(messages) if (tp.topic, tp.partition) in self._assigned]
        if offsets:
            try:
                self.consumer.store_offsets(offsets=offsets)
            except KafkaException as exc:  # revoked meanwhile: the new owner replays, state is idempotent
                self.metrics.kafka_errors.labels("store_offsets").inc()
                log.warning("storing offsets failed: %s", exc)
