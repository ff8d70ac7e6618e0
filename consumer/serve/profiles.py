"""Follows the compacted `customer-profiles` topic into Redis, beside the scoring loop.

Profiles are read by a consumer of their own (group `<group>.profiles`) so that the
scoring group's assignor balances only event partitions: in one group with both topics,
cooperative-sticky balances the total count and may hand one instance every event
partition and the other only profile partitions. A tombstone erases the customer.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

import redis
from confluent_kafka import Consumer, KafkaException, Message

from consumer.ops.erasure import erase_customer
from consumer.serve.metrics import Metrics
from consumer.serve.source import decode_profile, next_offsets, poll_batch, read_again_later
from consumer.settings import Settings
from state.backend import Store
from state.events import DEFAULT_MAX_EVENT_BYTES, MAX_ID_CHARS

log = logging.getLogger(__name__)


def apply_profiles(
    store: Store,
    metrics: Metrics,
    messages: list[Message],
    erase: Callable[[str], object],
    max_bytes: int = DEFAULT_MAX_EVENT_BYTES,
) -> None:
    """Apply a batch of profile records (upserts in one call; tombstones `erase`)."""
    ids, genders, ages = [], [], []
    for msg in messages:
        value = msg.value()
        if value is None:  # a tombstone: the customer asked to be forgotten
            key = msg.key()
            if key:
                customer = key.decode("utf-8", "replace")
                if len(customer) > MAX_ID_CHARS:  # no customer has such an id
                    metrics.profiles.labels("invalid").inc()
                    continue
                erase(customer)
                metrics.profiles.labels("erased").inc()
            continue
        parsed = decode_profile(value, max_bytes)
        if parsed is None:
            metrics.profiles.labels("invalid").inc()
            continue
        ids.append(parsed[0])
        genders.append(parsed[1])
        ages.append(parsed[2])
    if ids:
        store.set_profiles(ids, genders, ages)
        metrics.profiles.labels("updated").inc(len(ids))


class ProfileFollower:
    """A daemon thread: poll profiles, write them to Redis, then store their offsets."""

    def __init__(self, settings: Settings, store: Store, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.consumer = Consumer(
            settings.kafka_config(
                **{
                    "group.id": f"{settings.group_id}.profiles",
                    "enable.auto.commit": True,
                    "enable.auto.offset.store": False,
                    "auto.offset.reset": "earliest",
                    "partition.assignment.strategy": "cooperative-sticky",
                }
            )
        )

    def _erase(self, customer_id: str) -> None:
        erase_customer(self.store, customer_id, self.consumer, self.settings.topics.events)

    def start(self) -> None:
        self.consumer.subscribe([self.settings.topics.profiles])
        self._thread = threading.Thread(target=self._run, name="seqscore-profiles", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    messages = [m for m in poll_batch(self.consumer, 1000, 500) if m.error() is None]
                except KafkaException as exc:  # the follower carries erasures: it must not end quietly
                    self.metrics.kafka_errors.labels("profiles").inc()
                    log.warning("profiles: consume failed, polling again: %s", exc)
                    self._stop.wait(1.0)
                    continue
                if messages:
                    self._apply_until_done(messages)
        finally:
            with contextlib.suppress(KafkaException):  # nothing stored since the last auto-commit
                self.consumer.commit(asynchronous=False)
            self.consumer.close()

    def _apply_until_done(self, messages: list[Message]) -> None:
        delay = 0.1
        while not self._stop.is_set():
            try:
                apply_profiles(self.store, self.metrics, messages, self._erase, self.settings.max_event_bytes)
            except Exception as exc:  # Redis down, or anything else: retried, never skipped
                if isinstance(exc, redis.RedisError):
                    self.metrics.redis_errors.inc()
                else:
                    self.metrics.kafka_errors.labels("profiles").inc()
                log.warning("profiles: applying %d records failed, retrying in %.1fs: %s", len(messages), delay, exc)
                with contextlib.suppress(KafkaException):
                    self.consumer.pause(self.consumer.assignment())
                time.sleep(delay)
                with contextlib.suppress(KafkaException):
                    # the records in hand are retried; one more handed back here is read again later
                    read_again_later(self.consumer, self.consumer.poll(0))
                delay = min(delay * 2, 5.0)
                continue
            self.consumer.resume(self.consumer.assignment())
            try:
                self.consumer.store_offsets(offsets=next_offsets(messages))
            except KafkaException as exc:  # revoked meanwhile: the new owner re-applies (idempotent)
                log.warning("profiles: storing offsets failed: %s", exc)
            return
