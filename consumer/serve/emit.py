"""Kafka out: output messages, dead letters, and a producer that waits for acknowledgements.

The delivery callback latches the first error, and so does a record that `produce` refuses;
`wait_delivered` raises it (DeliveryFailed) until `recover` is called, so a batch's offsets are
never stored unless every one of its records (outputs and dead letters) was acknowledged, on
any path (the shutdown's flush included). BufferError is backpressure: serve deliveries and
retry, never drop.

A dead letter is the original record with `seqscore.*` headers; one too big to copy whole is
cut to what the dead-letter topic accepts (`dead_letter`), with the original's size and SHA-256.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition
from numpy.typing import NDArray

from consumer.serve import failpoints
from state.errors import KafkaUnavailable
from state.events import SCHEMA_VERSION

TRANSACTION_CALL_S = 30.0
# what a record costs beyond its key, value and header bytes (record batch header, varints):
# 61 B of batch header and about 20 B of record framing, with room to spare
RECORD_OVERHEAD_BYTES = 512
# a key longer than this is itself hostile: the dead letter keeps its first bytes
MAX_DEAD_LETTER_KEY_BYTES = 4096
PRODUCER_MAX_MESSAGE_BYTES = 1_000_000  # librdkafka's message.max.bytes default
JAVA_PARTITIONER = "murmur2_random"  # the Java client's: murmur2 of the key, spread when there is none


class DeliveryFailed(KafkaUnavailable):
    """A record sent was refused, by the producer or the broker: the batch must not commit."""

    def __init__(self, error: KafkaError | str) -> None:
        super().__init__(f"delivery failed: {error}")
        self.fatal = isinstance(error, KafkaError) and error.fatal()


class TransactionAborted(KafkaUnavailable):
    """The broker refused to commit the open transaction (a rebalance moved the group's
    generation under it, for one), and it was aborted: its outputs are void, the producer goes on."""


def prediction_id(kind: str, customer_id: str, basis: str) -> str:
    """Deterministic: a replay of the same customer's event (or silence) gives the same id, even
    when a model promoted meanwhile scores the replay, so consumers that dedupe by it act once;
    two customers whose events share an event_id get different ids."""
    return hashlib.blake2b(f"{kind}|{customer_id}|{basis}".encode(), digest_size=16).hexdigest()


def iso(epoch_seconds: int) -> str:
    return datetime.fromtimestamp(int(epoch_seconds), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_many(epoch_seconds: NDArray[np.int64]) -> list[str]:
    """`iso` of each, formatted by numpy in one call (a tenth of the per-value cost)."""
    return [f"{text}Z" for text in np.datetime_as_string(np.asarray(epoch_seconds, "datetime64[s]"), unit="s").tolist()]


def next_action_values(
    event_ids: list[str],
    customer_ids: list[str],
    ts: NDArray[np.int64],
    proba: NDArray[Any],
    churn: NDArray[Any],
    vocabulary: tuple[str, ...],
    model_version: str,
    top_k: int,
    steps: NDArray[np.int64] | None,
    late: NDArray[np.bool_],
    policy: str,
) -> list[bytes]:
    """JSON values for next-actions, one per scored event (see state/events.py NextActionMessage)."""
    k = min(top_k, proba.shape[1])
    top = np.argsort(-proba, axis=1)[:, :k]
    top_p = np.take_along_axis(proba, top, axis=1).round(6)
    names = np.array(vocabulary, dtype=object)
    top_names = names[top].tolist()
    top_p_list = top_p.tolist()
    step_names = names[steps].tolist() if steps is not None and steps.shape[1] else None
    churn_list = np.clip(churn, 0.0, 1.0).round(6).tolist()
    late_list = late.tolist()
    event_ts = iso_many(ts)
    out = []
    for i, event_id in enumerate(event_ids):
        message = {
            "schema_version": SCHEMA_VERSION,
            "prediction_id": prediction_id("next", customer_ids[i], event_id),
            "event_id": event_id,
            "customer_id": customer_ids[i],
            "model_version": model_version,
            "event_ts": event_ts[i],
            "actions": [{"activity": a, "probability": p} for a, p in zip(top_names[i], top_p_list[i], strict=True)],
            "steps": step_names[i] if step_names is not None else None,
            "churn_risk": churn_list[i],
            "late": late_list[i],
            "policy": policy,
        }
        out.append(orjson.dumps(message))
    return out


def churn_alert_value(
    kind: str,
    trigger: str,
    event_id: str | None,
    customer_id: str,
    model_version: str,
    risk: float,
    threshold: float,
    as_of: int,
    policy: str,
) -> bytes:
    basis = event_id if event_id is not None else f"@{as_of}"
    return orjson.dumps(
        {
            "schema_version": SCHEMA_VERSION,
            "prediction_id": prediction_id(f"churn-{kind}", customer_id, basis),
            "event_id": event_id,
            "customer_id": customer_id,
            "model_version": model_version,
            "kind": kind,
            "trigger": trigger,
            "churn_risk": round(float(min(max(risk, 0.0), 1.0)), 6),
            "threshold": round(float(threshold), 6),
            "as_of": iso(as_of),
            "policy": policy,
        }
    )


Header = tuple[str, str | bytes | None]


# the headers a dead letter gets from the scorer; an original's own copies are dropped, so that
# a producer cannot choose the reason its record is filed (and replayed) under
DEAD_LETTER_HEADERS = frozenset(
    f"seqscore.{name}"
    for name in ("reason", "detail", "topic", "partition", "offset", "truncated", "original_size",
                 "original_sha256", "original_key_size", "original_headers_dropped")
)


def original_headers(msg: Message) -> list[Header]:
    original = msg.headers() or []
    pairs = original.items() if isinstance(original, dict) else original
    return [(str(k), v) for k, v in pairs if str(k) not in DEAD_LETTER_HEADERS]


def dlq_headers(msg: Message, reason: str, detail: str) -> list[Header]:
    """The original headers plus the seqscore.* ones (docs/serving.md: dead letters)."""
    return original_headers(msg) + seqscore_headers(msg, reason, detail)


def seqscore_headers(msg: Message, reason: str, detail: str) -> list[Header]:
    return [
        ("seqscore.reason", reason.encode()),
        ("seqscore.detail", detail.encode("utf-8", "replace")[:1024]),
        ("seqscore.topic", (msg.topic() or "").encode()),
        ("seqscore.partition", str(msg.partition()).encode()),
        ("seqscore.offset", str(msg.offset()).encode()),
    ]


def _size(value: str | bytes | None) -> int:
    return len(value.encode() if isinstance(value, str) else value) if value is not None else 0


def record_bytes(key: bytes | str | None, value: bytes | None, headers: list[Header]) -> int:
    """What the producer counts against message.max.bytes, plus the record's framing."""
    return _size(key) + _size(value) + sum(_size(k) + _size(v) for k, v in headers) + RECORD_OVERHEAD_BYTES


