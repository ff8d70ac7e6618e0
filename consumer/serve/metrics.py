"""Every metric of the scorer, declared once with its help text (Prometheus conventions:
`_total` counters, `_seconds` histograms, labels from small fixed sets, never customer ids).
A fresh CollectorRegistry can be injected, so tests and several scorers in one process
never share counters."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import numpy as np
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from consumer.serve.policy import SUPPRESS_REASONS
from state.events import InvalidReason
from state.store import STATUS_NAMES, AppliedBatch, EventBatch

log = logging.getLogger(__name__)

STAGES = ("poll", "decode", "state", "encode", "infer", "produce", "commit")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_BATCH_BUCKETS = (1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


class Metrics:
    # long on purpose: one declaration per metric, so the catalogue reads top to bottom in one place
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events = Counter("seqscore_events_total", "Input records consumed from the events topic.", registry=r)
        self.invalid = Counter(
            "seqscore_events_invalid_total", "Records sent to the dead-letter topic, by reason.", ["reason"], registry=r
        )
        self.state = Counter(
            "seqscore_state_events_total", "Valid events by what the state store did with them.", ["status"], registry=r
        )
        self.predictions = Counter("seqscore_predictions_total", "Next-action predictions produced.", registry=r)
        self.alerts = Counter(
            "seqscore_churn_alerts_total",
            "Churn alert messages produced, by kind and by what triggered the scoring (event, silence).",
            ["kind", "trigger"],
            registry=r,
        )
        self.silence_scored = Counter(
            "seqscore_silence_scored_total", "Silent customers scored as their silence crossed a mark.", registry=r
        )
        self.offsets_behind_state = Counter(
            "seqscore_offsets_behind_state_total",
            "Events at offsets the state already passed, not found in their windows (a re-created topic, "
            "offsets reset to a copy); applied as new events.",
            ["partition"],
            registry=r,
        )
        self.partition_changes = Counter(
            "seqscore_customer_partition_changes_total",
            "Events whose customer's previous event came from another partition (keyed by something "
            "else than customer_id, or partitions added): two members may overwrite each other's state.",
            registry=r,
        )
        self.non_finite = Counter(
            "seqscore_non_finite_outputs_total",
            "Rows the model answered with NaN or infinity: they get no output.",
            registry=r,
        )
        self.suppressed = Counter(
            "seqscore_next_actions_suppressed_total",
            "Next-action predictions a decision policy held back, by reason.",
            ["reason"],
            registry=r,
        )
        self.profiles = Counter(
            "seqscore_profile_updates_total", "Customer profile records applied.", ["kind"], registry=r
        )
        self.batch_size = Histogram(
            "seqscore_batch_size", "Records per polled batch.", buckets=_BATCH_BUCKETS, registry=r
        )
        self.stage = Histogram(
            "seqscore_stage_seconds",
            "Time per batch in each stage of the loop.",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.latency = BatchHistogram(
            "seqscore_event_to_output_seconds",
            "From the input record's Kafka timestamp to its outputs being produced.",
            _LATENCY_BUCKETS,
            r,
        )
        self.lag_messages = Gauge(
            "seqscore_consumer_lag_messages",
            "Messages behind the end of each assigned partition.",
            ["partition"],
            registry=r,
        )
        self.lag_seconds = Gauge(
            "seqscore_consumer_lag_seconds",
            "Age of the last processed record of each partition while it has lag.",
            ["partition"],
            registry=r,
        )
        self.model_info = Gauge("seqscore_model_info", "The serving model version (value 1).", ["version"], registry=r)
        self.reloads = Counter(
            "seqscore_model_reloads_total", "Model versions loaded or refused.", ["result"], registry=r
        )
        self.redis_errors = Counter("seqscore_redis_errors_total", "Failed Redis calls (each retried).", registry=r)
        self.unconfirmed_writes = Counter(
            "seqscore_state_unconfirmed_writes_total",
            "Redis Cluster: state writes (one per node and batch) that no replica confirmed in time; a failover "
            "of that master before it replicates them would lose them.",
            registry=r,
        )
        self.kafka_errors = Counter(
            "seqscore_kafka_errors_total", "Kafka client errors, by kind.", ["kind"], registry=r
        )
        self.paused = Gauge("seqscore_paused", "1 while consumption is paused, by reason.", ["reason"], registry=r)
        self.assigned = Gauge("seqscore_assigned_partitions", "Partitions assigned to this instance.", registry=r)
        self.last_progress = Gauge(
            "seqscore_last_progress_timestamp_seconds", "Unix time of the last committed batch.", registry=r
        )
        for invalid_reason in InvalidReason:
            self.invalid.labels(invalid_reason.value)
        for status in STATUS_NAMES:
            self.state.labels(status)
        for kind in ("alert", "recovery"):
            for trigger in ("event", "silence"):
                self.alerts.labels(kind, trigger)
        for reason in SUPPRESS_REASONS:
            self.suppressed.labels(reason)
        for result in ("loaded", "refused", "fallback", "unreadable"):
            self.reloads.labels(result)
        for reason in ("redis", "kafka", "open_transaction"):
            self.paused.labels(reason).set(0)
        self.stage_timers = {stage: self.stage.labels(stage) for stage in STAGES}


class BatchHistogram:
    """A Prometheus histogram observed a batch of values at a time. `Histogram.observe` is a
    Python call and two locked increments per value: for a per-event figure that was 3-4 % of a
    worker's CPU; here a batch is one `searchsorted` and one `bincount`."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...], registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = np.array([*buckets, np.inf])
        self._counts = np.zeros(len(self.bounds), np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()  # the HTTP thread collects while the loop observes
        registry.register(self)

    def observe_many(self, values: NDArray[np.float64]) -> None:
        if not len(values):
            return
        per_bucket = np.bincount(np.searchsorted(self.bounds, values, side="left"), minlength=len(self.bounds))
        with self._lock:
            self._counts += per_bucket
            self._sum += float(values.sum())

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            cumulative, total = np.cumsum(self._counts).tolist(), self._sum
        yield HistogramMetricFamily(
            self.name,
            self.documentation,
            buckets=[(floatToGoString(b), float(c)) for b, c in zip(self.bounds.tolist(), cumulative, strict=True)],
            sum_value=total,
        )


def count_state_reply(metrics: Metrics, applied: AppliedBatch, events: EventBatch) -> None:
    """What the state read found, per event: applied, replayed, repeated, late; and, logged,
    what an operator must act on (customers on two partitions, offsets behind the state)."""
    moved = int(applied.moved.sum())
    if moved:
        metrics.partition_changes.inc(moved)
        log.warning("%d events of customers whose previous event came from another partition: key the "
                    "events topic by customer_id (murmur2, as Java clients do)", moved)
    counts = np.bincount(applied.status, minlength=len(STATUS_NAMES))
    for status, name in enumerate(STATUS_NAMES):
        if counts[status]:
            metrics.state.labels(name).inc(int(counts[status]))
    behind = applied.behind_state
    for partition in np.unique(events.partition[behind]).tolist():
        rows = behind & (events.partition == partition)
        metrics.offsets_behind_state.labels(str(partition)).inc(int(rows.sum()))
        log.warning("partition %d: %d events at offsets %d..%d are behind what the state holds for their "
                    "customers and not in their windows: a re-created topic or an offset reset? They are "
                    "applied as new events (docs/serving.md, 'Offsets behind the state')", partition,
                    int(rows.sum()), int(events.offset[rows].min()), int(events.offset[rows].max()))
