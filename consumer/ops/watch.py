"""`seqscore watch`: a live terminal view of a running scorer.

Once a second it scrapes the scorer's /metrics and prints throughput, batch sizes,
event-to-output latency percentiles (from histogram deltas, interpolated within buckets
the way PromQL's histogram_quantile does) and lag, followed by the predictions and churn
alerts that appeared on the output topics since the last line.
"""

from __future__ import annotations

import sys
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, TextIO

import orjson
from confluent_kafka import OFFSET_END, Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families


@dataclass
class Scrape:
    """The figures the view needs from one /metrics scrape."""

    at: float
    counters: dict[str, float] = field(default_factory=dict)
    buckets: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # name -> [(le, cumulative)]
    sums: dict[str, float] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)  # seqscore_stage_seconds_sum by stage
    lag: float = 0.0
    model: str = "-"


def scrape(url: str, timeout: float = 5.0) -> Scrape:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    result = Scrape(at=time.monotonic())
    buckets: dict[str, dict[float, float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, value = sample.name, sample.value
            labels = {k: v for k, v in sample.labels.items() if k != "worker"}  # several workers: their sum
            if name == "seqscore_stage_seconds_sum":
                stage = labels["stage"]
                result.stage_seconds[stage] = result.stage_seconds.get(stage, 0.0) + value
            elif name.endswith("_bucket") and not labels.get("stage"):
                series, le = buckets[name.removesuffix("_bucket")], float(labels["le"])
                series[le] = series.get(le, 0.0) + value
            elif name.endswith("_sum") and not labels.get("stage"):
                key = name.removesuffix("_sum")
                result.sums[key] = result.sums.get(key, 0.0) + value
            elif name == "seqscore_consumer_lag_messages":
                result.lag += value
            elif name == "seqscore_model_info" and value == 1:
                result.model = labels["version"]
            elif name.endswith("_total") or name.endswith("_count"):
                key = name + ("{" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}" if labels else "")
                result.counters[key] = result.counters.get(key, 0.0) + value
    result.buckets = {name: sorted(series.items()) for name, series in buckets.items()}
    return result


def quantile(q: float, before: list[tuple[float, float]], after: list[tuple[float, float]]) -> float | None:
    """The q-quantile of the observations between two scrapes of a cumulative histogram;
    inf when it lies beyond the highest finite bucket."""
    earlier = dict(before)
    delta = [(le, count - earlier.get(le, 0.0)) for le, count in after]
    total = delta[-1][1] if delta else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower_le, lower_count = 0.0, 0.0
    for le, count in delta:
        if count >= rank:
            if le == float("inf"):
                return le
            width = count - lower_count
            return lower_le + (le - lower_le) * ((rank - lower_count) / width if width else 1.0)
        lower_le, lower_count = le, count
    return lower_le


def _delta(a: Scrape, b: Scrape, key: str) -> float:
    return b.counters.get(key, 0.0) - a.counters.get(key, 0.0)


def summary_line(a: Scrape, b: Scrape) -> str:
    seconds = max(b.at - a.at, 1e-9)
    events = _delta(a, b, "seqscore_events_total")
    predictions = _delta(a, b, "seqscore_predictions_total")
    invalid = sum(_delta(a, b, k) for k in b.counters if k.startswith("seqscore_events_invalid_total"))
    alerts = sum(_delta(a, b, k) for k in b.counters if k.startswith("seqscore_churn_alerts_total"))
    batches = _delta(a, b, "seqscore_batch_size_count")
    records = b.sums.get("seqscore_batch_size", 0.0) - a.sums.get("seqscore_batch_size", 0.0)
    latency = b.buckets.get("seqscore_event_to_output_seconds", [])
    before = a.buckets.get("seqscore_event_to_output_seconds", [])
    pcts = [quantile(q, before, latency) for q in (0.5, 0.95, 0.99)]
    top = max((le for le, _ in latency if le != float("inf")), default=0.0)

    def ms(p: float | None) -> str:
        return "-" if p is None else f">{top * 1000:.0f}" if p == float("inf") else f"{p * 1000:.0f}"

    shown = "/".join(ms(p) for p in pcts)
    return (
        f"{events / seconds:8,.0f} ev/s  {predictions / seconds:8,.0f} pred/s  "
        f"batch {records / batches if batches else 0:6.1f}  latency p50/p95/p99 {shown} ms  "
        f"lag {b.lag:,.0f}  dlq {invalid:,.0f}  alerts {alerts:,.0f}  model {b.model}"
    )


class OutputTail:
    """Reads what appears on the output topics from now on (no group, no commits)."""

    def __init__(self, kafka_config: dict[str, Any], topics: list[str]) -> None:
        self.consumer = Consumer({**kafka_config, "group.id": "seqscore-watch", "enable.auto.commit": False})
        assignment = []
        for topic in topics:
            metadata = self.consumer.list_topics(topic, timeout=10).topics[topic]
            assignment += [TopicPartition(topic, p, OFFSET_END) for p in metadata.partitions]
        self.consumer.assign(assignment)

    def drain(self, limit: int = 10_000) -> list[tuple[str, dict[str, object]]]:
        out = []
        for msg in self.consumer.consume(limit, 0.05):
            value = msg.value()
            if msg.error() is None and value:
                out.append((str(msg.topic()), orjson.loads(value)))
        return out

    def close(self) -> None:
        self.consumer.close()


def describe(topic: str, value: dict[str, object], alerts_topic: str) -> str:
    if topic == alerts_topic:
        return (
            f"  ALERT {value['kind']:<8} {value['customer_id']}  churn risk {value['churn_risk']:.2f} "
            f"(threshold {value['threshold']:.2f})"
        )
    actions = value["actions"]
    assert isinstance(actions, list)
    top = ", ".join(f"{a['activity']} {a['probability']:.0%}" for a in actions)
    return f"  next  {value['customer_id']}: {top}  churn risk {value['churn_risk']:.2f}"


class AlertFlips:
    """Alert and recovery messages per customer over a run: how often a customer flips is what a
    marketing team on the other end of the topic feels."""

    def __init__(self) -> None:
        self.per_customer: dict[str, list[int]] = {}

    def add(self, value: dict[str, object]) -> None:
        counts = self.per_customer.setdefault(str(value["customer_id"]), [0, 0])
        counts[0 if value["kind"] == "alert" else 1] += 1

    def summary(self) -> dict[str, float]:
        alerts = sum(c[0] for c in self.per_customer.values())
        recoveries = sum(c[1] for c in self.per_customer.values())
        customers = len(self.per_customer)
        return {
            "alerts": alerts,
            "recoveries": recoveries,
            "customers": customers,
            "per_customer": round((alerts + recoveries) / customers, 3) if customers else 0.0,
            "customers_over_2": sum(1 for c in self.per_customer.values() if sum(c) > 2),
        }

    def line(self) -> str:
        s = self.summary()
        return (
            f"churn alerts: {s['alerts']:,} alert and {s['recoveries']:,} recovery messages to {s['customers']:,} "
            f"customers ({s['per_customer']:.2f} per customer; {s['customers_over_2']:,} customers got more than 2)"
        )


def watch(
    metrics_url: str,
    kafka_config: dict[str, Any],
    next_topic: str,
    alerts_topic: str,
    seconds: float,
    out: TextIO = sys.stdout,
    samples_per_line: int = 2,
) -> Scrape:
    """Print the view every second for `seconds`; returns the last scrape."""
    tail = OutputTail(kafka_config, [next_topic, alerts_topic])
    flips = AlertFlips()
    first = last = scrape(metrics_url)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            time.sleep(max(0.0, 1.0 - (time.monotonic() - last.at)))
            now = scrape(metrics_url)
            print(summary_line(last, now), file=out)
            seen = tail.drain()
            for topic, value in seen:
                if topic == alerts_topic:
                    flips.add(value)
            alerts = [v for t, v in seen if t == alerts_topic][:samples_per_line]
            predictions = [v for t, v in seen if t == next_topic][:samples_per_line]
            for value in predictions:
                print(describe(next_topic, value, alerts_topic), file=out)
            for value in alerts:
                print(describe(alerts_topic, value, alerts_topic), file=out)
            out.flush()
            last = now
    finally:
        tail.close()
    print("-" * 100, file=out)
    print("over the whole run: " + summary_line(first, last), file=out)
    print(flips.line(), file=out)
    return last
