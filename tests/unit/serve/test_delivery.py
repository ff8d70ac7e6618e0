"""A refused record never lets its batch commit, and a dead letter always fits its topic.
No broker: the producer points at a closed port, and the scorer's consumer and store are fakes
that record what they were asked (end to end: tests/integration/test_poison_stream.py)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from confluent_kafka import KafkaError, Message, TopicPartition

from consumer.serve.checkpoint import CommitAborted
from consumer.serve.emit import DeliveryFailed, Emitter, TransactionAborted, dead_letter, record_bytes
from consumer.serve.loop import Scorer
from consumer.settings import load_settings

NOWHERE = {"bootstrap.servers": "127.0.0.1:1", "log_level": 0}


def incoming(value: bytes, key: bytes | None = b"c1", headers: list[tuple[str, bytes]] | None = None,
             offset: int = 7) -> Message:
    return Message(topic="activity-events", partition=1, offset=offset, key=key, value=value,
                   headers=headers if headers is not None else [("origin", b"crm")])


def headers_of(dead: tuple[bytes | None, bytes | None, list[tuple[str, Any]]]) -> dict[str, Any]:
    return dict(dead[2])


def test_a_dead_letter_that_fits_is_the_original_with_the_reason() -> None:
    msg = incoming(b"{" * 100)
    key, value, headers = dead_letter(msg, "bad_json", "line 1", limit=10_000)
    assert (key, value) == (b"c1", b"{" * 100)
    assert headers[0] == ("origin", b"crm")
    assert dict(headers)["seqscore.reason"] == b"bad_json"
    assert "seqscore.truncated" not in dict(headers)


@pytest.mark.parametrize("size", [999_900, 1_040_000, 1_048_400])
def test_a_record_too_big_to_copy_is_cut_to_the_limit_and_says_what_it_was(size: int) -> None:
    value = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    dead = dead_letter(incoming(value), "too_large", f"{size} bytes > limit 65536", limit=1_000_000)
    key, cut, headers = dead
    assert record_bytes(key, cut, headers) <= 1_000_000
    assert cut is not None and value.startswith(cut) and len(cut) > 990_000
    marks = headers_of(dead)
    assert marks["seqscore.reason"] == b"too_large"
    assert marks["seqscore.truncated"] == b"1"
    assert marks["seqscore.original_size"] == str(size).encode()
    assert marks["seqscore.original_sha256"] == hashlib.sha256(value).hexdigest().encode()
    assert marks["origin"] == b"crm", "the original headers stay while they fit"


def test_huge_headers_and_a_huge_key_are_dropped_and_cut_before_the_limit_is_broken() -> None:
    msg = incoming(b"v" * 50_000, key=b"k" * 200_000, headers=[(f"h{i}", b"x" * 1000) for i in range(300)])
    dead = dead_letter(msg, "bad_json", "x", limit=100_000)
    key, value, headers = dead
    assert record_bytes(key, value, headers) <= 100_000
    marks = headers_of(dead)
    assert key == b"k" * 4096 and marks["seqscore.original_key_size"] == b"200000"
    assert marks["seqscore.original_headers_dropped"] == b"300" and "h0" not in marks
    assert value == b"v" * 50_000 or marks["seqscore.original_size"] == b"50000"


def test_a_producer_cannot_choose_the_reason_its_record_is_filed_under() -> None:
    msg = incoming(b"{", headers=[("seqscore.reason", b"missing_field"), ("seqscore.replayed-from", b"dlq:0:1")])
    headers = dead_letter(msg, "bad_json", "x", limit=10_000)[2]
    assert [v for k, v in headers if k == "seqscore.reason"] == [b"bad_json"]
    assert ("seqscore.replayed-from", b"dlq:0:1") in headers, "where a replayed record came from stays"


def test_a_failed_delivery_stays_failed_until_recovered() -> None:
    emitter = Emitter(NOWHERE)
    emitter._delivered(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED), None)  # the delivery callback
    for _ in range(2):  # the loop's wait, then the shutdown's: neither may see a clean slate
        with pytest.raises(DeliveryFailed, match="TOPIC_AUTHORIZATION_FAILED"):
            emitter.wait_delivered(keep_membership=False)
    assert emitter.recover()
    emitter.wait_delivered(keep_membership=False)


def test_a_record_the_producer_refuses_fails_the_batch_instead_of_the_process() -> None:
    emitter = Emitter(NOWHERE | {"message.max.bytes": 1000})
    with pytest.raises(DeliveryFailed, match="MSG_SIZE_TOO_LARGE"):
        emitter.send("activity-events.dlq", b"k", b"x" * 5000)
    assert emitter.failed()
    with pytest.raises(DeliveryFailed):
        emitter.send_many("next-actions", ["k"], [b"x" * 5000])
    with pytest.raises(DeliveryFailed):
        emitter.wait_delivered(keep_membership=False)


class FakeConsumer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def store_offsets(self, offsets: list[TopicPartition]) -> None:
        self.calls.append(("store_offsets", offsets))

    def commit(self, **kwargs: Any) -> None:
        self.calls.append(("commit", kwargs))

    def seek(self, tp: TopicPartition) -> None:
        self.calls.append(("seek", (tp.topic, tp.partition, tp.offset)))

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition("activity-events", 1)]

    def pause(self, partitions: list[TopicPartition]) -> None:
        pass

    def resume(self, partitions: list[TopicPartition]) -> None:
        pass

    def poll(self, timeout: float) -> None:
        return None

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return partitions

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return partitions

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float = 0, cached: bool = False) -> tuple[int, int]:
        return 0, 0

    def close(self) -> None:
        self.calls.append(("close", None))

    def consumer_group_metadata(self) -> object:
        return object()


class FakeStore:
    def __init__(self) -> None:
        self.writes: list[object] = []
        self.claims: dict[int, int] = {}  # StateStore's owner claims (exactly-once)

    def write(self, write: object) -> None:
        self.writes.append(write)


@pytest.fixture
def failed_scorer(monkeypatch: pytest.MonkeyPatch) -> Scorer:
    """A scorer whose pending batch (offsets 7 and 8 of partition 1) had a record refused."""
    scorer = Scorer(load_settings(kafka_bootstrap="127.0.0.1:1"))
    monkeypatch.setattr("consumer.serve.loop.dead_letter_limit", lambda settings: 1_000_000)
    scorer.consumer = FakeConsumer()  # type: ignore[assignment]
    scorer.store = FakeStore()  # type: ignore[assignment]
    emitter = Emitter(NOWHERE)
    scorer.checkpoint.open(scorer.consumer, scorer.store, emitter)
    emitter._delivered(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), None)
    scorer.membership.consumer, scorer.membership.store = scorer.consumer, scorer.store  # type: ignore[assignment]
    scorer.membership.assigned.add(("activity-events", 1))
    scorer.checkpoint.pending = (object(), [incoming(b"{}", offset=7), incoming(b"{}", offset=8)])  # type: ignore[assignment]
    return scorer


def test_close_after_a_failed_delivery_neither_stores_nor_commits_the_batch(failed_scorer: Scorer) -> None:
    consumer = failed_scorer.consumer
    store = failed_scorer.store
    with pytest.raises(DeliveryFailed):  # how the loop learns of it, in the next batch's wait for acks
        failed_scorer.checkpoint.await_acks(keep_membership=False)
    failed_scorer.close()
    assert store.writes == []  # type: ignore[union-attr]
    assert [name for name, _ in consumer.calls] == ["close"]  # type: ignore[union-attr]


def test_a_revocation_after_a_failed_delivery_commits_nothing(failed_scorer: Scorer) -> None:
    failed_scorer.membership.on_revoke(failed_scorer.consumer, [TopicPartition("activity-events", 1)])  # type: ignore[arg-type]
    assert failed_scorer.store.writes == []  # type: ignore[union-attr]
    assert failed_scorer.consumer.calls == []  # type: ignore[union-attr]


def test_a_failed_batch_is_sent_again_from_its_first_offset_and_readyz_fails_meanwhile(failed_scorer: Scorer) -> None:
    failed_scorer.checkpoint.delivery_retry_s = 0.0
    failed_scorer.recovery.send_again_after(DeliveryFailed("MSG_SIZE_TOO_LARGE"))
    assert failed_scorer.consumer.calls == [("seek", ("activity-events", 1, 7))]  # type: ignore[union-attr]
    assert failed_scorer.checkpoint.pending is None and failed_scorer.store.writes == []  # type: ignore[union-attr]
    ready, problems = failed_scorer.health.ready()
    assert not ready and "paused: output delivery unavailable" in problems
    assert failed_scorer.metrics.kafka_errors.labels("delivery")._value.get() == 1
    failed_scorer.emitter.wait_delivered(keep_membership=False)  # type: ignore[union-attr]


def test_rows_the_model_answers_with_nan_get_no_output_and_are_counted() -> None:
    """orjson writes NaN as null: such a row would be a schema-invalid output without an alert."""
    import numpy as np

    from consumer.serve import silence
    from consumer.serve.inference import without_non_finite
    from consumer.serve.metrics import Metrics
    from state.encoding import RawWindows

    metrics = Metrics()
    n_quiet = 2
    raw = RawWindows(**{name: np.zeros((n_quiet, 3) if name in ("ts", "codes") else n_quiet, np.int64)
                        for name in RawWindows.__dataclass_fields__})
    quiet = silence.Silences(np.array([5, 6]), np.array([100, 200]), np.array([10, 10]), np.array([3, 3]), raw)
    emit = np.array([0, 2, 3])
    proba = np.full((5, 4), 0.25, np.float32)
    risk = np.full((5, 1), 0.5, np.float32)
    proba[1, 2] = np.nan  # the second event
    risk[4, 0] = np.inf  # the second silence
    finite = np.isfinite(proba).all(axis=1) & np.isfinite(risk).all(axis=1)
    inputs = {"tokens": np.arange(5)}
    kept_emit, kept_quiet, kept_inputs, kept_proba, kept_risk = without_non_finite(
        "v1", metrics, finite, emit, quiet, inputs, proba, risk)
    assert kept_emit.tolist() == [0, 3] and kept_quiet.customer.tolist() == [5]
    assert kept_inputs["tokens"].tolist() == [0, 2, 3]
    assert np.isfinite(kept_proba).all() and np.isfinite(kept_risk).all() and len(kept_proba) == 3
    assert metrics.non_finite._value.get() == 2


@pytest.mark.parametrize("rows", [0, 1, 3])
def test_finite_rows_takes_any_batch_size_and_risk_shape(rows: int) -> None:
    """A batch with no row to score (only replays) reached this check on the fault run."""
    import numpy as np

    from consumer.serve.inference import finite_rows

    for risk in (np.full((rows, 1), 0.5, np.float32), np.full(rows, 0.5, np.float32)):
        assert finite_rows(np.full((rows, 4), 0.25, np.float32), risk).tolist() == [True] * rows


def test_prediction_ids_tell_customers_apart_and_survive_a_promotion() -> None:
    """Consumers dedupe by prediction_id: two customers' events that share an event_id must not
    collapse into one, and a replay scored by a newly promoted model is still the same event's
    prediction (acted on once)."""
    import orjson

    from consumer.serve.emit import churn_alert_value, next_action_values

    def next_ids(customers: list[str], version: str) -> list[str]:
        import numpy as np

        values = next_action_values(["e-1"] * len(customers), customers, np.zeros(len(customers), np.int64),
                                    np.full((len(customers), 2), 0.5, np.float32),
                                    np.zeros(len(customers), np.float32), ("A", "B"), version, 1, None,
                                    np.zeros(len(customers), bool), "p")
        return [orjson.loads(v)["prediction_id"] for v in values]

    first, second = next_ids(["c1", "c2"], "v1")
    assert first != second
    assert next_ids(["c1"], "v2") == [first]

    def alert_id(customer: str, version: str) -> str:
        return str(orjson.loads(churn_alert_value("alert", "event", "e-1", customer, version, 0.9, 0.5, 0, "p"))
                   ["prediction_id"])

    assert alert_id("c1", "v1") != alert_id("c2", "v1")
    assert alert_id("c1", "v1") == alert_id("c1", "v2")


def test_a_record_returned_while_keeping_membership_is_fetched_again_not_skipped(failed_scorer: Scorer) -> None:
    """While a batch waits, poll(0) only serves group callbacks; should it hand back a record (a
    partition assigned and fetched before it was paused), that record must be read again later,
    or the offsets after it would commit past it (audit B4)."""
    consumer = failed_scorer.consumer
    consumer.poll = lambda timeout: incoming(b"{}", offset=41)  # type: ignore[union-attr, method-assign]
    failed_scorer.membership.keep()
    assert ("seek", ("activity-events", 1, 41)) in consumer.calls  # type: ignore[union-attr]


class AbortingEmitter(Emitter):
    """A transactional producer whose commit the broker refuses after a rebalance moved the
    group's generation (ILLEGAL_GENERATION): the transaction is aborted, the producer usable."""

    def __init__(self) -> None:
        super().__init__(NOWHERE)
        self.commits = 0

    def commit(self, offsets: list[TopicPartition], group: Any) -> None:
        self.commits += 1
        raise TransactionAborted("transaction not committed: ILLEGAL_GENERATION (Specified group generation id "
                                 "is not valid)")

    def recover(self) -> bool:
        return True


