"""The benchmark's arithmetic: the steady-state window and stage shares, and the report."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from consumer.bench.cpu import CpuMeter, process_tree
from consumer.bench.plots import plot_latency
from consumer.bench.runner import TARGETS, steady_state, table
from consumer.ops.watch import Scrape
from state.errors import ConfigError


def sample(at: float, events: float, infer: float, state: float, poll: float) -> Scrape:
    return Scrape(at=at, counters={"seqscore_events_total": events},
                  stage_seconds={"infer": infer, "state": state, "poll": poll})


def test_steady_state_skips_start_up_and_tail_and_shares_exclude_polling() -> None:
    samples = [
        sample(0.0, 0, 0, 0, 0),
        sample(5.0, 0, 0, 0, 5.0),  # model load: nothing consumed yet
        sample(6.0, 100, 0.5, 0.1, 5.0),  # 10 % of 1000
        sample(7.0, 600, 1.0, 0.3, 5.0),
        sample(8.0, 960, 1.5, 0.5, 5.0),  # 96 %
        sample(20.0, 1000, 1.6, 0.5, 17.0),  # idle tail
    ]
    eps, shares = steady_state(samples, 1000)
    assert eps == pytest.approx((960 - 100) / 2.0)
    assert shares == {"infer": pytest.approx(1.0 / 1.4, abs=1e-4), "state": pytest.approx(0.4 / 1.4, abs=1e-4)}


def test_a_run_drained_within_one_scrape_is_measured_from_the_scrape_before() -> None:
    samples = [sample(0.0, 0, 0, 0, 1.0), sample(0.2, 10, 0.01, 0.01, 1.0), sample(0.4, 1000, 0.1, 0.1, 1.0)]
    eps, _ = steady_state(samples, 1000)
    assert eps == pytest.approx(990 / 0.2)
    with pytest.raises(ConfigError, match="more --events"):
        steady_state([sample(0.0, 1000, 0, 0, 0)], 1000)


def figures(**overrides: object) -> dict[str, object]:
    result: dict[str, object] = {
        "throughput_eps": 12_000.0, "throughput_runs_eps": [12_000.0], "baseline_eps": 200.0, "speedup": 60.0,
        "latency_ms": {"p50": 40.0, "p95": 90.0, "p99": 120.0, "max": 300.0}, "latency_outputs": 1000,
        "offered_eps": 6000.0, "latency_cpu_cores": {"scorer": 0.61, "broker": 0.55, "machine": 1.7},
        "stage_share": {"infer": 0.5, "state": 0.5}, "infer_device": "CPU",
        "infer_sps_by_batch": {"1": {"sps": 500.0, "ms_per_batch": 2.0}}, "redis_bytes_per_customer": 300.0,
        "redis_bytes_full_window": 968.0, "rss_mb": 900.0, "events": 1000, "customers": 100, "window": 50,
        "model_units": 64, "max_batch": 1024, "repeat": 1,
        "machine": {"cores": 2, "cpu": "x", "tensorflow": "2", "redis_server": "7", "librdkafka": "2"},
    }
    result.update(overrides)
    return result


def test_report_names_every_figure_and_judges_each_target() -> None:
    text = table(figures(instances={"count": 2, "throughput_eps": 9000.0, "missing": 0, "duplicated": 0}))
    assert "12,000 events/s" in text and "60.0x" in text and "p99 120" in text and "968 B" in text
    assert "2 instances" in text and "missing 0" in text
    assert "scorer 0.61  broker 0.55  cores; the machine 1.70 of 2 busy" in text
    assert "plots" not in text and "plots            a.png" in table(figures(plots=["a.png"]))
    assert "warm-up" not in text
    assert "inference (CPU, all thread(s))" in text
    assert "inference (CPU, 1 thread(s))" in table(figures(infer_threads=1))
    assert "one scorer with 1 worker(s)" in text and "one worker" not in text
    pool = table(figures(workers=2, one_worker={"throughput_eps": 8000.0, "ratio": 1.5}, rss_mb=1800.0))
    assert "one scorer with 2 worker(s)" in pool and "1,800 MB peak, 2 worker(s) together" in pool
    assert "one worker            8,000 events/s   (SEQSCORE_WORKERS=1; 2 workers drain 1.50x that)" in pool
    warm = table(figures(latency_warmup={"seconds": 5.0, "p50": 150.0, "p95": 1500.0, "p99": 1800.0, "max": 2000.0,
                                         "n": 20_000}))
    assert "the first 5s, apart from the above: p50 150  p99 1800  max 2000 ms (20,000 outputs)" in warm
    assert text.count("met    ") == len(TARGETS)
    slow = table(figures(throughput_eps=5000.0, speedup=20.0, latency_ms={"p50": 1, "p95": 2, "p99": 400, "max": 5},
                         redis_bytes_full_window=1100.0))
    assert slow.count("not met") == len(TARGETS)


def test_cpu_meter_counts_the_cores_a_process_used_and_leaves_out_unknown_ones() -> None:
    meter = CpuMeter({"me": os.getpid(), "gone": 2**22 + 1, "unknown": None}).start()
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:  # one core busy
        pass
    cores = meter.cores()
    assert set(cores) == {"me", "machine"}
    assert 0.5 < cores["me"] <= 1.2 and cores["machine"] >= cores["me"] - 0.1


def test_the_cpu_meter_adds_up_a_scorer_and_its_workers() -> None:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        tree = process_tree(os.getpid())
        assert tree[0] == os.getpid() and child.pid in tree
    finally:
        child.kill()
        child.wait(10)
    meter = CpuMeter({"me": os.getpid(), "me twice": [os.getpid(), os.getpid()]}).start()
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        pass
    cores = meter.cores()
    assert cores["me twice"] == pytest.approx(2 * cores["me"], abs=0.1), "one figure for the processes together"


def test_the_latency_plot_is_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    sent = np.sort(rng.uniform(0, 20, 2000))
    delays = rng.lognormal(4, 0.6, 2000)
    delays[sent < 2] *= 8  # a start-up burst
    path = tmp_path / "latency.png"
    plot_latency(sent, delays, 5000.0, path, warmup_s=3.0)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000


def test_the_warm_up_is_split_by_when_each_input_was_produced() -> None:
    from consumer.bench.runner import percentiles, split_warmup

    sent_s = np.array([0.0, 1.0, 4.99, 5.0, 6.0, 7.5])
    delays = np.array([900.0, 800.0, 700.0, 90.0, 80.0, 100.0])
    measured, warming = split_warmup(sent_s, delays, 5.0)
    assert measured.tolist() == [90.0, 80.0, 100.0] and warming.tolist() == [900.0, 800.0, 700.0]
    assert percentiles(measured)["max"] == 100.0 and percentiles(warming)["p50"] == 800.0
    assert np.isnan(percentiles(np.zeros(0))["p99"])  # a warm-up of 0 s has no outputs
    no_warmup, none = split_warmup(sent_s, delays, 0.0)
    assert len(no_warmup) == 6 and len(none) == 0


def test_a_stack_that_is_not_up_is_one_line_naming_each_service_before_any_training() -> None:
    from consumer.bench.runner import preflight
    from consumer.settings import load_settings
    from state.errors import SeqscoreError

    # port 1: nothing listens there, so both refuse at once
    settings = load_settings(kafka_bootstrap="127.0.0.1:1", redis_url="redis://:secret@127.0.0.1:1/0")
    with pytest.raises(SeqscoreError) as raised:
        preflight(settings, timeout_s=1.0)
    message = str(raised.value)
    assert "Kafka at 127.0.0.1:1 did not answer" in message and "Redis at redis://" in message
    assert "deploy/stack up" in message and "secret" not in message and "\n" not in message
