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

import gc
import logging
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import redis
from confluent_kafka import Consumer, Message
from numpy.typing import NDArray

from consumer.clients import redis_client
from consumer.segments.page import PageContext, SegmentsPage
from consumer.serve import silence
from consumer.serve.checkpoint import Checkpoint, CommitAborted, PartitionsLost, StopServing
from consumer.serve.clocks import Paging, PartitionClocks
from consumer.serve.emit import DeliveryFailed, Emitter, dead_letter
from consumer.serve.health import HealthState, serve_http
from consumer.serve.lag import LagTracker
from consumer.serve.membership import Membership
from consumer.serve.metrics import Metrics, count_state_reply
from consumer.serve.model_watch import ModelWatcher
from consumer.serve.outputs import Policies, Scored, decide_outputs
from consumer.serve.policy import (
    AlertPolicy,
    NextActionPolicy,
)
from consumer.serve.profiles import ProfileFollower
from consumer.serve.retry import RedisRetry
from consumer.serve.scoring import ModelRunner
from consumer.serve.source import EventDecoder, poll_batch
from consumer.serve.topics import dead_letter_limit, ensure_topics
from consumer.settings import Settings
from state.encoding import activity_codes, encode
from state.errors import Fenced
from state.store import (
    APPLIED,
    LATE_INSERTED,
    TOO_LATE,
    AppliedBatch,
    EventBatch,
    PendingWrite,
    StateStore,
)
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

    @property
    def emitter(self) -> Emitter | None:
        """The producer, owned by the checkpoint (which starts a new one after a fatal error)."""
        return self.checkpoint.emitter

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

    def _new_store(self) -> StateStore:
        s = self.settings
        assert self.runner is not None
        client = redis_client(s, "serve")
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

    def _page_context(self) -> PageContext | None:
        runner = self.runner
        if runner is None:
            return None
        return PageContext(tuple(runner.spec.vocabulary), self.policy.alert_threshold, runner.version)

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> None:
        s = self.settings
        # the endpoint first: a port in use stops the scorer before it loads a model and joins
        # the group, and /readyz says "no model loaded" meanwhile
        page_client = redis_client(s, "page")
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
                except CommitAborted:
                    self._replay_after_abort()
                except Fenced as exc:
                    # paused (GC, a frozen VM) past its session: another member owns the partitions
                    log.warning("%s: this member was replaced while it was paused", exc)
                    self._replay_after_loss()
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
        assert self.consumer is not None and self.runner is not None
        self.health.beat()
        self.membership.roll_back_uncommitted()
        swapped = self.watcher.take()
        if swapped is not None:
            self._set_model(swapped)
            self.metrics.reloads.labels("loaded").inc()
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
        assert self.emitter is not None and self.store is not None and self.runner is not None
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

    def _send_again_after(self, failure: DeliveryFailed) -> None:
        """A record of the pending batch or of the batch in hand was refused: commit neither.
        Seek back to their first offsets, so that both are scored and sent again (their state
        was not stored: the same predictions), after a wait that doubles while it keeps
        failing; /readyz fails meanwhile. A dead letter that no longer fits is cut anew to
        the DLQ topic's current limit."""
        wait = self.checkpoint.delivery_failed()
        first = self._drop_uncommitted()
        log.error("%s: nothing of the last batches is committed; sending them again in %.1fs", failure, wait)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            self.membership.keep()
            time.sleep(0.05)
        self.membership.seek_back(first)
        self._dlq_limit = dead_letter_limit(self.settings)
        self.membership.resume()

    def _replay_after_loss(self) -> None:
        """Partitions were lost while a batch was pending or in hand: drop both (neither state
        nor offsets stored; exactly-once: the transaction aborted) and score again from their
        first offsets on the partitions that are still ours."""
        first = self._drop_uncommitted()
        self.membership.seek_back(first)
        log.warning("partitions lost: the uncommitted batches are dropped and replayed on the %d partitions still "
                    "assigned", len({tp for tp in first if tp in self.membership.assigned}))

    def _replay_after_abort(self) -> None:
        """A transaction of ours aborted after its batch's state was stored (see checkpoint.py):
        check every partition again, so that its state is rolled back before it is read again,
        then replay what is uncommitted."""
        self.membership.check_again()
        self._replay_after_loss()

    def _drop_uncommitted(self) -> dict[tuple[str, int], int]:
        first = self.checkpoint.drop_uncommitted(self.membership.keep)
        self.paging.held_back = {}
        return first

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
        """Encode the windows of the events to emit and of the due silences; one inference call."""
        assert self.store is not None and self.runner is not None
        timers, runner = self.metrics.stage_timers, self.runner
        t = time.perf_counter()
        raw, has_window = applied.windows(events, runner.spec.window, runner.spec.level)
        # a replay was stored, so its outputs were acknowledged: it is not emitted again
        emit = np.flatnonzero(np.isin(applied.status, (APPLIED, LATE_INSERTED, TOO_LATE)) & has_window)
        inputs = {k: v[emit] for k, v in encode(raw, runner.spec).items()}
        quiet = silence.fired(applied, events, self.store.silence_marks, raw, runner.spec.level)
        report.silences = len(quiet)
        if len(quiet):
            self.metrics.silence_scored.inc(len(quiet))
            quiet_inputs = encode(quiet.raw, runner.spec)
            inputs = {k: np.concatenate([v, quiet_inputs[k]]) for k, v in inputs.items()}
        timers["encode"].observe(time.perf_counter() - t)

        t = time.perf_counter()
        proba, risk = runner.infer(inputs)  # events and silences in one call
        finite = finite_rows(proba, risk)
        if not finite.all():
            emit, quiet, inputs, proba, risk = self._without_non_finite(finite, emit, quiet, inputs, proba, risk)
        n_events = len(emit)
        event_inputs = {k: v[:n_events] for k, v in inputs.items()} if len(quiet) else inputs
        steps = self.settings.outputs.steps
        forecast = runner.forecast(event_inputs, proba[:n_events], steps) if steps else None
        timers["infer"].observe(time.perf_counter() - t)
        return Scored(applied, events, event_ids, emit, quiet, proba, risk, forecast)

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

    def open_offline(self) -> tuple[StateStore, Emitter]:
        """The model, the state and a producer, without joining the group (backfills)."""
        self._set_model(self.watcher.load_current())
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
