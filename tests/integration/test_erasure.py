"""`seqscore erase` leaves nothing that restores the customer (audit A9), on the real Redis: a
batch in flight, an undo record and its rollback, a rebuild from the topic (the same events
again), a silence scored before the erasure, the segments page. Events produced after the
erasure (later offsets of the partition) start a new history."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import redis

from consumer.segments import scan as segments
from state.encoding import DAY, activity_code
from state.store import (
    APPLIED,
    REPLAY,
    STORED_HEADER_BYTES,
    STORED_HEADER_DTYPE,
    UPDATE_ARG_DTYPE,
    EventBatch,
    StateStore,
    event_tag,
)

T0 = 1_650_000_000


def batch(rows: list[tuple[str, int, int]], partition: int = 0) -> EventBatch:
    """rows: (customer, offset, ts)"""
    return EventBatch(
        customer_ids=[r[0] for r in rows],
        partition=np.full(len(rows), partition, dtype=np.int64),
        offset=np.array([r[1] for r in rows], dtype=np.int64),
        ts=np.array([r[2] for r in rows], dtype=np.int64),
        coarse=np.full(len(rows), activity_code("A"), dtype=np.uint32),
        fine=np.full(len(rows), activity_code("A1"), dtype=np.uint32),
        tag=np.array([event_tag(f"{r[0]}-{r[1]}") for r in rows], dtype=np.uint32),
    )


@pytest.fixture(params=[False, True], ids=["at-least-once", "exactly-once"])
def store(request: pytest.FixtureRequest, stack: dict[str, str], unique: str) -> Iterator[StateStore]:
    client = redis.Redis.from_url(stack["redis"])
    yield StateStore(client, f"e{unique}", 8, 2 * DAY, 3600, silence_marks=(10 * DAY,), keeps_undo=request.param)
    for key in client.scan_iter(f"e{unique}:*"):
        client.delete(key)


def nothing_of(store: StateStore, customer: str) -> None:
    """Erased: a tombstone without records or prediction, no profile, in no quiet set or undo."""
    raw = store.raw_value(customer) or b""
    head = np.frombuffer(raw[:STORED_HEADER_BYTES], STORED_HEADER_DTYPE)
    assert raw[STORED_HEADER_BYTES:] == b"" and int(head["count"][0]) == 0
    assert int(head["pred_code"][0]) == 0 and float(head["pred_risk"][0]) == 0.0 and int(head["alert_ts"][0]) == 0
    assert store.erased([customer]) == {customer}
    assert store.client.exists(store.profile_key(customer)) == 0
    for key in store.client.scan_iter(f"{store.prefix}:quiet:*"):
        assert store.client.zscore(key, customer) is None
    for key in store.client.scan_iter(f"{store.prefix}:undo:*"):
        assert not [f for f in store.client.hkeys(key) if customer.encode() in f], key


def test_a_batch_in_flight_before_the_erasure_brings_nothing_back(store: StateStore) -> None:
    store.apply(batch([("x", 0, T0), ("y", 1, T0)]))
    _, pending = store.preview(batch([("x", 2, T0 + 60), ("y", 3, T0 + 60)]))
    updates = np.zeros(2, UPDATE_ARG_DTYPE)  # the batch's alert and prediction state, for both
    updates["customer"], updates["flags"], updates["alert_ts"], updates["pred_risk"] = [0, 1], 1, T0 + 60, 0.9
    pending.set_updates(updates)
    store.erase("x", 0, 4)
    store.write(pending)
    nothing_of(store, "x")
    assert len(store.raw_value("y") or b"") > STORED_HEADER_BYTES, "the other customer's write stands"


def test_the_same_events_again_restore_nothing_and_later_ones_start_afresh(store: StateStore) -> None:
    history = [("x", 0, T0), ("x", 1, T0 + 60), ("x", 2, T0 + 120)]
    store.apply(batch(history))
    store.erase("x", 0, 3)
    again = store.apply(batch(history))  # a rebuild from the topic, a replay after a rollback
    assert again.status.tolist() == [REPLAY] * 3
    nothing_of(store, "x")
    fresh = store.apply(batch([("x", 3, T0 + 180)]))
    assert fresh.status.tolist() == [APPLIED]
    raw = store.raw_value("x") or b""
    assert int(np.frombuffer(raw[:STORED_HEADER_BYTES], STORED_HEADER_DTYPE)["count"][0]) == 1
    assert store.erased(["x"]) == set(), "a new history, the erasure's mark gone"


def test_no_rollback_restores_an_erased_window(stack: dict[str, str], unique: str) -> None:
    """Undo records exist in exactly-once serving only."""
    client = redis.Redis.from_url(stack["redis"])
    store = StateStore(client, f"r{unique}", 8, 2 * DAY, 3600, silence_marks=(10 * DAY,), keeps_undo=True)
    try:
        erased_then_rolled_back(store)
    finally:
        for key in client.scan_iter(f"r{unique}:*"):
            client.delete(key)


def erased_then_rolled_back(store: StateStore) -> None:
    store.apply(batch([("x", 0, T0), ("x", 1, T0 + 60)]))
    store.apply(batch([("x", 2, T0 + 120)]))  # its undo record holds x's window before it
    store.erase("x", 0, 3)
    store.rollback(0, committed_offset=2)  # that batch's transaction never committed
    nothing_of(store, "x")


def test_a_silence_scored_before_the_erasure_writes_nothing(store: StateStore) -> None:
    store.apply(batch([("x", 0, T0)]))
    applied, pending = store.preview(batch([("y", 1, T0 + 11 * DAY)]))  # x's 10-day mark falls due
    x = applied.customers.index("x")
    updates = np.zeros(1, UPDATE_ARG_DTYPE)
    updates["customer"], updates["flags"], updates["alert_ts"], updates["pred_risk"] = [x], 1, T0 + 10 * DAY, 0.8
    pending.set_updates(updates)
    store.erase("x", 0, 1)
    store.write(pending)
    nothing_of(store, "x")


def test_the_segments_page_does_not_list_erased_customers(store: StateStore) -> None:
    store.apply(batch([("x", 0, T0), ("y", 1, T0)]))
    store.erase("x", 0, 2)
    assert segments.scan(store.client, store.prefix, 4).customer_ids == ["y"]