def dead_letter(msg: Message, reason: str, detail: str, limit: int) -> tuple[bytes | None, bytes | None, list[Header]]:
    """The DLQ record for `msg`: key, value and headers, no more than `limit` bytes in all.
    Whole when it fits. Otherwise the value is cut (then the original headers dropped, the key
    cut), with `seqscore.truncated`, the original value's size and SHA-256 (to find it), and
    how many original headers were dropped."""
    key, value = msg.key(), msg.value()
    original, ours = original_headers(msg), seqscore_headers(msg, reason, detail)
    if record_bytes(key, value, original + ours) <= limit:
        return key, value, original + ours
    whole = value or b""
    ours += [
        ("seqscore.truncated", b"1"),
        ("seqscore.original_size", str(len(whole)).encode()),
        ("seqscore.original_sha256", hashlib.sha256(whole).hexdigest().encode()),
    ]
    if key is not None and len(key) > MAX_DEAD_LETTER_KEY_BYTES:
        ours.append(("seqscore.original_key_size", str(len(key)).encode()))
        key = key[:MAX_DEAD_LETTER_KEY_BYTES]
    if record_bytes(key, None, original + ours) > limit:
        ours.append(("seqscore.original_headers_dropped", str(len(original)).encode()))
        original = []
    room = max(0, limit - record_bytes(key, None, original + ours))
    return key, whole[:room], original + ours


