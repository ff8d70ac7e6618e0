"""Streams a simulated history to a Kafka topic at a chosen rate, optionally with bad input.

Used by `seqscore simulate --kafka-topic`, the demo, the tests and the benchmarks.
Injected faults are deterministic for a seed: malformed values (each DLQ reason),
duplicates (the same record sent again) and out-of-order delivery (local swaps).
"""

from __future__ import annotations

import re
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import orjson
from confluent_kafka import Producer

from consumer.serve.emit import JAVA_PARTITIONER
from state.errors import KafkaUnavailable
from training.simulate import CHANNELS, SimulatedHistory

MALFORMED_KINDS = (
    "bad_json",
    "missing_field",
    "wrong_type",
    "bad_timestamp",
    "no_zone",
    "not_utf8",
    "too_large",
    "nested_attrs",
    "empty",
    "nan_attr",
    "not_object",
)


TICK_S = 0.002  # rate-limited sending wakes at most every 2 ms
# librdkafka sends one produce request per partition batch, each when its own linger runs out:
# at 7,500 events/s over 12 partitions, 5 ms (its default) made 1,623 requests/s and 20 ms 547,
# and the broker that serves them shares the bench's cores with the scorer (0.63 -> 0.38 of a
# core in the latency run). The linger counts in the measured latency (an input's timestamp is
# taken when it is handed to the producer), so this costs the figures up to 20 ms, never helps them.
LINGER_MS = 20


@dataclass
class StreamPlan:
    rate: float = 0.0  # events/s; 0 = as fast as possible
    malformed: float = 0.0
    duplicates: float = 0.0
    out_of_order: float = 0.0
    shift_to: int | None = None  # move event times so the last one lands here (epoch s)
    seed: int = 0


@dataclass
class StreamReport:
    sent: int = 0
    valid: int = 0
    malformed: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    seconds: float = 0.0


def event_values(history: SimulatedHistory, shift_to: int | None = None) -> Iterator[tuple[bytes, bytes]]:
    """(key, JSON value) of every event in time order."""
    shift = 0 if shift_to is None or not history.n_events else shift_to - int(history.event_ts.max())
    names, details = history.activity_names(), history.detail_names()
    customers = history.customer_ids[history.event_customer]
    stamps = np.char.add(np.datetime_as_string((history.event_ts + shift).astype("datetime64[s]"), unit="s"), "Z")
    channels = np.array(CHANNELS)[history.channel]
    for i, event_id in enumerate(history.event_ids()):
        attrs: dict[str, object] = {"channel": str(channels[i])}
        if history.amount[i] > 0:
            attrs["amount"] = float(history.amount[i])
        value = {
            "event_id": event_id,
            "customer_id": str(customers[i]),
            "activity": str(names[i]),
            "activity_detail": str(details[i]),
            "ts": str(stamps[i]),
            "attrs": attrs,
        }
        yield str(customers[i]).encode(), orjson.dumps(value)


def corrupt(value: bytes, kind: str) -> bytes:
    """A malformed variant of a valid event value, one per DLQ reason."""
    event = orjson.loads(value)
    if kind == "bad_json":
        return value[: len(value) // 2]
    if kind == "missing_field":
        event.pop("customer_id")
    elif kind == "wrong_type":
        event["activity"] = 7
    elif kind == "bad_timestamp":
        event["ts"] = "2021-02-30T25:61:00Z"
    elif kind == "no_zone":
        event["ts"] = re.sub(r"(Z|[+-]\d\d:?\d\d)$", "", event["ts"])
    elif kind == "not_utf8":
        return value.replace(b'"activity":"', b'"activity":"\xff\xfe', 1)
    elif kind == "too_large":
        event["padding"] = "x" * 70_000
    elif kind == "nested_attrs":
        event["attrs"] = {"channel": {"name": "web"}}
    elif kind == "empty":
        return b""
    elif kind == "nan_attr":
        return value.replace(b'"attrs":{', b'"attrs":{"score":NaN,', 1)
    elif kind == "not_object":
        return orjson.dumps([event])
    return orjson.dumps(event)


def plan_records(history: SimulatedHistory, plan: StreamPlan, report: StreamReport) -> list[tuple[bytes, bytes]]:
    """All records to send, in order, with the plan's faults applied."""
    rng = np.random.default_rng(plan.seed + 7919)
    records = list(event_values(history, plan.shift_to))
    n = len(records)
    for late in np.flatnonzero(rng.random(n) < plan.out_of_order).tolist():
        swap = min(n - 1, late + int(rng.integers(1, 20)))
        records[late], records[swap] = records[swap], records[late]
    out: list[tuple[bytes, bytes]] = []
    bad = rng.random(n) < plan.malformed
    dup = rng.random(n) < plan.duplicates
    kinds = rng.integers(0, len(MALFORMED_KINDS), size=n)
    for i, (key, value) in enumerate(records):
        if bad[i]:
            kind = MALFORMED_KINDS[kinds[i]]
            out.append((key, corrupt(value, kind)))
            report.malformed[kind] += 1
            continue
        out.append((key, value))
        report.valid += 1
        if dup[i]:
            out.append((key, value))
            report.duplicates += 1
    return out


def stream(
    history: SimulatedHistory,
    topic: str,
    producer_config: dict[str, object],
    plan: StreamPlan,
    progress: bool = True,
) -> StreamReport:
    """Produce the history to `topic` (key = customer_id) at `plan.rate`; flush before returning."""
    report = StreamReport()
    records = plan_records(history, plan, report)
    report.sent, report.seconds = send(records, topic, producer_config, plan.rate, progress)
    return report


def send(
    records: list[tuple[bytes, bytes]],
    topic: str,
    producer_config: dict[str, object],
    rate: float = 0.0,
    progress: bool = True,
    deadline_s: float | None = None,
) -> tuple[int, float]:
    """Produce (key, value) records at `rate` per second (0: as fast as possible), stopping
    early after `deadline_s`; flush, raise if any was not delivered. Returns (sent, seconds)."""
    producer = Producer({"linger.ms": LINGER_MS, "compression.type": "lz4", "acks": "all",
                         "partitioner": JAVA_PARTITIONER, **producer_config})
    errors: list[str] = []

    def on_delivery(err: object, _msg: object) -> None:
        if err is not None and not errors:
            errors.append(str(err))

    started = time.monotonic()
    last_note = started
    sent = 0
    for i, (key, value) in enumerate(records):
        if rate > 0:
            due = started + i / rate
            if (now := time.monotonic()) < due:
                # sleep, then send what fell due meanwhile: poll() with a timeout returns at
                # every delivery report, so waiting in it spins a core at a few thousand/s
                producer.poll(0)
                time.sleep(max(due - now, TICK_S))
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                break
            except BufferError:  # local queue full: let deliveries drain
                producer.poll(0.05)
        sent += 1
        if i % 1000 == 0:
            producer.poll(0)
            now = time.monotonic()
            if deadline_s is not None and now - started > deadline_s:
                break
            if progress and now - last_note > 2:
                last_note = now
                print(f"  streamed {i:,}/{len(records):,} records ({i / (now - started):,.0f}/s)", file=sys.stderr)
    remaining = producer.flush(60)
    if errors or remaining:
        raise KafkaUnavailable(f"delivery to {topic} failed: {errors[0] if errors else f'{remaining} records unsent'}")
    return sent, time.monotonic() - started
