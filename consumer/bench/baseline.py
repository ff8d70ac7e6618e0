"""The per-event baseline of `seqscore bench`: the consumer a user would write first.

Record at a time, the way stream frameworks invite: per event one poll, one decode, one
Redis round trip (the same idempotent script, for one event), one model call at batch
size 1 (the same compiled function), one produce. Same model, broker, Redis and outputs
as the scorer, so the ratio measures batching and nothing else.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis
from confluent_kafka import Consumer, Producer

from consumer.serve.emit import next_action_values
from consumer.serve.scoring import ModelRunner
from consumer.serve.source import EventDecoder
from state.encoding import encode
from state.store import TOO_LATE, StateStore


@dataclass
class BaselineResult:
    events: int
    seconds: float

    @property
    def eps(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def run_baseline(
    runner: ModelRunner,
    kafka_config: dict[str, object],
    redis_url: str,
    key_prefix: str,
    topic: str,
    output_topic: str,
    max_events: int,
    max_seconds: float,
    warmup_events: int = 50,
) -> BaselineResult:
    """Process `topic` one record at a time; measure events/s after the first `warmup_events`."""
    consumer = Consumer(
        {**kafka_config, "group.id": f"{key_prefix}-baseline", "auto.offset.reset": "earliest",
         "enable.auto.commit": True}
    )
    producer = Producer({**kafka_config, "linger.ms": 5})
    store = StateStore(redis.Redis.from_url(redis_url), key_prefix, runner.spec.window, 7 * 86_400, 86_400)
    decoder = EventDecoder(1 << 16, tag_key=store.tag_key())
    consumer.subscribe([topic])
    done, started, idle_since = 0, 0.0, time.monotonic()
    try:
        while done < max_events + warmup_events:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                if time.monotonic() - idle_since > 30:
                    break
                continue
            idle_since = time.monotonic()
            decoded = decoder.decode([msg])
            if len(decoded.events):
                applied = store.apply(decoded.events)
                raw, _ = applied.windows(decoded.events, runner.spec.window, runner.spec.level)
                proba, risk = runner.infer_unpadded(encode(raw, runner.spec))
                value = next_action_values(
                    decoded.event_ids, decoded.events.customer_ids, decoded.events.ts, proba, risk,
                    runner.spec.vocabulary, runner.version, 3, None, applied.status == TOO_LATE, "top-k(k=3)",
                )[0]
                producer.produce(output_topic, key=decoded.events.customer_ids[0], value=value)
                producer.poll(0)
            done += 1
            if done == warmup_events:
                started = time.monotonic()
            if started and time.monotonic() - started > max_seconds:
                break
        elapsed = time.monotonic() - started if started else 0.0
        producer.flush(30)
    finally:
        consumer.close()
    return BaselineResult(max(0, done - warmup_events), elapsed)