class Emitter:
    """A producer that knows whether everything it sent was acknowledged.

    With a `transactional_id` (exactly-once serving) every record sent joins the open
    transaction, begun by the first send after a commit; `commit` adds the consumed offsets
    and commits outputs and offsets together.
    """

    def __init__(
        self,
        config: dict[str, Any],
        on_wait: Callable[[], None] | None = None,
        transactional_id: str | None = None,
        transaction_timeout_ms: int = 60_000,
    ) -> None:
        transactional = (
            {
                "transactional.id": transactional_id,
                "transaction.timeout.ms": transaction_timeout_ms,
                # a transaction cannot wait for a broker longer than it may stay open
                "message.timeout.ms": transaction_timeout_ms,
            }
            if transactional_id
            else {}
        )
        self.producer = Producer(
            {
                "enable.idempotence": True,
                "acks": "all",
                # the next batch's state round trip waits for these acknowledgements, so the
                # linger is on the loop's path: 1 ms, not librdkafka's 5 (0 sent a request per
                # few records and halved a drain)
                "linger.ms": 1,
                "compression.type": "lz4",
                # retry until the broker is back: a batch waits rather than fails (backpressure)
                "message.timeout.ms": 0,
                # no Python callback per acknowledged record: only failures are reported, to
                # one callback for the producer rather than one passed with every record
                "delivery.report.only.error": True,
                "on_delivery": self._delivered,
                # a key lands where a Java client puts it (librdkafka's default is CRC32): a
                # replayed event or an erasure tombstone goes to its customer's partition
                "partitioner": JAVA_PARTITIONER,
                **config,
                **transactional,
            }
        )
        self.transactional = bool(transactional_id)
        self._in_transaction = False
        if self.transactional:
            # fences this id's previous incarnation and aborts its open transaction at once
            self.producer.init_transactions(TRANSACTION_CALL_S)
        self._error: KafkaError | None = None
        self._on_wait = on_wait

    def commit(self, offsets: list[TopicPartition], group: Any) -> None:
        """Commit the open transaction with the consumed `offsets` (exactly-once); raise
        KafkaUnavailable when it was aborted instead."""
        if not self._in_transaction and not offsets:
            return
        try:
            self._begin()
            if offsets:
                self.producer.send_offsets_to_transaction(offsets, group, TRANSACTION_CALL_S)
                # the window where the group's offsets are pending: a new owner's offset fetch
                # waits until the transaction ends
                failpoints.hit("offsets_in_transaction")
            self.producer.commit_transaction(TRANSACTION_CALL_S)
        except KafkaException as exc:
            error = exc.args[0]
            if error.txn_requires_abort():
                self.producer.abort_transaction(TRANSACTION_CALL_S)
                raise TransactionAborted(f"transaction aborted: {error}") from exc
            raise KafkaUnavailable(f"transaction not committed: {error}") from exc
        finally:
            self._in_transaction = False
        self._raise_failed()

    def _raise_failed(self) -> None:
        if self._error is not None:
            raise DeliveryFailed(self._error)

    def failed(self) -> bool:
        return self._error is not None

    def recover(self) -> bool:
        """After a failed delivery: wait out what is still in flight, abort the open transaction
        and forget the error, so the batch can be sent again. False when the producer cannot
        go on (a fatal error): the caller makes a new one."""
        self.producer.flush(TRANSACTION_CALL_S)
        fatal = isinstance(self._error, KafkaError) and self._error.fatal()
        if self._in_transaction and not fatal:
            try:
                self.producer.abort_transaction(TRANSACTION_CALL_S)
            except KafkaException:
                fatal = True
        self._in_transaction = False
        self._error = None
        return not fatal

    def _begin(self) -> None:
        if self.transactional and not self._in_transaction:
            self.producer.begin_transaction()
            self._in_transaction = True

    def _delivered(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None and self._error is None:
            self._error = err

    def _refused(self, exc: KafkaException) -> DeliveryFailed:
        """`produce` refused a record (too large, unknown topic, fatal producer state): the
        same as a failed delivery, latched so that the batch never commits."""
        error = exc.args[0] if exc.args else None
        if self._error is None:
            self._error = error if isinstance(error, KafkaError) else KafkaError(KafkaError._FAIL, str(exc))
        return DeliveryFailed(self._error)

    def send(
        self,
        topic: str,
        key: bytes | str | None,
        value: bytes | None,
        headers: list[Header] | None = None,
    ) -> None:
        self._begin()
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, headers=headers)
                return
            except BufferError:
                self._wait_for_room()
            except KafkaException as exc:
                raise self._refused(exc) from None

    def send_many(self, topic: str, keys: list[str], values: list[bytes]) -> None:
        """`send` of each (key, value), in one call: a batch's outputs without a Python call
        and a transaction check per record."""
        self._begin()
        produce = self.producer.produce
        for key, value in zip(keys, values, strict=True):
            while True:
                try:
                    produce(topic, value, key)
                    break
                except BufferError:
                    self._wait_for_room()
                except KafkaException as exc:
                    raise self._refused(exc) from None

    def _wait_for_room(self) -> None:
        """The local queue is full: serve deliveries (and the consumer's membership) a while."""
        self.producer.poll(0.05)
        if self._on_wait is not None:
            self._on_wait()

    def wait_delivered(self, slow_after_s: float = 1.0, keep_membership: bool = True) -> None:
        """Block until every record sent so far is acknowledged; raise the first delivery error
        (again at every call, until `recover`).
        Past `slow_after_s` it calls `on_wait` (keep the consumer's membership), except when
        called from a consumer callback (`keep_membership=False`)."""
        started = time.monotonic()
        while self.producer.flush(0.1 if time.monotonic() - started < slow_after_s else 1.0) > 0:
            if self._error is not None:
                break
            if keep_membership and self._on_wait is not None and time.monotonic() - started > slow_after_s:
                self._on_wait()
        self._raise_failed()

    def close(self, timeout_s: float = 30.0) -> None:
        self.producer.flush(timeout_s)
