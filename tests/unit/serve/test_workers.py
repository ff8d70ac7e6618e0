"""Several workers behind one endpoint: how many, the merged metrics, and that the tools which
read the endpoint (watch, bench) see the workers' sum. The processes themselves run in
tests/integration/test_workers.py."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from consumer.bench.harness import free_port
from consumer.net import Response
from consumer.ops.watch import scrape
from consumer.serve.health import serve_routes
from consumer.serve.metrics import Metrics
from consumer.serve.workers import Worker, merged_metrics, usable_cores, worker_count
from consumer.settings import load_settings
from state.errors import ConfigError


def worker_metrics(events: int, infer_seconds: float, latency_seconds: float) -> str:
    metrics = Metrics()
    metrics.events.inc(events)
    metrics.state.labels("applied").inc(events)
    metrics.stage_timers["infer"].observe(infer_seconds)
    metrics.latency.observe_many(np.array([latency_seconds]))
    metrics.assigned.set(2)
    return generate_latest(metrics.registry).decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_merged_metrics_label_each_sample_with_its_worker_and_report_the_silent_one() -> None:
    silent = Worker(2, 0)
    silent.restarts = 3
    text = merged_metrics(
        [(Worker(0, 0), worker_metrics(5, 0.2, 0.01)), (Worker(1, 0), worker_metrics(7, 0.3, 0.5)), (silent, None)]
    ).decode()
    got = samples(text)
    assert got[("seqscore_events_total", (("worker", "0"),))] == 5
    assert got[("seqscore_events_total", (("worker", "1"),))] == 7
    assert got[("seqscore_state_events_total", (("status", "applied"), ("worker", "1")))] == 7
    assert got[("seqscore_assigned_partitions", (("worker", "0"),))] == 2
    assert got[("seqscore_worker_up", (("worker", "2"),))] == 0
    assert got[("seqscore_worker_up", (("worker", "0"),))] == 1
    assert got[("seqscore_worker_restarts_total", (("worker", "2"),))] == 3
    assert not any(labels == () for (name, labels) in got if name.startswith("seqscore_events")), "no unlabelled copy"
    assert text.count("# TYPE seqscore_events_total counter") == 1, "one family per metric, not one per worker"


def test_watch_and_bench_read_the_sum_of_the_workers() -> None:
    text = merged_metrics([(Worker(0, 0), worker_metrics(5, 0.2, 0.01)), (Worker(1, 0), worker_metrics(7, 0.3, 0.5))])
    port = free_port()
    server = serve_routes("127.0.0.1", port, {"/metrics": lambda _q: Response(200, text, "text/plain")})
    try:
        seen = scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        server.shutdown()
    assert seen.counters["seqscore_events_total"] == 12
    assert seen.counters["seqscore_state_events_total{status=applied}"] == 12
    assert seen.stage_seconds["infer"] == pytest.approx(0.5)
    latency = dict(seen.buckets["seqscore_event_to_output_seconds"])
    assert latency[0.025] == 1 and latency[0.5] == 2, "cumulative buckets summed per bound"


def test_zero_workers_means_one_per_usable_core_but_never_more_than_the_partitions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SEQSCORE_WORKERS", "0")
    monkeypatch.setenv("SEQSCORE_TOPICS__EVENTS_PARTITIONS", "1")
    assert worker_count(load_settings()) == 1
    monkeypatch.setenv("SEQSCORE_TOPICS__EVENTS_PARTITIONS", "64")
    assert worker_count(load_settings()) == usable_cores() >= 1
    monkeypatch.setenv("SEQSCORE_WORKERS", "3")
    assert worker_count(load_settings()) == 3


def test_more_workers_than_partitions_is_refused_naming_both_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQSCORE_WORKERS", "5")
    monkeypatch.setenv("SEQSCORE_TOPICS__EVENTS_PARTITIONS", "4")
    with pytest.raises(ConfigError, match=r"SEQSCORE_WORKERS \(5\) must not exceed SEQSCORE_TOPICS__EVENTS_PARTITIONS"):
        load_settings()
    monkeypatch.setenv("SEQSCORE_WORKERS", "-1")
    with pytest.raises(ConfigError, match="invalid setting SEQSCORE_WORKERS"):
        load_settings()
