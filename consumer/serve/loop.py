"""`seqscore serve`: the scoring loop of one consumer-group member.

Per batch (at-least-once, spelled out):
 1. poll what is ready, up to max_batch records (an idle poll waits up to max_wait_ms);
 2. decode + validate; invalid records go to the dead-letter topic unchanged, with reasons;
 3. ONE Redis round trip stores the previous batch's state and computes this batch's
    windows without storing them (idempotent: replayed offsets and repeated event_ids
    change nothing);
 4. encode the windows with the active model's manifest;
 5. ONE inference call (per bucket-sized chunk) for next action and churn;
 6. produce next-actions (one per new event) and churn-alerts (on crossings);
 7. while the next batch is polled and decoded, Kafka acknowledges this batch's records;
    once they are all acknowledged, the batch's state (with its alert state) is stored in
    the next batch's round trip, and only then are its offsets stored (auto-commit sends
    them; revocation and shutdown commit at once).

So a crash before the state is stored replays the batch against unchanged state and gives
the same predictions; a replayed event whose state was stored had its outputs delivered
and is not emitted again.

A Redis or Kafka outage pauses the partitions and retries; a new model version is loaded
and smoke-tested in the background and swapped in between batches.
"""

from __future__ import annotations

import functools
import gc
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from numpy.typing import NDArray

from consumer.segments.page import PageContext, SegmentsPage
from consumer.serve import failpoints, silence
from consumer.serve.emit import DeliveryFailed, Emitter, dead_letter
from consumer.serve.health import HealthState, serve_http
from consumer.serve.lag import LagTracker
from consumer.serve.metrics import Metrics
from consumer.serve.model_watch import ModelWatcher
from consumer.serve.outputs import Policies, Scored, decide_outputs
from consumer.serve.policy import (
    AlertPolicy,
    NextActionPolicy,
)
from consumer.serve.profiles import ProfileFollower
from consumer.serve.retry import RedisRetry
from consumer.serve.scoring import ModelRunner
from consumer.serve.source import EventDecoder, next_offsets, poll_batch, read_again_later
from consumer.serve.topics import dead_letter_limit, ensure_topics
from consumer.settings import Settings
from state.encoding import activity_codes, encode
from state.errors import Fenced, KafkaUnavailable
from state.store import (
    APPLIED,
    LATE_INSERTED,
    STATUS_NAMES,
    TOO_LATE,
    AppliedBatch,
    EventBatch,
    PendingWrite,
    StateStore,
)
from training.registry import Registry

log = logging.getLogger(__name__)

SWEEP_STEP_S = 86_400
# exactly-once: a newly assigned partition's committed offsets are asked for once a second
# while they are not stable, each time waiting longer (the first figure doubling up to the
# second), so that a slow broker is waited for and a stuck one holds up the loop briefly
CHECK_EVERY_S = 1.0
CHECK_TIMEOUT_S = (0.25, 4.0)
DELIVERY_RETRY_S = (0.5, 30.0)  # the first wait before a batch whose delivery failed is sent again, and the most


@dataclass
class BatchReport:
    records: int = 0
    valid: int = 0
    invalid: int = 0
    predictions: int = 0
    alerts: int = 0
    silences: int = 0


