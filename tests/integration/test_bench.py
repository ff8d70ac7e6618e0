"""`seqscore bench` end to end at a tiny size: every figure is produced from real runs
(no target is asserted here: speed is reported by the command, never by timed tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

pytestmark = pytest.mark.slow


def test_bench_reports_every_figure_and_cleans_up(test_env: dict[str, str], tiny_registry: Path,
                                                  tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "consumer.cli", "bench", "--model", str(tiny_registry), "--events", "6000",
         "--customers", "300", "--latency-seconds", "3", "--warmup-seconds", "1", "--baseline-seconds", "2",
         "--rate", "400",
         "--instances", "2", "--exactly-once", "--repeat", "2", "--json", str(out)],
        env=os.environ | test_env | {"TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["throughput_eps"] > 0 and figures["baseline_eps"] > 0
    assert len(figures["throughput_runs_eps"]) == 2
    assert figures["speedup"] == pytest.approx(figures["throughput_eps"] / figures["baseline_eps"], rel=1e-2)
    latency = figures["latency_ms"]
    assert 0 <= latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    assert figures["latency_outputs"] > 0 and figures["offered_eps"] > 0
    warmup = figures["latency_warmup"]  # the first second's outputs, apart
    assert warmup["seconds"] == 1 and warmup["n"] > 0 and 0 <= warmup["p50"] <= warmup["max"]
    assert {"scorer", "broker", "redis", "load generator", "machine"} <= set(figures["latency_cpu_cores"])
    assert all(Path(plot).read_bytes()[:4] == b"\x89PNG" for plot in figures["plots"]) and figures["plots"]
    assert set(figures["infer_sps_by_batch"]) == {"1", "32", "256", "1024", "4096"}
    assert abs(sum(figures["stage_share"].values()) - 1) < 1e-3
    assert figures["redis_bytes_per_customer"] > 0 and figures["rss_mb"] > 0
    # 6,000 events of 300 customers: many windows are full at the tiny model's 12 events
    assert figures["redis_bytes_full_window"] > figures["redis_bytes_per_customer"]
    assert figures["instances"] == {"count": 2, "throughput_eps": figures["instances"]["throughput_eps"],
                                    "missing": 0, "duplicated": 0}
    eos = figures["exactly_once"]
    assert eos["throughput_eps"] > 0
    assert eos["ratio"] == pytest.approx(eos["throughput_eps"] / figures["throughput_eps"], rel=1e-2)
    assert figures["machine"]["seqscore"].startswith("0.") and figures["machine"]["librdkafka"]
    assert "throughput" in result.stdout and "exactly-once" in result.stdout and "targets" in result.stdout
    (run_id,) = [p.name for p in (tmp_path / "data" / "bench").iterdir()]
    admin = AdminClient({"bootstrap.servers": test_env["SEQSCORE_KAFKA_BOOTSTRAP"]})
    # every repeat's phases included: a repeated run has topics, a group and state of its own
    assert not [t for t in admin.list_topics(timeout=10).topics if t.startswith(f"bench-{run_id}")], "deleted"
