"""The scorer's metrics: a histogram observed per batch exposes what prometheus_client's own
histogram exposes for the same values."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from consumer.serve.metrics import BatchHistogram

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


def exposition(registry: CollectorRegistry) -> list[str]:
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


def test_a_batch_histogram_exposes_what_observing_each_value_would() -> None:
    rng = np.random.default_rng(3)
    batches = [rng.lognormal(-3, 1.5, n) for n in (0, 1, 500, 37)]
    batches.append(np.array([0.005, 0.01, 1.0, 2.0, 0.0]))  # on the bounds (le is inclusive) and past them
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    per_value = Histogram("latency_seconds", "help", buckets=BUCKETS, registry=theirs)
    per_batch = BatchHistogram("latency_seconds", "help", BUCKETS, ours)
    for values in batches:
        for value in values:
            per_value.observe(float(value))
        per_batch.observe_many(values)
    got, want = exposition(ours), exposition(theirs)
    assert [line for line in got if "_sum" not in line] == [line for line in want if "_sum" not in line]
    (got_sum,), (want_sum,) = ([float(line.split()[-1]) for line in lines if "_sum" in line] for lines in (got, want))
    assert got_sum == pytest.approx(want_sum, rel=1e-12), "the sum, to float rounding (added per batch)"


def test_a_metrics_port_in_use_is_one_clear_error_naming_the_setting() -> None:
    import socket

    from consumer.serve.health import serve_routes
    from state.errors import ConfigError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"SEQSCORE_METRICS_PORT: cannot listen on 127.0.0.1:{port}: .*in use"):
            serve_routes("127.0.0.1", port, {})