def settle_heap() -> None:
    """Put what is alive now (the libraries, the model) out of the cyclic collector's reach.
    A full collection walks every tracked object: with TensorFlow and a model loaded, 180-230
    ms, and the stream's own objects start one now and then (once in 30 s at 5,700 events/s);
    a stall that long at a rate near capacity builds a backlog that takes seconds to work
    off. Frozen, a full collection took 1 ms. Frozen objects are still freed by reference
    counting; what the previous model left in cycles is collected here first, at each swap."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def finite_rows(proba: NDArray[np.floating[Any]], risk: NDArray[np.floating[Any]]) -> NDArray[np.bool_]:
    """Per row, whether every probability and the risk are finite (an empty batch included)."""
    risk_finite = np.isfinite(risk).reshape(len(risk), -1) if len(risk) else np.zeros((0, 1), bool)
    return np.asarray(np.isfinite(proba).all(axis=1) & risk_finite.all(axis=1))


class Scorer:
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.health = HealthState()
        self.stop_requested = threading.Event()
        self.decoder = EventDecoder(settings.max_event_bytes, settings.state.max_future_seconds)
        self.registry = Registry(settings.registry)
        self.watcher = ModelWatcher(self.registry, self.metrics, settings.model)
        self.runner: ModelRunner | None = None
        self.store: StateStore | None = None
        self.consumer: Consumer | None = None
        self.emitter: Emitter | None = None
        self._assigned: set[tuple[str, int]] = set()
        # exactly-once: events partitions assigned but paused until their rollback check ran
        self._unchecked: set[int] = set()
        self._check_at, self._check_timeout_s = 0.0, CHECK_TIMEOUT_S[0]
        self._assignments = 0  # exactly-once assignments so far: a check that spans one starts over
        self._clock: dict[int, int] = {}  # events partition -> its event-time clock
        self._clock_by_events: dict[int, tuple[int, float]] = {}  # -> (clock, monotonic time) at its last event
        self.lag = LagTracker(self.metrics, self.health, settings.topics.events)
        # the last batch: outputs acknowledged, state not yet stored, offsets not yet stored
        self._pending: tuple[PendingWrite | None, list[Message]] | None = None
        self.http: Any = None
        self.profiles: ProfileFollower | None = None
        self._abandoned = False  # stopped mid-batch during an outage: store and commit nothing more
        self._in_hand: list[Message] = []  # the batch being processed (not yet pending)
        self._dlq_limit = 0  # the most a dead letter may take, read from the DLQ topic at start
        self._delivery_retry_s = DELIVERY_RETRY_S[0]
        self._lost = False  # partitions were lost (not revoked): what is pending or in hand is void
        self._held_back: dict[int, int] = {}  # events partition -> first offset read again (paging)
        self._with_redis = RedisRetry(self.metrics, self.health, self._keep_membership, self._resume)

    # -- set-up ---------------------------------------------------------------------------
    def _open(self) -> None:
        s = self.settings
        ensure_topics(s)
        self._dlq_limit = dead_letter_limit(s)
        self.runner = self.watcher.load_current()
        self._set_model(self.runner)
        self.store = self._new_store()
        self.watcher.window_limit = self.store.capacity
        try:
            self.store.client.ping()
        except (redis.AuthenticationError, redis.exceptions.NoPermissionError):
            raise  # configuration, not an outage: stop with one line rather than wait forever
        except redis.RedisError as exc:
            log.error("Redis unavailable at start (%s): the first batch waits for it", exc)
        self.emitter = Emitter(
            s.kafka_config(),
            on_wait=self._keep_membership,
            transactional_id=s.transactional_id() if s.exactly_once else None,
            transaction_timeout_ms=s.transaction_timeout_ms,
        )
        self.consumer = Consumer(
            s.kafka_config(
                **{
                    "group.id": s.group_id,
                    # exactly-once: offsets are committed in each batch's transaction instead
                    "enable.auto.commit": not s.exactly_once,
                    "isolation.level": "read_committed",
                    "auto.commit.interval.ms": 1000,
                    "enable.auto.offset.store": False,
                    "auto.offset.reset": "earliest",
                    "partition.assignment.strategy": "cooperative-sticky",
                    "enable.partition.eof": False,
                    # a killed member's partitions move after 10 s, not librdkafka's 45 s
                    "session.timeout.ms": s.kafka.get("session.timeout.ms", "10000"),
                    # a member learns of a rebalance at its next heartbeat, and a cooperative one
                    # takes two: at librdkafka's 3 s a joining worker waited 6 s for its partitions
                    "heartbeat.interval.ms": s.kafka.get("heartbeat.interval.ms", "1000"),
                    # a fetch answered as soon as any record is there (librdkafka's 1 byte) comes
                    # back with a few records: under a steady stream the consumers fetched 572
                    # times/s at 8,900 events/s, and batches stayed small. Up to 10 ms for 64 KB
                    # makes fewer, bigger batches (fewer state round trips and produce requests):
                    # p99 286-400 ms against 481-730 in alternating runs at that rate
                    "fetch.min.bytes": s.kafka.get("fetch.min.bytes", "65536"),
                    "fetch.wait.max.ms": s.kafka.get("fetch.wait.max.ms", "10"),
                }
            )
        )
        self.consumer.subscribe(
            [s.topics.events],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self.watcher.start()
        self.profiles = ProfileFollower(s, self._new_store(), self.metrics)  # own connection, own thread
        self.profiles.start()

    def _new_store(self) -> StateStore:
        s = self.settings
        assert self.runner is not None
        client = redis.Redis.from_url(s.redis_url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=30)
        return StateStore(
            client,
            s.state.key_prefix,
            max(s.state.window, self.runner.spec.window),  # a longer model window needs a rebuild
            s.state.lateness_seconds,
            s.state.retention_days * 86_400,
            silence.marks_for(s.silence.marks_days, self.runner.horizon_days) if s.silence.enabled else (),
            keeps_undo=s.exactly_once,
            max_due=s.silence.max_due,
        )

    def _set_model(self, runner: ModelRunner) -> None:
        self.runner = runner
        self.metrics.model_info.clear()
        self.metrics.model_info.labels(runner.version).set(1)
        self.health.model_version = runner.version
        outputs = self.settings.outputs
        self.policy = AlertPolicy(
            outputs.churn_alert_threshold if outputs.churn_alert_threshold is not None else runner.alert_threshold,
            outputs.churn_recovery_threshold
            if outputs.churn_recovery_threshold is not None
            else runner.recovery_threshold,
            outputs.churn_cooldown_seconds,
        )
        self.next_action_policy = NextActionPolicy(
            outputs.top_k,
            outputs.next_action_min_probability,
            outputs.next_action_min_interval_seconds,
            outputs.next_action_quiet_after_alert_seconds,
        )
        self.policies = Policies(self.policy, self.next_action_policy, tuple(runner.spec.vocabulary),
                                 activity_codes(list(runner.spec.vocabulary)), runner.version, outputs.top_k)
        settle_heap()
        log.info("serving model %s (%s; %s)", runner.version, self.policy.name, self.next_action_policy.name)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # librdkafka keeps a partition's pause across a lost assignment; one paused while the
        # batch waited (e.g. on a restarting broker) would come back paused and never fetch
        consumer.resume(partitions)
        events = [p for p in partitions if p.topic == self.settings.topics.events]
        if self.settings.exactly_once and events:
            # the rollback check reads the committed offsets, which wait on a dead member's open
            # transaction until the broker aborts it (up to its timeout): a callback must not
            # block that long (audit B1), so the partitions stay paused until the loop has checked
            consumer.incremental_assign(partitions)
            consumer.pause(events)
            self._unchecked |= {p.partition for p in events}
            self._assignments += 1
            self._check_at, self._check_timeout_s = 0.0, CHECK_TIMEOUT_S[0]
        self._assigned |= {(p.topic, p.partition) for p in partitions}
        self._assignment_changed()

    def _roll_back_uncommitted(self) -> None:
        """Before fetching from a newly assigned partition (exactly-once): undo the state a
        previous owner stored for a batch whose transaction never committed (its outputs were
        aborted, so it is replayed whole). A partition whose committed offset is not stable yet
        (a dead member's transaction still open) stays paused and is tried again shortly."""
        assert self.consumer is not None and self.store is not None
        if not self._unchecked or time.monotonic() < self._check_at:
            return
        topic, store, generation = self.settings.topics.events, self.store, self._assignments
        waiting = [TopicPartition(topic, p) for p in sorted(self._unchecked)]
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
            self._unchecked.discard(tp.partition)
            self.consumer.resume([tp])
        if self._unchecked:
            if failure is not None and self._check_timeout_s == CHECK_TIMEOUT_S[0]:
                log.warning("partitions %s wait for their committed offsets (%s): a previous owner's "
                            "transaction is likely open until the broker aborts it", sorted(self._unchecked), failure)
            self._check_timeout_s = min(self._check_timeout_s * 2, CHECK_TIMEOUT_S[1])
            self._check_at = time.monotonic() + CHECK_EVERY_S
        self.metrics.paused.labels("open_transaction").set(1 if self._unchecked else 0)

    def _hold_back(
        self, messages: list[Message], invalid: list[tuple[Message, str, str]]
    ) -> tuple[list[Message], list[tuple[Message, str, str]]]:
        """The records of partitions whose events were held back (`_read_in_pages`) from the first
        held one on: neither committed nor dead-lettered now; read again from there."""
        topic, held = self.settings.topics.events, self._held_back
        self._held_back = {}

        def later(m: Message) -> bool:
            partition, offset = m.partition(), m.offset()
            return (m.topic() == topic and partition in held and offset is not None
                    and offset >= held[partition])

        self._seek_back({(topic, p): offset for p, offset in held.items()})
        return [m for m in messages if not later(m)], [d for d in invalid if not later(d[0])]

    def _hold_unchecked(self, messages: list[Message]) -> list[Message]:
        """Records of a partition not checked yet (fetched before its pause took hold) are
        read again after the check, never scored before it."""
        assert self.consumer is not None
        topic = self.settings.topics.events
        kept: list[Message] = []
        first: dict[int, Message] = {}
        for m in messages:
            partition = m.partition()
            if m.topic() == topic and partition is not None and partition in self._unchecked:
                first.setdefault(partition, m)
            else:
                kept.append(m)
        for m in first.values():
            read_again_later(self.consumer, m)
        return kept

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # whatever stays pending is stored later; a new owner of these partitions replays it
        # against either state consistently (the write is idempotent)
        if not self._abandoned:
            stored = self._flush_pending_unless_failed(attempts=3)
            if not stored and self.settings.exactly_once and not self._lost:
                # its outputs sit in the open transaction; carrying on would commit them with the
                # next batch while the partitions' new owner replays them: stop, let it abort
                raise StopServing("exactly-once: a revoked batch could not be stored")
            if stored and not self.settings.exactly_once:
                self._commit_now()
        self._assigned -= {(p.topic, p.partition) for p in partitions}
        self._forget_clocks(partitions)
        self._assignment_changed()

    def _forget_clocks(self, partitions: list[TopicPartition]) -> None:
        for p in partitions:
            if p.topic == self.settings.topics.events:
                self._unchecked.discard(p.partition)
                if self.store is not None:
                    self.store.claims.pop(p.partition, None)
                self._clock.pop(p.partition, None)
                self._clock_by_events.pop(p.partition, None)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # their new owner may already have moved on from the committed offsets: storing the
        # pending batch now could put back older state, and (exactly-once) its outputs would
        # commit a second time. The loop drops it and replays what is still ours.
        self._lost = True
        self._assigned -= {(p.topic, p.partition) for p in partitions}
        self._forget_clocks(partitions)
        self._assignment_changed()

    def _assignment_changed(self) -> None:
        events = sum(1 for topic, _ in self._assigned if topic == self.settings.topics.events)
        self.metrics.assigned.set(events)
        self.health.assigned = events
        self.lag.clear()
        log.info("assigned %d partitions of %s", events, self.settings.topics.events)

    def _commit_now(self) -> None:
        assert self.consumer is not None
        try:
            self.consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                self.metrics.kafka_errors.labels("commit").inc()
                log.warning("commit failed: %s", exc)

    def _page_context(self) -> PageContext | None:
        runner = self.runner
        if runner is None:
            return None
        return PageContext(tuple(runner.spec.vocabulary), self.policy.alert_threshold, runner.version)

    def _keep_membership(self) -> None:
        """While a batch waits on Kafka or Redis: stop fetching, but keep serving group callbacks."""
        if self.consumer is None:  # a sweep has no consumer
            return
        if self.stop_requested.is_set():
            raise StopServing("stop requested while a batch waited on Kafka or Redis")
        self.health.beat()
        assignment = self.consumer.assignment()
        if assignment:
            self.consumer.pause(assignment)
        read_again_later(self.consumer, self.consumer.poll(0))
        # a wait is when ops most need to see the lag grow, and a paused consumer's fetches no
        # longer bring the high watermarks: ask the broker
        self.lag.update(self.consumer, self._assigned, from_broker=True)

    def _resume(self) -> None:
        assert self.consumer is not None
        topic = self.settings.topics.events
        assignment = [tp for tp in self.consumer.assignment()
                      if not (tp.topic == topic and tp.partition in self._unchecked)]
        if assignment:
            self.consumer.resume(assignment)

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> None:
        s = self.settings
        # the endpoint first: a port in use stops the scorer before it loads a model and joins
        # the group, and /readyz says "no model loaded" meanwhile
        page_client = redis.Redis.from_url(s.redis_url, socket_timeout=30)
        page = SegmentsPage(page_client, s.state.key_prefix, self._page_context)
        self.http = serve_http(s.metrics_host, s.metrics_port, self.metrics.registry, self.health, page.routes(),
                               s.segments_token)
        log.info("serving /metrics /healthz /readyz /segments on %s:%d", s.metrics_host, s.metrics_port)
        try:
            self._open()
            while not self.stop_requested.is_set():
                try:
                    self.step()
                except DeliveryFailed as exc:
                    self._send_again_after(exc)
                except PartitionsLost:
                    self._replay_after_loss()
                except Fenced as exc:
                    # paused (GC, a frozen VM) past its session: another member owns the partitions
                    log.warning("%s: this member was replaced while it was paused", exc)
                    self._replay_after_loss()
        except StopServing as exc:
            # waiting for the outage to end would hold the stop for as long as it lasts
            self._abandoned = True
            log.warning("stopping without storing the last batch (%s): the partitions' next owner replays it", exc)
        except BaseException:
            self._abandoned = True  # whatever failed, the batch in hand is not known to be delivered
            raise
        finally:
            self.close()

    def step(self) -> BatchReport:
        """One batch through all stages."""
        assert self.consumer is not None and self.runner is not None
        self.health.beat()
        self._roll_back_uncommitted()
        swapped = self.watcher.take()
        if swapped is not None:
            self._set_model(swapped)
            self.metrics.reloads.labels("loaded").inc()
        timers = self.metrics.stage_timers
        started = time.perf_counter()
        batch = self.settings.batch
        messages = poll_batch(self.consumer, batch.max_batch, batch.max_wait_ms, batch.min_batch)
        timers["poll"].observe(time.perf_counter() - started)
        self.lag.update(self.consumer, self._assigned)
        if not messages:
            self._flush_pending()
            return self._advance_idle_clocks()
        report = self.process(messages)
        self.health.progressed()
        self.metrics.last_progress.set(time.time())
        return report

    def _advance_idle_clocks(self) -> BatchReport:
        """Quiet partitions still progress: their silences are scored as wall time passes."""
        report = BatchReport()
        moves = self._idle_clocks() if self.settings.silence.enabled else {}
        if moves:
            self._pending = (self._score(EventBatch.empty(), [], report, moves), [])
        return report

    def process(self, messages: list[Message]) -> BatchReport:
        assert self.emitter is not None and self.store is not None and self.runner is not None
        s, timers = self.settings, self.metrics.stage_timers
        # a revocation served while the batch gathered (MIN_BATCH > 1) leaves records of
        # partitions that are no longer ours: their new owner scores them
        messages = [m for m in messages if (m.topic(), m.partition()) in self._assigned]
        if self._unchecked:
            messages = self._hold_unchecked(messages)
        self._in_hand = messages
        self.metrics.batch_size.observe(len(messages))
        report = BatchReport(records=len(messages))

        if not self.decoder.tag_key:  # Redis may have been down at start
            self.decoder.tag_key = self._with_redis(self.store.tag_key)
        t = time.perf_counter()
        decoded = self.decoder.decode(messages)
        self.metrics.events.inc(len(messages))
        for error in decoded.errors:
            self.metrics.kafka_errors.labels("consume").inc()
            log.warning("consume error: %s", error)
        report.invalid = len(decoded.invalid)
        report.valid = len(decoded.events)
        timers["decode"].observe(time.perf_counter() - t)

        write = self._score(decoded.events, decoded.event_ids, report) if len(decoded.events) else None
        if write is None:
            self._flush_pending()
        if self._held_back:
            messages, decoded.invalid = self._hold_back(messages, decoded.invalid)
        # after the previous batch was committed, so that (exactly-once) its transaction holds
        # its own dead letters only
        for msg, reason, detail in decoded.invalid:
            if (msg.topic(), msg.partition()) not in self._assigned:
                continue  # revoked while the batch was scored: the new owner dead-letters it
            self.emitter.send(s.topics.dlq, *dead_letter(msg, reason, detail, self._dlq_limit))
            self.metrics.invalid.labels(reason).inc()
        stamped = decoded.kafka_ts[decoded.kafka_ts > 0]
        self.metrics.latency.observe_many(np.maximum(0.0, (time.time() * 1000 - stamped) / 1000.0))
        # acknowledged while the next batch is polled and decoded; its state is stored with
        # the next batch's state round trip, once the acks are in
        self._pending = (write, messages)
        self._in_hand = []
        return report

    def _send_again_after(self, failure: DeliveryFailed) -> None:
        """A record of the pending batch or of the batch in hand was refused: commit neither.
        Seek back to their first offsets, so that both are scored and sent again (their state
        was not stored: the same predictions), after a wait that doubles while it keeps
        failing; /readyz fails meanwhile. A dead letter that no longer fits is cut anew to
        the DLQ topic's current limit."""
        assert self.consumer is not None and self.emitter is not None
        self.metrics.kafka_errors.labels("delivery").inc()
        self.health.paused_reason = "output delivery"
        self.metrics.paused.labels("kafka").set(1)
        first = self._drop_uncommitted()
        log.error("%s: nothing of the last batches is committed; sending them again in %.1fs",
                  failure, self._delivery_retry_s)
        deadline = time.monotonic() + self._delivery_retry_s
        while time.monotonic() < deadline:
            self._keep_membership()
            time.sleep(0.05)
        self._delivery_retry_s = min(2 * self._delivery_retry_s, DELIVERY_RETRY_S[1])
        self._seek_back(first)
        self._dlq_limit = dead_letter_limit(self.settings)
        self._resume()

    def _replay_after_loss(self) -> None:
        """Partitions were lost while a batch was pending or in hand: drop both (neither state
        nor offsets stored; exactly-once: the transaction aborted) and score again from their
        first offsets on the partitions that are still ours."""
        first = self._drop_uncommitted()
        self._seek_back(first)
        log.warning("partitions lost: the uncommitted batches are dropped and replayed on the %d partitions still "
                    "assigned", len({tp for tp in first if tp in self._assigned}))

    def _drop_uncommitted(self) -> dict[tuple[str, int], int]:
        """Forget the pending batch and the batch in hand, after what was sent is settled (the
        open transaction aborted); returns each partition's first offset among them."""
        assert self.emitter is not None
        unsent = (self._pending[1] if self._pending is not None else []) + self._in_hand
        self._pending, self._in_hand, self._lost, self._held_back = None, [], False, {}
        if not self.emitter.recover():
            log.warning("the producer cannot go on after a fatal error: starting a new one")
            self.emitter = Emitter(
                self.settings.kafka_config(),
                on_wait=self._keep_membership,
                transactional_id=self.settings.transactional_id() if self.settings.exactly_once else None,
                transaction_timeout_ms=self.settings.transaction_timeout_ms,
            )
        first: dict[tuple[str, int], int] = {}
        for msg in unsent:
            topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
            if topic is not None and partition is not None and offset is not None and offset >= 0:
                first[topic, partition] = min(offset, first.get((topic, partition), offset))
        return first

    def _seek_back(self, first: dict[tuple[str, int], int]) -> None:
        assert self.consumer is not None
        for (topic, partition), offset in first.items():
            if (topic, partition) in self._assigned:
                self.consumer.seek(TopicPartition(topic, partition, offset))

    def _abandon_if_lost(self) -> None:
        """After a wait that may have served a lost assignment: void what is uncommitted."""
        if self._lost:
            if self._pending is None and not self._in_hand:
                self._lost = False
                return
            raise PartitionsLost()

    def _flush_pending_unless_failed(self, attempts: int) -> bool:
        """`_flush_pending` from a callback or at shutdown: a failed delivery leaves the batch
        unstored and uncommitted (False), and stays latched for the loop to send it again."""
        try:
            return self._flush_pending(attempts)
        except DeliveryFailed as exc:
            log.error("%s: the last batch is neither stored nor committed", exc)
            return False
        except Fenced as exc:
            log.warning("%s: the last batch is void", exc)
            self._lost = True  # as if its partitions were lost: the loop drops it and aborts
            return False

    def _flush_pending(self, attempts: int | None = None) -> bool:
        """Store the last batch's state, then its offsets. With `attempts`, give up after that
        many Redis failures (in callbacks and at shutdown) and keep it pending."""
        if self._pending is None:
            return True
        assert self.store is not None
        self._await_acks(keep_membership=attempts is None)
        if attempts is None:
            self._abandon_if_lost()
        if self._pending is None:  # a revocation served while waiting stored it
            return True
        write, messages = self._pending
        if write is not None:
            store = self.store
            try:
                self._with_redis(lambda: store.write(write), attempts)
            except redis.RedisError:
                log.warning("the last batch's state stays pending: Redis unavailable")
                return False
        self._offsets_stored_after(messages)
        return True

    def _await_acks(self, keep_membership: bool = True) -> None:
        """Until Kafka acknowledged every record produced so far (the previous batch's outputs)."""
        assert self.emitter is not None
        t = time.perf_counter()
        self.emitter.wait_delivered(keep_membership=keep_membership)
        if keep_membership:
            self._resume()
        self.metrics.stage_timers["produce"].observe(time.perf_counter() - t)

    def _offsets_stored_after(self, messages: list[Message]) -> None:
        self._pending = None
        if self.health.paused_reason == "output delivery":
            log.info("outputs are delivered again, resuming")
            self.health.paused_reason = None
            self.metrics.paused.labels("kafka").set(0)
            self._delivery_retry_s = DELIVERY_RETRY_S[0]
        t = time.perf_counter()
        if self.settings.exactly_once and self.consumer is not None:
            self._commit_transaction(messages)
        else:
            self._store_offsets(messages)
        self.metrics.stage_timers["commit"].observe(time.perf_counter() - t)

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
        except KafkaUnavailable:
            self.metrics.kafka_errors.labels("commit").inc()
            log.error("transaction aborted: stopping, so the partitions' next owner rolls the batch back")
            self.stop_requested.set()
            raise

    def _score(
        self,
        events: EventBatch,
        event_ids: list[str],
        report: BatchReport,
        clocks: dict[int, int] | None = None,
    ) -> PendingWrite:
        """Score the batch's events and the silences its clock moves make due; returns the state
        write to store once the outputs are acknowledged. `clocks`: move partitions' clocks at
        least that far (idle partitions, sweeps)."""
        assert self.emitter is not None and self.store is not None and self.runner is not None
        timers, runner = self.metrics.stage_timers, self.runner
        store = self.store
        pending = self._pending
        if pending is not None:
            self._await_acks()  # may serve a revocation, which stores the pending batch itself
        self._abandon_if_lost()
        pending = pending if pending is not None and self._pending is pending else None
        if len(events) and not self._owned_rows(events).all():
            # revoked while the acks were awaited: those partitions' events are their new owner's
            owned = np.flatnonzero(self._owned_rows(events))
            events, event_ids = events.take(owned), [event_ids[i] for i in owned.tolist()]
        before = pending[0] if pending is not None else None
        if before is not None:
            failpoints.hit("acknowledged_before_stored")  # where a paused member's late write comes from
        t = time.perf_counter()
        # one round trip: store the previous batch (its outputs are acknowledged), read this one
        applied, write = self._with_redis(lambda: store.preview(events, before, clocks))
        timers["state"].observe(time.perf_counter() - t)
        if pending is not None and self._pending is pending:
            self._offsets_stored_after(pending[1])
        if len(applied.deferred):
            events, event_ids, applied, write = self._read_in_pages(applied, events, event_ids, clocks)
        moved = int(applied.moved.sum())
        if moved:
            self.metrics.partition_changes.inc(moved)
            log.warning("%d events of customers whose previous event came from another partition: key the "
                        "events topic by customer_id (murmur2, as Java clients do)", moved)
        counts = np.bincount(applied.status, minlength=len(STATUS_NAMES))
        for status, name in enumerate(STATUS_NAMES):
            if counts[status]:
                self.metrics.state.labels(name).inc(int(counts[status]))
        if applied.behind_state.any():
            self._report_offsets_behind_state(applied, events)
        self._clocks_moved(applied, events)

        t = time.perf_counter()
        raw, has_window = applied.windows(events, runner.spec.window, runner.spec.level)
        # a replay was stored, so its outputs were acknowledged: it is not emitted again
        emit = np.flatnonzero(np.isin(applied.status, (APPLIED, LATE_INSERTED, TOO_LATE)) & has_window)
        inputs = {k: v[emit] for k, v in encode(raw, runner.spec).items()}
        quiet = silence.fired(applied, events, store.silence_marks, raw, runner.spec.level)
        report.silences = len(quiet)
        if len(quiet):
            self.metrics.silence_scored.inc(len(quiet))
            quiet_inputs = encode(quiet.raw, runner.spec)
            inputs = {k: np.concatenate([v, quiet_inputs[k]]) for k, v in inputs.items()}
        timers["encode"].observe(time.perf_counter() - t)

        t = time.perf_counter()
        proba_all, risk_all = runner.infer(inputs)  # events and silences in one call
        finite = finite_rows(proba_all, risk_all)
        if not finite.all():
            emit, quiet, inputs, proba_all, risk_all = self._without_non_finite(finite, emit, quiet, inputs,
                                                                                proba_all, risk_all)
        n_events = len(emit)
        event_inputs = {k: v[:n_events] for k, v in inputs.items()} if len(quiet) else inputs
        steps = self.settings.outputs.steps
        forecast = runner.forecast(event_inputs, proba_all[:n_events], steps) if steps else None
        timers["infer"].observe(time.perf_counter() - t)

        t = time.perf_counter()
        self._emit(Scored(applied, events, event_ids, emit, quiet, proba_all, risk_all, forecast), write, report)
        timers["produce"].observe(time.perf_counter() - t)
        return write

    def _without_non_finite(
        self,
        finite: NDArray[np.bool_],
        emit: NDArray[np.int64],
        quiet: silence.Silences,
        inputs: dict[str, NDArray[Any]],
        proba: NDArray[np.float32],
        risk: NDArray[np.float32],
    ) -> tuple[NDArray[np.int64], silence.Silences, dict[str, NDArray[Any]], NDArray[np.float32], NDArray[np.float32]]:
        """A model that passed its smoke test may still answer NaN on some input: those rows get
        no output and no alert decision (JSON would carry `null`), and are counted."""
        assert self.runner is not None
        n_events = len(emit)
        self.metrics.non_finite.inc(int((~finite).sum()))
        log.error("model %s answered NaN or infinity for %d of %d rows: no output for them",
                  self.runner.version, int((~finite).sum()), len(finite))
        quiet = silence.take_rows(quiet, np.flatnonzero(finite[n_events:]))
        emit = emit[finite[:n_events]]
        return emit, quiet, {k: v[finite] for k, v in inputs.items()}, proba[finite], risk[finite]

    def _emit(self, scored: Scored, write: PendingWrite, report: BatchReport) -> None:
        """Produce what the policies let through; the new alert, cap and latest-prediction
        state goes into the batch's state write."""
        assert self.emitter is not None
        out = decide_outputs(scored, self.policies)
        topics = self.settings.topics
        for reason, held in out.suppressed.items():
            self.metrics.suppressed.labels(reason).inc(held)
        self.emitter.send_many(topics.next_actions, out.next_action_keys, out.next_action_values)
        self.emitter.send_many(topics.churn_alerts, out.alert_keys, out.alert_values)
        self.metrics.predictions.inc(len(out.next_action_values))
        for (kind, trigger), count in out.alerts_by.items():
            self.metrics.alerts.labels(kind, trigger).inc(count)
        report.predictions, report.alerts = len(out.next_action_values), len(out.alert_values)
        if out.updates is not None:
            write.set_updates(out.updates)

    def _read_in_pages(
        self, applied: AppliedBatch, events: EventBatch, event_ids: list[str], clocks: dict[int, int] | None
    ) -> tuple[EventBatch, list[str], AppliedBatch, PendingWrite]:
        """More silences came due on some partitions than one read takes (a clock jump after a
        long quiet spell). Their events wait: read again later from the first one held back,
        while the clock moves by pages up to them (or, when the jump lies among the events
        themselves, the later half waits, as often as needed)."""
        assert self.store is not None
        store, moves, stuck = self.store, dict(clocks or {}), set()
        while unsplit := [p for p in applied.deferred.tolist() if p not in stuck]:
            c0 = dict(zip(applied.clocks["partition"].tolist(), applied.clocks["c0"].tolist(), strict=True))
            keep = np.ones(len(events), dtype=bool)
            for partition in unsplit:
                rows = np.flatnonzero(events.partition == partition)
                first_ts = int(events.ts[rows].min())
                if first_ts - 1 > c0.get(partition, 0):
                    held = rows
                    moves[partition] = first_ts - 1
                elif len(rows) > 1:
                    held = rows[len(rows) // 2 :]
                else:  # one event one second past the clock: the script takes that second whole
                    stuck.add(partition)
                    log.error("partition %d: deferred on a move of one second; silences past %d may be missed",
                              partition, self.store.max_due)
                    continue
                keep[held] = False
                log.info("partition %d: more silences due than one read takes; %d events wait while its clock "
                         "moves by pages", partition, len(held))
                offset = int(events.offset[held].min())
                self._held_back[partition] = min(offset, self._held_back.get(partition, offset))
            kept = np.flatnonzero(keep)
            events, event_ids = events.take(kept), [event_ids[i] for i in kept.tolist()]
            applied, write = self._with_redis(functools.partial(store.preview, events, None, moves))
        return events, event_ids, applied, write

    def _report_offsets_behind_state(self, applied: AppliedBatch, events: EventBatch) -> None:
        behind = applied.behind_state
        for partition in np.unique(events.partition[behind]).tolist():
            rows = behind & (events.partition == partition)
            self.metrics.offsets_behind_state.labels(str(partition)).inc(int(rows.sum()))
            log.warning("partition %d: %d events at offsets %d..%d are behind what the state holds for their "
                        "customers and not in their windows: a re-created topic or an offset reset? They are "
                        "applied as new events (docs/serving.md, 'Offsets behind the state')", partition,
                        int(rows.sum()), int(events.offset[rows].min()), int(events.offset[rows].max()))

    def _clocks_moved(self, applied: AppliedBatch, events: EventBatch) -> None:
        """Remember each partition's clock, and when events last moved it (idle advance)."""
        now = time.monotonic()
        with_events = set(np.unique(events.partition).tolist())
        for partition, c1 in zip(applied.clocks["partition"].tolist(), applied.clocks["c1"].tolist(), strict=True):
            self._clock[partition] = c1
            if partition in with_events:
                self._clock_by_events[partition] = (c1, now)

    def _idle_clocks(self) -> dict[int, int]:
        """Clock moves for assigned partitions that had no events for `idle_after_seconds`: the
        clock advances by the idle time beyond that, never past the wall clock."""
        idle_after = self.settings.silence.idle_after_seconds
        now, wall = time.monotonic(), int(time.time())
        moves = {}
        for topic, partition in self._assigned:
            if topic != self.settings.topics.events or partition not in self._clock_by_events:
                continue
            clock, moved_at = self._clock_by_events[partition]
            target = min(clock + int(now - moved_at - idle_after), wall)
            if target > self._clock.get(partition, 0):
                moves[partition] = target
        return moves

    def _owned_rows(self, events: EventBatch) -> NDArray[np.bool_]:
        topic = self.settings.topics.events
        owned = np.array(sorted(p for t, p in self._assigned if t == topic), dtype=np.int64)
        return np.isin(events.partition, owned)

    def _store_offsets(self, messages: list[Message]) -> None:
        assert self.consumer is not None
        self.lag.note_record_times(messages)
        offsets = [tp for tp in next_offsets(messages) if (tp.topic, tp.partition) in self._assigned]
        if offsets:
            try:
                self.consumer.store_offsets(offsets=offsets)
            except KafkaException as exc:  # revoked meanwhile: the new owner replays, state is idempotent
                self.metrics.kafka_errors.labels("store_offsets").inc()
                log.warning("storing offsets failed: %s", exc)

    def sweep(self, as_of: int, on_step: Callable[[int, BatchReport], None] | None = None) -> BatchReport:
        """Move every partition's stored clock to `as_of` (a day at a time, so a long backfill
        stays in bounded calls), scoring and alerting the silences it passes, as serving does.
        For backfills: while no scorer serves these partitions, or one that is behind."""
        s = self.settings
        self.runner = self.watcher.load_current()
        self._set_model(self.runner)
        self.store = self._new_store()
        self.emitter = Emitter(s.kafka_config())
        total = BatchReport()
        store = self.store
        clocks = self._with_redis(store.clocks)
        try:
            while moves := {p: min(c + SWEEP_STEP_S, as_of) for p, c in clocks.items() if c < as_of}:
                report = BatchReport()
                write = self._score(EventBatch.empty(), [], report, moves)
                self.emitter.wait_delivered(keep_membership=False)
                self._with_redis(functools.partial(store.write, write))
                # where the write left them: a step that found more due silences than one call
                # takes stops short, and the next step goes on from there
                clocks = self._with_redis(store.clocks)
                total.silences += report.silences
                total.alerts += report.alerts
                if on_step is not None:
                    on_step(min(clocks.values()), total)
        finally:
            self.emitter.close()
        return total

    def close(self) -> None:
        """Finish: deliver what was sent, commit the stored offsets, leave the group."""
        self.watcher.stop()
        if self.profiles is not None:
            self.profiles.stop()
        if self.emitter is not None:
            self.emitter.close()
        if self.consumer is not None:
            stored = not self._abandoned and self._flush_pending_unless_failed(attempts=5)
            if stored and not self.settings.exactly_once:
                self._commit_now()
            self.consumer.close()
            self.consumer = None
        if self.http is not None:
            self.http.shutdown()
            self.http = None
        log.info("scorer stopped")


class PartitionsLost(Exception):
    """The group took partitions away without a revocation: the uncommitted batches are void."""


class StopServing(Exception):
    """A stop was requested while a batch waited on an outage: the batch stays uncommitted."""


class Stoppable(Protocol):
    stop_requested: threading.Event


def install_signal_handlers(scorer: Stoppable) -> None:
    def handle(signum: int, _frame: object) -> None:
        log.info("signal %d: finishing the batch, committing, leaving the group", signum)
        scorer.stop_requested.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