def test_a_transaction_aborted_by_a_rebalance_rolls_its_partitions_back_and_replays_instead_of_stopping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Exactly-once: a rebalance between a batch's state write and its commit makes the broker
    refuse the offsets (ILLEGAL_GENERATION) and the transaction aborts. The scorer stopped
    ('transaction aborted: stopping'), so every such rebalance cost a member. The batch's state
    is stored, so a plain replay would take its events for replays and emit nothing: its
    partitions are checked again as if newly assigned (rolled back by their undo records),
    and read again from the aborted batch's first offsets."""
    scorer = Scorer(load_settings(kafka_bootstrap="127.0.0.1:1", processing_guarantee="exactly_once"))
    scorer.consumer = FakeConsumer()  # type: ignore[assignment]
    scorer.store = FakeStore()  # type: ignore[assignment]
    emitter = AbortingEmitter()
    scorer.checkpoint.open(scorer.consumer, scorer.store, emitter)
    scorer.membership.consumer, scorer.membership.store = scorer.consumer, scorer.store  # type: ignore[assignment]
    scorer.membership.assigned.add(("activity-events", 1))
    scorer.checkpoint.pending = (object(), [incoming(b"{}", offset=7), incoming(b"{}", offset=8)])  # type: ignore[assignment]
    scorer.checkpoint.in_hand = [incoming(b"{}", offset=9)]
    with pytest.raises(CommitAborted):
        scorer.checkpoint.flush()
    assert emitter.commits == 1 and not scorer.stop_requested.is_set(), "not a reason to stop"
    scorer.recovery.replay_after_abort()
    assert scorer.membership.unchecked == {1}, "rolled back before it is read again"
    assert ("seek", ("activity-events", 1, 7)) in scorer.consumer.calls  # type: ignore[union-attr]
    assert scorer.checkpoint.pending is None and scorer.checkpoint.in_hand == []
