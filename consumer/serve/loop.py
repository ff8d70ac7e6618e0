"""`seqscore serve`: the scoring loop of one consumer-group member.

Per batch (at-least-once, spelled out), with the module that does each step:
 1. poll what is ready, up to max_batch records (an idle poll waits up to max_wait_ms): source.py;
 2. decode + validate; invalid records go to the dead-letter topic unchanged, with reasons:
    source.py, emit.py;
 3. ONE Redis round trip stores the previous batch's state and computes this batch's
    windows without storing them (idempotent: replayed offsets and repeated event_ids
    change nothing): state/store.py;
 4. encode the windows with the active model's manifest, and
 5. ONE inference call (per bucket-sized chunk) for next action and churn: inference.py,
    scoring.py;
 6. decide and produce next-actions (one per new event) and churn-alerts (on crossings):
    outputs.py, emit.py;
 7. while the next batch is polled and decoded, Kafka acknowledges this batch's records;
    once they are all acknowledged, the batch's state (with its alert state) is stored in
    the next batch's round trip, and only then are its offsets stored (auto-commit sends
    them; revocation and shutdown commit at once): checkpoint.py states that order.

So a crash before the state is stored replays the batch against unchanged state and gives
the same predictions; a replayed event whose state was stored had its outputs delivered
and is not emitted again.

Rebalances are membership.py's; a batch that cannot be completed is replayed by
recovery.py. A Redis or Kafka outage pauses the partitions and retries (retry.py); a new
model version is loaded and smoke-tested in the background and swapped in between batches
(model_watch.py, serving_model.py).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import redis
from confluent_kafka import Consumer, Message

from consumer.clients import redis_client, state_store
from consumer.segments.page import SegmentsPage
from consumer.serve.checkpoint import Checkpoint, CommitAborted, PartitionsLost, StopServing
from consumer.serve.clocks import Paging, PartitionClocks
from consumer.serve.emit import DeliveryFailed, Emitter, dead_letter
from consumer.serve.health import HealthState, serve_http
from consumer.serve.inference import score_batch
from consumer.serve.lag import LagTracker
from consumer.serve.membership import Membership
from consumer.serve.metrics import Metrics, count_state_reply
from consumer.serve.model_watch import ModelWatcher
from consumer.serve.outputs import Scored, decide_outputs
from consumer.serve.profiles import ProfileFollower
from consumer.serve.recovery import Recovery
from consumer.serve.retry import RedisRetry
from consumer.serve.serving_model import ServingModel
from consumer.serve.source import EventDecoder, poll_batch
from consumer.serve.topics import dead_letter_limit, ensure_topics
from consumer.settings import Settings
from state.backend import Store
from state.errors import Fenced
from state.store import AppliedBatch, EventBatch, PendingWrite
from training.registry import Registry

log = logging.getLogger(__name__)


@dataclass
class BatchReport:
    records: int = 0
    valid: int = 0
    invalid: int = 0
    predictions: int = 0
    alerts: int = 0
    silences: int = 0


class Scorer:
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.health = HealthState()
        self.stop_requested = threading.Event()
        self.decoder = EventDecoder(settings.max_event_bytes, settings.state.max_future_seconds)
        self.registry = Registry(settings.registry)
        self.watcher = ModelWatcher(self.registry, self.metrics, settings.model)
        self.model = ServingModel(self.watcher, settings.outputs, self.metrics, self.health)
        self.store: Store | None = None
        self.consumer: Consumer | None = None
        self.clocks = PartitionClocks(settings.topics.events)
        self.paging = Paging(settings.topics.events)
        self.lag = LagTracker(self.metrics, self.health, settings.topics.events)
        self.http: Any = None
        self.profiles: ProfileFollower | None = None
        self._dlq_limit = 0  # the most a dead letter may take, read from the DLQ topic at start
        self.membership = Membership(settings, self.metrics, self.health, self.lag, self.stop_requested,
                                     self.clocks.forget)
        self.with_redis = RedisRetry(self.metrics, self.health, self.membership.keep, self.membership.resume)
        self.checkpoint = Checkpoint(settings, self.metrics, self.health, self.lag, self.with_redis,
                                     self.membership.assigned, self.membership.resume, self.stop_requested)
        self.membership.bind(self.checkpoint, self.with_redis)
        self.recovery = Recovery(self.checkpoint, self.membership, self.paging, self._read_dlq_limit)

    @property
    def emitter(self) -> Emitter | None:
        """The producer, owned by the checkpoint (which starts a new one after a fatal error)."""
        return self.checkpoint.emitter

    # -- set-up ---------------------------------------------------------------------------
    def _open(self) -> None:
        s = self.settings
        ensure_topics(s)
        self._read_dlq_limit()
        self.model.serve(self.watcher.load_current())
        self.store = self._new_store()
        self.watcher.window_limit = self.store.capacity
        try:
            self.store.client.ping()
        except (redis.AuthenticationError, redis.exceptions.NoPermissionError):
            raise  # configuration, not an outage: stop with one line rather than wait forever
        except redis.RedisError as exc:
            log.error("Redis unavailable at start (%s): the first batch waits for it", exc)
        emitter = Emitter(
            s.kafka_config(),
            on_wait=self.membership.keep,
            transactional_id=s.transactional_id() if s.exactly_once else None,
            transaction_timeout_ms=s.transaction_timeout_ms,
        )
        self.consumer = Consumer(s.scoring_consumer_config())
        self.checkpoint.open(self.consumer, self.store, emitter)
        self.membership.open(self.consumer, self.store)
        self.watcher.start()
        self.profiles = ProfileFollower(s, self._new_store(), self.metrics)  # own connection, own thread
        self.profiles.start()

    def _new_store(self) -> Store:
        runner = self.model.runner
        assert runner is not None
        return state_store(self.settings, "serve", runner.spec.window, runner.horizon_days, serving=True,
                           on_unconfirmed=self.metrics.unconfirmed_writes.inc)

    def _read_dlq_limit(self) -> None:
        self._dlq_limit = dead_letter_limit(self.settings)

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> None:
        s = self.settings
        # the endpoint first: a port in use stops the scorer before it loads a model and joins
        # the group, and /readyz says "no model loaded" meanwhile
        page_client = redis_client(s, "page")
        page = SegmentsPage(page_client, s.state.key_prefix, self.model.page_context)
        self.http = serve_http(s.metrics_host, s.metrics_port, self.metrics.registry, self.health, page.routes(),
                               s.segments_token)
        log.info("serving /metrics /healthz /readyz /segments on %s:%d", s.metrics_host, s.metrics_port)
        try:
            self._open()
            while not self.stop_requested.is_set():
                try:
                    self.step()
                except DeliveryFailed as exc:
                    self.recovery.send_again_after(exc)
                except PartitionsLost:
                    self.recovery.replay_after_loss()
                except CommitAborted:
                    self.recovery.replay_after_abort()
                except Fenced as exc:
                    # paused (GC, a frozen VM) past its session: another member owns the partitions
                    log.warning("%s: this member was replaced while it was paused", exc)
                    self.recovery.replay_after_loss()
        except StopServing as exc:
            # waiting for the outage to end would hold the stop for as long as it lasts
            self.checkpoint.abandoned = True
            log.warning("stopping without storing the last batch (%s): the partitions' next owner replays it", exc)
        except BaseException:
            self.checkpoint.abandoned = True  # whatever failed, the batch in hand is not known to be delivered
            raise
        finally:
            self.close()

    def step(self) -> BatchReport:
        """One batch through all stages."""
        assert self.consumer is not None
        self.health.beat()
        self.membership.roll_back_uncommitted()
        self.model.swap_if_new()
        timers = self.metrics.stage_timers
        started = time.perf_counter()
        batch = self.settings.batch
        messages = poll_batch(self.consumer, batch.max_batch, batch.max_wait_ms, batch.min_batch)
        timers["poll"].observe(time.perf_counter() - started)
        self.lag.update(self.consumer, self.membership.assigned)
        if not messages:
            self.checkpoint.flush()
            return self._advance_idle_clocks()
        report = self.process(messages)
        self.health.progressed()
        self.metrics.last_progress.set(time.time())
        return report

    def _advance_idle_clocks(self) -> BatchReport:
        """Quiet partitions still progress: their silences are scored as wall time passes."""
        report = BatchReport()
        silence = self.settings.silence
        moves = self.clocks.idle_moves(self.membership.assigned, silence.idle_after_seconds) if silence.enabled else {}
        if moves:
            self.checkpoint.hold(self._score(EventBatch.empty(), [], report, moves), [])
        return report

    def process(self, messages: list[Message]) -> BatchReport:
        assert self.emitter is not None and self.store is not None
        s, timers = self.settings, self.metrics.stage_timers
        messages = self.membership.owned(messages)
        self.checkpoint.in_hand = messages
        self.metrics.batch_size.observe(len(messages))
        report = BatchReport(records=len(messages))

        if not self.decoder.tag_key:  # Redis may have been down at start
            self.decoder.tag_key = self.with_redis(self.store.tag_key)
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
            self.checkpoint.flush()
        if self.paging.held_back:
            messages, decoded.invalid = self.paging.hold_back(messages, decoded.invalid, self.membership.seek_back)
        # after the previous batch was committed, so that (exactly-once) its transaction holds
        # its own dead letters only
        for msg, reason, detail in decoded.invalid:
            if (msg.topic(), msg.partition()) not in self.membership.assigned:
                continue  # revoked while the batch was scored: the new owner dead-letters it
            self.emitter.send(s.topics.dlq, *dead_letter(msg, reason, detail, self._dlq_limit))
            self.metrics.invalid.labels(reason).inc()
        stamped = decoded.kafka_ts[decoded.kafka_ts > 0]
        self.metrics.latency.observe_many(np.maximum(0.0, (time.time() * 1000 - stamped) / 1000.0))
        # acknowledged while the next batch is polled and decoded; its state is stored with
        # the next batch's state round trip, once the acks are in
        self.checkpoint.hold(write, messages)
        return report

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
        events, event_ids, applied, write = self._read_state(events, event_ids, clocks)
        scored = self._infer(applied, events, event_ids, report)
        t = time.perf_counter()
        self._emit(scored, write, report)
        self.metrics.stage_timers["produce"].observe(time.perf_counter() - t)
        return write

    def _read_state(
        self, events: EventBatch, event_ids: list[str], clocks: dict[int, int] | None
    ) -> tuple[EventBatch, list[str], AppliedBatch, PendingWrite]:
        """One round trip: store the previous batch, once its outputs are acknowledged, and
        read this one's windows (its own write, computed, is returned for later)."""
        assert self.store is not None
        store = self.store
        pending = self.checkpoint.acknowledged_previous()
        if len(events) and not self.membership.owned_rows(events).all():
            # revoked while the acks were awaited: those partitions' events are their new owner's
            owned = np.flatnonzero(self.membership.owned_rows(events))
            events, event_ids = events.take(owned), [event_ids[i] for i in owned.tolist()]
        before = pending[0] if pending is not None else None
        t = time.perf_counter()
        applied, write = self.with_redis(lambda: store.preview(events, before, clocks))
        self.metrics.stage_timers["state"].observe(time.perf_counter() - t)
        self.checkpoint.stored(pending)
        if len(applied.deferred):
            events, event_ids, applied, write = self.paging.read_in_pages(store, self.with_redis,
                                                                          (applied, events, event_ids), clocks)
        count_state_reply(self.metrics, applied, events)
        self.clocks.moved(applied, events)
        return events, event_ids, applied, write

    def _infer(self, applied: AppliedBatch, events: EventBatch, event_ids: list[str], report: BatchReport) -> Scored:
        assert self.store is not None and self.model.runner is not None
        scored = score_batch(self.model.runner, applied, events, event_ids, self.store.silence_marks,
                             self.settings.outputs.steps, self.metrics)
        report.silences = len(scored.quiet)
        return scored

    def _emit(self, scored: Scored, write: PendingWrite, report: BatchReport) -> None:
        """Produce what the policies let through; the new alert, cap and latest-prediction
        state goes into the batch's state write."""
        assert self.emitter is not None and self.model.policies is not None
        out = decide_outputs(scored, self.model.policies)
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

    def open_offline(self) -> tuple[Store, Emitter]:
        """The model, the state and a producer, without joining the group (backfills)."""
        self.model.serve(self.watcher.load_current())
        self.store = self._new_store()
        emitter = Emitter(self.settings.kafka_config())
        self.checkpoint.open(None, self.store, emitter)
        return self.store, emitter

    def score_clock_moves(self, moves: dict[int, int], report: BatchReport) -> PendingWrite:
        """Score and send the silences that moving these partitions' clocks makes due."""
        return self._score(EventBatch.empty(), [], report, moves)

    def close(self) -> None:
        """Finish: deliver what was sent, commit the stored offsets, leave the group."""
        self.watcher.stop()
        if self.profiles is not None:
            self.profiles.stop()
        if self.emitter is not None:
            self.emitter.close()
        if self.consumer is not None:
            stored = not self.checkpoint.abandoned and self.checkpoint.flush_unless_failed(attempts=5)
            if stored and not self.settings.exactly_once:
                self.checkpoint.commit_now()
            self.consumer.close()
            self.consumer = None
        if self.http is not None:
            self.http.shutdown()
            self.http = None
        log.info("scorer stopped")


class Stoppable(Protocol):
    stop_requested: threading.Event


def install_signal_handlers(scorer: Stoppable) -> None:
    def handle(signum: int, _frame: object) -> None:
        log.info("signal %d: finishing the batch, committing, leaving the group", signum)
        scorer.stop_requested.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
