"""The Redis state store and its Lua script, against the real Redis of deploy/stack."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import redis

from state.encoding import activity_code, gather_windows
from state.errors import Fenced, StateScriptError
from state.store import (
    APPLIED,
    DUPLICATE,
    LATE_INSERTED,
    LEGACY_TAG_KEY,
    REPLAY,
    STORED_HEADER_BYTES,
    STORED_HEADER_DTYPE,
    TAG_KEY_BYTES,
    TOO_LATE,
    UPDATE_ARG_DTYPE,
    AppliedBatch,
    EventBatch,
    PendingWrite,
    StateStore,
    event_tag,
    script_errors,
)
from training.history import history_from_table, history_table
from training.simulate import simulate

DAY = 86_400
T0 = 1_650_000_000


@pytest.fixture
def store(stack: dict[str, str], unique: str) -> Iterator[StateStore]:
    client = redis.Redis.from_url(stack["redis"])
    yield StateStore(client, f"t{unique}", capacity=6, lateness_seconds=2 * DAY, ttl_seconds=3600)
    for key in client.scan_iter(f"t{unique}:*"):
        client.delete(key)


def batch(rows: list[tuple[str, int, int, str, str]], partition: int = 0, tag_key: bytes = b"") -> EventBatch:
    """rows: (customer, offset, ts, activity, event_id)"""
    return EventBatch(
        customer_ids=[r[0] for r in rows],
        partition=np.full(len(rows), partition, dtype=np.int64),
        offset=np.array([r[1] for r in rows], dtype=np.int64),
        ts=np.array([r[2] for r in rows], dtype=np.int64),
        coarse=np.array([activity_code(r[3]) for r in rows], dtype=np.uint32),
        fine=np.array([activity_code(r[3] + "1") for r in rows], dtype=np.uint32),
        tag=np.array([event_tag(r[4], tag_key) for r in rows], dtype=np.uint32),
    )


def alerts(customers: list[int], alerted: list[bool], alert_ts: list[int]) -> np.ndarray:
    updates = np.zeros(len(customers), UPDATE_ARG_DTYPE)
    updates["customer"], updates["flags"], updates["alert_ts"] = customers, alerted, alert_ts
    return updates


def window_ts(store_result: AppliedBatch, events: EventBatch, window: int = 4) -> list[list[int]]:
    raw, _ = store_result.windows(events, window, "coarse")
    return [[int(t - T0) // DAY if t else -1 for t in row] for row in raw.ts]


def test_each_event_gets_the_history_up_to_itself(store: StateStore) -> None:
    events = batch(
        [
            ("a", 0, T0, "A", "e0"),
            ("b", 1, T0, "B", "e1"),
            ("a", 2, T0 + DAY, "C", "e2"),
            ("a", 3, T0 + 2 * DAY, "D", "e3"),
        ]
    )
    result = store.apply(events)
    assert result.status.tolist() == [APPLIED] * 4
    assert window_ts(result, events) == [[-1, -1, -1, 0], [-1, -1, -1, 0], [-1, -1, 0, 1], [-1, 0, 1, 2]]
    raw, _ = result.windows(events, 4, "coarse")
    assert raw.count.tolist() == [1, 1, 2, 3]


def test_replayed_offsets_are_not_appended_twice(store: StateStore) -> None:
    events = batch([("a", 10, T0, "A", "e0"), ("a", 11, T0 + DAY, "B", "e1")])
    first = store.apply(events)
    before = store.raw_value("a")
    again = store.apply(events)
    assert again.status.tolist() == [REPLAY, REPLAY]
    assert store.raw_value("a") == before
    assert window_ts(again, events) == window_ts(first, events)


def test_a_customer_whose_events_come_from_two_partitions_is_flagged(store: StateStore) -> None:
    first = store.apply(batch([("c1", 0, 100, "A", "e1"), ("c2", 1, 100, "A", "e2")], partition=0))
    assert not first.moved.any()
    again = store.apply(batch([("c1", 0, 200, "B", "e3"), ("c2", 1, 200, "B", "e4")], partition=3))
    assert again.moved.tolist() == [True, True]
    assert again.status.tolist() == [APPLIED, APPLIED], "still applied: flagged, not refused"
    back = store.apply(batch([("c1", 1, 300, "C", "e5")], partition=3))
    assert back.moved.tolist() == [False]


def test_a_late_event_sent_twice_is_stored_once_however_many_records_are_newer(
    stack: dict[str, str], unique: str
) -> None:
    """`dlq replay` run twice re-sends an old event: more than 32 newer records lie between it and
    the newest, beyond the newest-32 tag scan; its copy must still be found."""
    client = redis.Redis.from_url(stack["redis"])
    store = StateStore(client, f"d{unique}", capacity=64, lateness_seconds=400 * DAY, ttl_seconds=3600)
    try:
        store.apply(batch([("a", i, T0 + i * 60, "A", f"e{i}") for i in range(50)]))
        late = ("a", 50, T0 + 5 * 60 + 30, "L", "late")  # between e5 and e6: 44 records are newer
        assert store.apply(batch([late])).status.tolist() == [LATE_INSERTED]
        again = store.apply(batch([("a", 51, late[2], "L", "late")]))  # the second replay: a new offset
        assert again.status.tolist() == [DUPLICATE]
        assert (len(store.raw_value("a") or b"") - STORED_HEADER_BYTES) // 16 == 51
    finally:
        for key in client.scan_iter(f"d{unique}:*"):
            client.delete(key)


def test_repeated_event_id_is_ignored(store: StateStore) -> None:
    store.apply(batch([("a", 0, T0, "A", "e0")]))
    result = store.apply(batch([("a", 1, T0, "A", "e0"), ("a", 2, T0 + DAY, "B", "e1")]))
    assert result.status.tolist() == [DUPLICATE, APPLIED]
    assert int(result.headers["count"][0]) == 2


def test_late_events_keep_event_time_order(store: StateStore) -> None:
    store.apply(batch([("a", 0, T0, "A", "e0"), ("a", 1, T0 + 3 * DAY, "B", "e1")]))
    late = batch([("a", 2, T0 + 2 * DAY, "C", "e2"), ("a", 3, T0 - 5 * DAY, "D", "e3")])
    result = store.apply(late)
    assert result.status.tolist() == [LATE_INSERTED, TOO_LATE]
    # inserted between the two; the one beyond the 2-day bound is scored on what came before it
    assert window_ts(result, late) == [[-1, -1, 0, 2], [-1, -1, -1, -5]]
    stored = np.frombuffer(
        store.raw_value("a")[STORED_HEADER_BYTES:], dtype=[("ts", "<u4"), ("c", "<u4"), ("f", "<u4"), ("t", "<u4")]
    )
    assert [(int(t) - T0) // DAY for t in stored["ts"]] == [0, 2, 3]


def test_capacity_keeps_the_newest_events(store: StateStore) -> None:
    rows = [("a", i, T0 + i * DAY, "A", f"e{i}") for i in range(10)]
    result = store.apply(batch(rows))
    # every event of the batch keeps its window; the stored value keeps the newest 6
    assert result.position.tolist() == list(range(1, 11)) and int(result.headers["count"][0]) == 10
    assert int(result.headers["first_ts"][0]) == T0
    assert (len(store.raw_value("a")) - STORED_HEADER_BYTES) // 16 == 6
    again = store.apply(batch([("a", 10, T0 + 10 * DAY, "A", "e10")]))
    assert int(again.headers["n_records"][0]) == 7 and again.position.tolist() == [7]


def test_profiles_join_and_erase_removes_everything(store: StateStore) -> None:
    store.set_profiles(["a"], [1], [3])
    result = store.apply(batch([("a", 0, T0, "A", "e0"), ("z", 1, T0, "A", "e1")]))
    assert result.gender.tolist() == [1, -1] and result.age_group.tolist() == [3, -1]
    assert 0 < store.client.ttl(store.window_key("a")) <= 3600
    assert store.erase("a", 0, 1) == 2
    assert store.client.zscore(store.quiet_key(0), "a") is None
    assert store.client.exists(store.profile_key("a")) == 0
    assert (store.raw_value("a") or b"")[STORED_HEADER_BYTES:] == b"", "a tombstone: no records"
    assert store.erased(["a", "z"]) == {"a"}


def test_alert_state_is_stored_with_the_window_and_survives_in_the_header(store: StateStore) -> None:
    _, pending = store.preview(batch([("b", 0, T0, "B", "e9"), ("a", 1, T0, "A", "e0")]))
    pending.set_updates(alerts([1], [True], [T0]))  # customer index 1 of the batch: "a"
    store.write(pending)
    result = store.apply(batch([("a", 2, T0 + DAY, "A", "e1"), ("b", 3, T0 + DAY, "B", "e2")]))
    assert list(result.headers["flags"]) == [1, 0] and int(result.headers["alert_ts"][0]) == T0
    _, recover = store.preview(batch([("a", 4, T0 + 2 * DAY, "A", "e3")]))
    recover.set_updates(alerts([0], [False], [T0 + 2 * DAY]))
    store.write(recover)
    assert int(store.apply(batch([("a", 4, T0 + 2 * DAY, "A", "e3")])).headers["flags"][0]) == 0


def test_state_windows_equal_training_windows(store: StateStore) -> None:
    """Training/serving skew: the same history through Redis (in batches, as the scorer
    applies it) and through the training path gives identical raw windows."""
    history = history_from_table(history_table(simulate(60, seed=9)), "sim")
    order = np.argsort(history.ts, kind="stable")  # the stream arrives in time order
    window = 5
    codes = {"coarse": history.codes("coarse"), "fine": history.codes("fine")}
    expected = gather_windows(history.ts, codes["coarse"], history.customer_start, order, history.ts[order], window)
    store.capacity = window + 2
    got_ts, got_codes, got_count, got_first = [], [], [], []
    for start in range(0, len(order), 97):
        part = order[start : start + 97]
        events = EventBatch(
            customer_ids=[str(history.customer_ids[c]) for c in history.customer[part]],
            partition=np.zeros(len(part), dtype=np.int64),
            offset=np.arange(start, start + len(part), dtype=np.int64),
            ts=history.ts[part],
            coarse=codes["coarse"][part],
            fine=codes["fine"][part],
            tag=np.array([event_tag(f"e{i}") for i in part], dtype=np.uint32),
        )
        raw, ok = store.apply(events).windows(events, window, "coarse")
        assert ok.all()
        got_ts.append(raw.ts)
        got_codes.append(raw.codes)
        got_count.append(raw.count)
        got_first.append(raw.first_ts)
    assert np.array_equal(np.concatenate(got_ts), expected.ts)
    assert np.array_equal(np.concatenate(got_codes), expected.codes)
    assert np.array_equal(np.concatenate(got_count), expected.count)
    assert np.array_equal(np.concatenate(got_first), expected.first_ts)


def test_many_events_of_one_customer_in_one_batch_all_get_windows(store: StateStore) -> None:
    timed = [(T0 + i * 60, "A", f"e{i}") for i in range(80)]
    timed.insert(40, (T0 + 10 * 60 + 30, "B", "late"))  # arrives late, inside the bound
    rows = [("a", offset, ts, act, eid) for offset, (ts, act, eid) in enumerate(timed)]
    result = store.apply(batch(rows))
    assert (result.position > 0).all()
    raw, ok = result.windows(batch(rows), 4, "coarse")
    assert ok.all()
    assert (np.diff(raw.ts[:, -2:], axis=1) >= 0).all()
    # the late event sits after e10 and before e11 in the stored window; e11 was applied
    # before it arrived, so e11's window is the one it had then, whatever the batch cut
    late = 40
    assert raw.ts[late, -1] == T0 + 630 and raw.ts[late, -2] == T0 + 600
    assert raw.ts[11, -2] == T0 + 600 and raw.ts[11, -1] == T0 + 660
    assert result.status[late] == LATE_INSERTED


@pytest.mark.parametrize("first_ever", [False, True])
def test_a_late_event_gives_the_same_windows_whatever_the_batch_cut(
    stack: dict[str, str], unique: str, first_ever: bool
) -> None:
    """Stream order e1 (t=100), e2 (t=50, late within the bound): scored in two batches, or
    replayed in one after a crash, e1 and e2 get the same windows, counts and tenure."""
    client = redis.Redis.from_url(stack["redis"])
    earlier = [] if first_ever else [("x", 0, T0, "A", "e0")]
    stream = [("x", 1, T0 + 100 * 60, "B", "e1"), ("x", 2, T0 + 50 * 60, "C", "e2"), ("x", 3, T0 + 200 * 60, "D", "e3")]
    windows = {}
    for cut in ([1, 2, 3], [3]):  # batches ending after these stream positions
        store = StateStore(client, f"t{unique}{len(cut)}{first_ever}", capacity=6, lateness_seconds=2 * DAY,
                           ttl_seconds=3600)
        if earlier:
            store.apply(batch(earlier))
        got = {}
        begin = 0
        for end in cut:
            part = batch(stream[begin:end])
            raw, ok = store.apply(part).windows(part, 4, "coarse")
            assert ok.all()
            for i, row in enumerate(stream[begin:end]):
                got[row[4]] = (raw.ts[i].tolist(), raw.codes[i].tolist(), int(raw.count[i]), int(raw.first_ts[i]))
            begin = end
        windows[len(cut)] = got
        for key in client.scan_iter(f"t{unique}{len(cut)}{first_ever}*"):
            client.delete(key)
    assert windows[1] == windows[3]


def test_preview_stores_nothing_until_written_and_then_equals_apply(store: StateStore, unique: str) -> None:
    first = batch([("a", 0, T0, "A", "e0"), ("b", 1, T0, "B", "e1")])
    second = batch([("a", 2, T0 + DAY, "C", "e2"), ("a", 3, T0 + 2 * DAY, "A", "e3")])
    seen, pending = store.preview(first)
    assert list(seen.status) == [APPLIED, APPLIED]
    assert store.raw_value("a") is None, "a preview writes nothing"
    again, _ = store.preview(first)
    assert list(again.status) == [APPLIED, APPLIED], "so previewing twice gives the same answer"

    pending.set_updates(alerts([1], [True], [T0]))
    seen2, pending2 = store.preview(second, before=pending)  # stores `first`, then reads `second`
    assert list(seen2.position) == [2, 3] and store.raw_value("a") is not None
    store.client.script_flush()  # a restarted Redis has no scripts: loaded again, not an error
    store.write(pending2)
    store.write(pending2)

    reference = StateStore(store.client, f"r{unique}", store.capacity, store.lateness, store.ttl)
    try:
        _, reference_first = reference.preview(first)
        reference_first.set_updates(alerts([1], [True], [T0]))
        reference.write(reference_first)
        reference.apply(second)
        for customer in ("a", "b"):
            assert store.raw_value(customer) == reference.raw_value(customer)
        replayed, _ = store.preview(second)
        assert list(replayed.status) == [REPLAY, REPLAY]
    finally:
        for key in store.client.scan_iter(f"r{unique}:*"):
            store.client.delete(key)


def test_silences_come_due_as_the_partition_clock_passes_their_marks(store: StateStore, unique: str) -> None:
    quiet = StateStore(store.client, f"q{unique}", 6, 2 * DAY, 3600, silence_marks=(10 * DAY, 30 * DAY))
    try:
        quiet.apply(batch([("a", 0, T0, "A", "e0"), ("b", 1, T0 + 5 * DAY, "B", "e1")]))
        assert quiet.client.zscore(quiet.quiet_key(0), "a") == T0
        assert quiet.clocks() == {0: T0 + 5 * DAY}
        # the clock moves to T0 + 12 days: a's 10-day mark is passed, b's is not
        seen, pending = quiet.preview(batch([("c", 2, T0 + 12 * DAY, "C", "e2")]))
        assert seen.customers == ["c", "a"] and seen.due["customer"].tolist() == [1]
        assert seen.due["last_ts"].tolist() == [T0] and seen.due["mark"].tolist() == [10 * DAY]
        assert seen.clocks[["c0", "c1"]].tolist() == [(T0 + 5 * DAY, T0 + 12 * DAY)]
        assert int(seen.headers["n_records"][1]) == 1, "the due customer comes back with its window"
        assert pending.keys[-2] == quiet.window_key("a"), "so its alert state can be written"
        again, _ = quiet.preview(batch([("c", 2, T0 + 12 * DAY, "C", "e2")]))
        assert again.due["customer"].tolist() == [1], "nothing is stored by a preview"
        quiet.write(pending)
        assert quiet.preview(batch([("c", 3, T0 + 13 * DAY, "C", "e3")]))[0].due.size == 0, "each mark once"
        # a quiet partition: its clock moves without events, past a's 30-day, b's and c's 10-day marks
        moved = quiet.apply(EventBatch.empty(), clocks={0: T0 + 31 * DAY})
        marks = zip(moved.due["customer"], moved.due["mark"].tolist(), strict=True)
        due = sorted((moved.customers[c], m) for c, m in marks)
        assert due == [("a", 30 * DAY), ("b", 10 * DAY), ("c", 10 * DAY)]
        assert quiet.client.zscore(quiet.quiet_key(0), "a") is None, "past the last mark: no longer tracked"
        assert quiet.erase("b", 0, 3) == 1 and quiet.client.zscore(quiet.quiet_key(0), "b") is None
    finally:
        for key in store.client.scan_iter(f"q{unique}:*"):
            store.client.delete(key)


@pytest.mark.parametrize("starts", [100, 1], ids=["spread", "all-at-one-time"])
def test_a_clock_move_past_more_silences_than_one_call_takes_pages_through_all(
    store: StateStore, unique: str, starts: int
) -> None:
    """25,000 customers of one partition go quiet (audit B6: a move found at most 20,000 per
    mark and moved the clock past the rest, which then never came due). Moves without events,
    as the idle advance and `seqscore sweep` make, page through them: each customer once."""
    quiet = StateStore(store.client, f"m{unique}", 6, 2 * DAY, 3600, silence_marks=(10 * DAY,))
    customers = [f"c{i}" for i in range(25_000)]
    rows = [(c, i, T0 + i % starts, "A", f"e{i}") for i, c in enumerate(customers)]
    try:
        quiet.apply(batch(rows))
        target, seen, pages = T0 + 11 * DAY, [], []
        while quiet.clocks()[0] < target:
            applied, pending = quiet.preview(EventBatch.empty(), clocks={0: target})
            quiet.write(pending)
            seen += [applied.customers[c] for c in applied.due["customer"].tolist()]
            pages.append(len(applied.due))
            assert len(pages) <= 3, "each move makes progress"
        assert len(seen) == len(set(seen)), "nobody twice"
        assert set(seen) == set(customers), f"{len(customers) - len(set(seen))} silences never came due"
        # spread: a first page short of the limit (the newest start's customers wait for the next);
        # one start for all: all of them at once, however many
        assert pages[0] == (19_750 if starts > 1 else 25_000)
    finally:
        for key in store.client.scan_iter(f"m{unique}:*"):
            store.client.delete(key)


def test_a_silence_score_writes_the_alert_state_only(store: StateStore, unique: str) -> None:
    """A customer scored for silence did nothing: the write sets its alert and prediction
    fields, but neither extends its retention nor brings back a window that expired."""
    quiet = StateStore(store.client, f"h{unique}", 6, 2 * DAY, 3600, silence_marks=(10 * DAY,))
    try:
        quiet.apply(batch([("a", 0, T0, "A", "e0"), ("b", 1, T0, "B", "e1")]))
        quiet.client.expire(quiet.window_key("a"), 100)  # its retention clock has partly run
        before = quiet.raw_value("a")
        seen, pending = quiet.preview(batch([("c", 2, T0 + 12 * DAY, "C", "e2")]))
        assert seen.customers == ["c", "a", "b"], "a and b are due"
        quiet.client.delete(quiet.window_key("b"))  # b expires between the read and the write
        pending.set_updates(alerts([0, 1, 2], [False, True, True], [0, T0 + 12 * DAY, T0 + 12 * DAY]))
        quiet.write(pending)
        after = quiet.raw_value("a")
        assert before is not None and after is not None
        head_before, head_after = (np.frombuffer(v[:STORED_HEADER_BYTES], STORED_HEADER_DTYPE) for v in (before, after))
        assert head_after["alert_ts"][0] == T0 + 12 * DAY and head_after["flags"][0] == 1
        history = ("offset", "partition", "count", "first_ts")
        assert [head_after[f][0] for f in history] == [head_before[f][0] for f in history]
        assert after[STORED_HEADER_BYTES:] == before[STORED_HEADER_BYTES:]
        assert 0 < quiet.client.ttl(quiet.window_key("a")) <= 100, "silence is not activity: no new retention"
        assert not quiet.client.exists(quiet.window_key("b")), "no window made of alert state alone"
        assert quiet.client.ttl(quiet.window_key("c")) > 3000, "c's own event wrote its window"
    finally:
        for key in store.client.scan_iter(f"h{unique}:*"):
            store.client.delete(key)


def _snapshot(client: redis.Redis, prefix: str) -> dict[bytes, object]:
    """Every key but the undo records, with its value (strings, sorted sets, hashes)."""
    out: dict[bytes, object] = {}
    for key in client.scan_iter(f"{prefix}:*"):
        if b":undo:" in key or key.endswith(b":version"):  # bookkeeping of writes, not state
            continue
        kind = client.type(key)
        out[key] = (client.get(key) if kind == b"string" else client.zrange(key, 0, -1, withscores=True)
                    if kind == b"zset" else client.hgetall(key))
    return out


def _stream_batches(seed: int) -> list[EventBatch]:
    """A simulated stream in batches, with what a real one brings: late events, repeated
    event_ids, a redelivered batch (the same offsets again), two partitions."""
    history = history_from_table(history_table(simulate(40, seed=seed)), "sim")
    order = np.argsort(history.ts, kind="stable")
    rng = np.random.default_rng(seed)
    for i in rng.choice(len(order) - 5, size=len(order) // 20, replace=False):
        order[i], order[i + 3] = order[i + 3], order[i]  # a little out of order
    codes = history.codes("coarse")
    tags = np.array([event_tag(f"e{i}") for i in range(len(history.ts))], dtype=np.uint32)
    customers = [str(history.customer_ids[c]) for c in history.customer[order]]
    partition = np.array([sum(map(ord, c)) % 2 for c in customers], dtype=np.int64)
    repeated = rng.random(len(order)) < 0.03  # the same event_id again, at a later offset
    batches, offset = [], 0
    for start in range(0, len(order), 61):
        rows = np.arange(start, min(start + 61, len(order)))
        rows = np.concatenate([rows, rows[repeated[rows]]])
        n = len(rows)
        batches.append(EventBatch([customers[r] for r in rows], partition[rows],
                                  np.arange(offset, offset + n, dtype=np.int64), history.ts[order[rows]],
                                  codes[order[rows]], codes[order[rows]], tags[order[rows]]))
        offset += n
    return [*batches[:4], batches[3], *batches[4:]]  # batch 3 delivered twice


def test_a_write_stores_what_its_preview_computed_which_equals_applying_the_events(
    store: StateStore, unique: str
) -> None:
    """The same stream through preview and write, once storing the previewed windows and once
    applying the events again in the write: every key ends the same, and each previewed
    write was stored as computed."""
    def new_store(prefix: str) -> StateStore:
        return StateStore(store.client, prefix, 6, 2 * DAY, 3600, silence_marks=(10 * DAY, 30 * DAY))

    computed, applied_again = new_store(f"f{unique}"), new_store(f"g{unique}")
    try:
        before: dict[str, PendingWrite | None] = {"f": None, "g": None}
        stream = _stream_batches(seed=4)
        for events in stream:
            seen, pending = computed.preview(events, before["f"])
            seen_again, pending_again = applied_again.preview(events, before["g"])
            assert seen.customers == seen_again.customers and seen.status.tolist() == seen_again.status.tolist()
            assert seen.records.tobytes() == seen_again.records.tobytes()
            n = len(seen.customers)
            updates = alerts(list(range(n)), [i % 3 == 0 for i in range(n)], [int(events.ts.max())] * n)
            pending.set_updates(updates)
            pending_again.set_updates(updates)
            pending_again.read = None  # the write applies the events again
            before = {"f": pending, "g": pending_again}
        assert computed.write(before["f"]) and not applied_again.write(before["g"])
        assert computed.write(before["f"]) is False, "once stored, it is applied again: a replay"
        got, expected = _snapshot(store.client, computed.prefix), _snapshot(store.client, applied_again.prefix)
        customers = {c for events in stream for c in events.customer_ids}
        assert sum(key.endswith(b":w") for key in got) == len(customers)
        assert {k[len(computed.prefix):]: v for k, v in got.items()} == {
            k[len(applied_again.prefix):]: v for k, v in expected.items()}
    finally:
        for key in store.client.scan_iter(f"[fg]{unique}:*"):
            store.client.delete(key)


def test_a_write_after_another_writer_applies_its_events_to_what_that_one_stored(store: StateStore) -> None:
    """A former owner of the partition writing late, or an erasure, between a preview and its
    write: the write must not put back what it read."""
    store.apply(batch([("a", i, T0 + i, "A", f"e{i}") for i in range(3)]))
    _, late_writer = store.preview(batch([("a", 3, T0 + 3, "A", "e3")]))
    store.apply(batch([("a", i, T0 + i, "A", f"e{i}") for i in range(3, 6)]))  # the new owner moved on
    assert store.write(late_writer) is False
    assert (len(store.raw_value("a") or b"") - STORED_HEADER_BYTES) // 16 == 6, "e4 and e5 kept"

    _, pending = store.preview(batch([("a", 6, T0 + 6, "A", "e6")]))
    store.erase("a", 0, 7)  # the partition's end when the erasure was asked: e6 was produced before it
    assert store.write(pending) is False
    assert store.erased(["a"]) == {"a"}, "the batch in flight before the erasure brings nothing back"


def test_a_write_whose_transaction_never_committed_is_rolled_back_whole(store: StateStore, unique: str) -> None:
    prefix = f"u{unique}"
    undoing = StateStore(store.client, prefix, 6, 2 * DAY, 3600, silence_marks=(10 * DAY, 30 * DAY), keeps_undo=True)
    try:
        undoing.apply(batch([("a", 0, T0, "A", "e0"), ("b", 1, T0 + DAY, "B", "e1")]))
        undoing.apply(batch([("c", 0, T0, "C", "x0")], partition=1))
        before = _snapshot(store.client, prefix)
        # the next write (offsets 2..3 of partition 0): a grows, d is new, the clock passes a's mark
        # and b's, and a's alert state changes; its transaction then dies
        later = batch([("a", 2, T0 + 40 * DAY, "A", "e2"), ("d", 3, T0 + 40 * DAY, "D", "e3")])
        applied, pending = undoing.preview(later)
        assert applied.due.size == 4, "a and b pass both marks; b leaves the sorted set"
        assert applied.customers[2] == "b", "due, and scored for its silence alone"
        pending.set_updates(alerts([0, 2], [True, True], [T0 + 40 * DAY, T0 + 40 * DAY]))
        undoing.write(pending)
        assert _snapshot(store.client, prefix) != before
        assert undoing.rollback(0, committed_offset=2) == 3, "a's and d's windows and b's alert state restored"
        assert _snapshot(store.client, prefix) == before, "windows, sorted set, clock: as before the write"
        assert undoing.rollback(0, committed_offset=2) == -1, "the undo record is used once"
        # the same write committed: a member given the partition keeps it
        undoing.write(pending)
        after = _snapshot(store.client, prefix)
        assert undoing.rollback(0, committed_offset=4) == -1 and _snapshot(store.client, prefix) == after
        assert undoing.rollback(1, committed_offset=1) == -1, "partition 1's write committed (offset 0): it stands"
        assert store.client.exists(undoing.window_key("c"))
    finally:
        for key in store.client.scan_iter(f"{prefix}:*"):
            store.client.delete(key)


def test_a_sweep_between_a_write_and_its_commit_leaves_the_rollback_whole(store: StateStore, unique: str) -> None:
    """`seqscore sweep` moves a served partition's clock while the serving member's last write
    waits for its commit (audit B3): the sweep's write, without events, used to replace that
    write's undo record with one no rollback applies, so a crash then left state without outputs."""
    prefix = f"s{unique}"
    undoing = StateStore(store.client, prefix, 6, 2 * DAY, 3600, silence_marks=(10 * DAY,), keeps_undo=True)
    sweeping = StateStore(store.client, prefix, 6, 2 * DAY, 3600, silence_marks=(10 * DAY,), keeps_undo=True)
    try:
        undoing.apply(batch([("a", 0, T0, "A", "e0")]))
        before = _snapshot(store.client, prefix)
        undoing.apply(batch([("a", 1, T0 + DAY, "A", "e1"), ("b", 2, T0 + DAY, "B", "e2")]))
        sweeping.apply(EventBatch.empty(), clocks={0: T0 + 12 * DAY})  # passes a's mark
        assert undoing.rollback(0, committed_offset=1) == 2, "a's and b's windows restored"
        assert _snapshot(store.client, prefix) == before, "as before the uncommitted write"
    finally:
        for key in store.client.scan_iter(f"{prefix}:*"):
            store.client.delete(key)


def test_new_events_at_offsets_the_state_has_passed_are_applied_and_replays_are_not(store: StateStore) -> None:
    """Audit B5: after a topic is re-created (or its offsets reset to a copy), new events come at
    offsets the windows already passed. They were taken for replays and dropped, silently. A
    replay is found in its window by its time and tag; these are not, so they are applied, and
    `behind_state` says so (the scorer counts and logs them). A tombstone keeps its offsets."""
    store.apply(batch([("a", 10, T0, "A", "e10"), ("a", 11, T0 + 60, "B", "e11"), ("b", 12, T0, "A", "e12")]))
    store.erase("b", 0, 13)
    seen = store.apply(batch([("a", 11, T0 + 60, "B", "e11"),  # a replay after a crash
                              ("a", 0, T0 + 120, "C", "new0"),  # offset 0 of a re-created topic
                              ("a", 1, T0 + 180, "D", "new1"),
                              ("b", 12, T0, "A", "e12"),  # a replay of an erased customer's event
                              ("b", 2, T0 + 120, "C", "new2")]))  # before the erasure's offset: stays erased
    assert seen.status.tolist() == [REPLAY, APPLIED, APPLIED, REPLAY, REPLAY]
    assert seen.behind_state.tolist() == [False, True, True, False, False]
    assert store.erased("b")
    again = store.apply(batch([("a", 0, T0 + 120, "C", "new0"), ("a", 1, T0 + 180, "D", "new1"),  # replayed
                               ("a", 2, T0 + 240, "E", "new2")]))
    assert again.status.tolist() == [REPLAY, REPLAY, APPLIED]
    assert again.behind_state.tolist() == [False, False, True], "the window keeps the old offset until passed"
    window = store.apply(batch([("a", 12, T0 + 300, "F", "new3")]))
    assert window.status.tolist() == [APPLIED], "past the old offsets, the ordinary path"
    assert window.headers["n_records"][0] == 6


def test_a_replay_whose_record_was_trimmed_away_is_still_a_replay(store: StateStore) -> None:
    """A group reset to the earliest offset (or its committed offsets expired) reads the whole
    topic again. Events trimmed out of a full window are not found in it; taken for new events
    behind the state, each would have been scored and emitted again, however old."""
    history = [("a", i, T0 + 60 * i, "A", f"e{i}") for i in range(9)]  # capacity 6: e0..e2 trimmed
    store.apply(batch(history))
    again = store.apply(batch(history))
    assert again.status.tolist() == [REPLAY] * 9
    assert not again.behind_state.any()
    late_new = store.apply(batch([("a", 1, T0 + 60 * 4 + 1, "N", "n1")]))
    assert late_new.status.tolist() == [LATE_INSERTED] and late_new.behind_state.tolist() == [True], (
        "newer than the window's oldest record: new")


def test_a_late_write_of_a_member_replaced_while_paused_is_refused(store: StateStore, unique: str) -> None:
    """Audit B2: a member paused past its session (GC, a frozen VM) stores its batch after the
    partition's new owner checked it. The new owner then took the batch for a replay and emitted
    nothing, while the paused member's transaction was aborted: outputs lost. Each owner claims
    the partition before its check, and the former owner's late write is refused."""
    prefix = f"z{unique}"
    paused = StateStore(store.client, prefix, 6, 2 * DAY, 3600, keeps_undo=True)
    successor = StateStore(store.client, prefix, 6, 2 * DAY, 3600, keeps_undo=True)
    try:
        paused.claim(0)
        paused.apply(batch([("a", 0, T0, "A", "e0")]))  # committed
        late = batch([("a", 1, T0 + 60, "B", "e1")])
        _, pending = paused.preview(late)  # scored and sent; the member freezes before storing it
        assert successor.claim(0) == 2
        assert successor.rollback(0, committed_offset=1) == -1, "nothing uncommitted was stored"
        with pytest.raises(Fenced):
            paused.write(pending)
        with pytest.raises(Fenced):
            paused.preview(late, before=pending)
        seen, written = successor.preview(late)
        assert seen.status.tolist() == [APPLIED], "the successor scores the batch and emits it"
        successor.write(written)
        assert successor.raw_value("a") is not None and paused.claims == {0: 1}
        unfenced = StateStore(store.client, prefix, 6, 2 * DAY, 3600, keeps_undo=True)
        unfenced.apply(EventBatch.empty(), clocks={0: T0 + DAY})  # a writer without claims (a sweep) is not fenced
    finally:
        for key in store.client.scan_iter(f"{prefix}:*"):
            store.client.delete(key)


def test_two_event_ids_with_the_same_crc32_are_two_events(store: StateStore) -> None:
    """Audit A15.2: "plumless" and "buckeroo" share a CRC32 (1306201125), so the second event
    was dropped as a repeat of the first, with no prediction, and such ids are easy to make. A
    repeat must now match the stored event's time as well as its tag; that still holds for
    state whose tags stay CRC32 (written before tags were keyed)."""
    assert event_tag("plumless", LEGACY_TAG_KEY) == event_tag("buckeroo", LEGACY_TAG_KEY)
    first = store.apply(batch([("a", 0, T0, "A", "plumless")], tag_key=LEGACY_TAG_KEY))
    second = store.apply(batch([("a", 1, T0 + 60, "B", "buckeroo")], tag_key=LEGACY_TAG_KEY))
    repeated = store.apply(batch([("a", 2, T0 + 60, "B", "buckeroo"), ("a", 3, T0, "A", "plumless")],
                                 tag_key=LEGACY_TAG_KEY))
    assert (first.status.tolist(), second.status.tolist()) == ([APPLIED], [APPLIED])
    assert repeated.status.tolist() == [DUPLICATE, DUPLICATE], "a producer's retry is still one event"
    assert int(repeated.headers["count"][0]) == 2


def test_a_batch_whose_clock_move_finds_more_due_than_a_page_defers_its_partition(
    store: StateStore, unique: str
) -> None:
    """A partition with events cannot stop its clock short of them: the read says it is deferred
    (the scorer then holds its events back and moves its clock by pages first)."""
    quiet = StateStore(store.client, f"p{unique}", 6, 2 * DAY, 3600, silence_marks=(10 * DAY,), max_due=2)
    try:
        quiet.apply(batch([(f"c{i}", i, T0 + i, "A", f"e{i}") for i in range(5)]))
        jump = batch([("z", 5, T0 + 11 * DAY, "B", "e5")])
        seen, _ = quiet.preview(jump)
        assert seen.deferred.tolist() == [0]
        assert quiet.preview(batch([("z", 5, T0 + 10 * DAY + 1, "B", "e5")]))[0].deferred.tolist() == [0]
        assert quiet.preview(batch([("z", 5, T0 + 10 * DAY, "B", "e5")]))[0].deferred.tolist() == [], "one due fits"
        moved, _ = quiet.preview(EventBatch.empty(), clocks={0: T0 + 11 * DAY - 1})
        assert moved.deferred.tolist() == [] and len(moved.due) == 1, "without events: a page, short of c1"
    finally:
        for key in store.client.scan_iter(f"p{unique}:*"):
            store.client.delete(key)


def test_more_customers_due_within_one_second_than_a_page_holds_are_all_found(
    store: StateStore, unique: str
) -> None:
    """Audit B6, its last edge: a batch's events move the clock one second, past more silence
    starts of that one second than a page holds. The partition was deferred, again and again,
    since no smaller move exists, and the scorer skipped those past the page. Within one
    second every due customer is taken, however many, as a move without events does."""
    quiet = StateStore(store.client, f"q{unique}", 6, 2 * DAY, 3600, silence_marks=(10 * DAY,), max_due=2)
    try:
        quiet.apply(batch([(f"c{i}", i, T0, "A", f"e{i}") for i in range(5)]))  # five silences start at T0
        quiet.apply(EventBatch.empty(), clocks={0: T0 + 10 * DAY - 1})  # nobody due yet
        seen, _ = quiet.preview(batch([("z", 5, T0 + 10 * DAY, "B", "e5")]))
        assert seen.deferred.tolist() == []
        assert sorted(seen.customers[i] for i in seen.due["customer"].tolist()) == [f"c{i}" for i in range(5)]
        assert quiet.preview(batch([("z", 5, T0 + 10 * DAY + 1, "B", "e5")]))[0].deferred.tolist() == [0], (
            "wider moves still page")
    finally:
        for key in store.client.scan_iter(f"q{unique}:*"):
            store.client.delete(key)


def test_each_state_has_its_own_tag_key_shared_by_its_members(store: StateStore, unique: str) -> None:
    """Audit A15.2: tags are keyed, so nobody without the key can make ids that collide. The
    key lives with the state: every member and restart on the same prefix gets the same one;
    state that an older version wrote (no key, but written) keeps CRC32 so its replays are
    still found."""
    fresh, other, old = f"k{unique}", f"l{unique}", f"m{unique}"
    try:
        store.client.hincrby(f"{old}:version", "0", 1)  # what an older version's writes leave
        first = StateStore(store.client, fresh, 6, 2 * DAY, 3600).tag_key()
        assert len(first) == TAG_KEY_BYTES
        assert StateStore(store.client, fresh, 6, 2 * DAY, 3600).tag_key() == first, "another member, same key"
        assert StateStore(store.client, other, 6, 2 * DAY, 3600).tag_key() != first
        assert StateStore(store.client, old, 6, 2 * DAY, 3600).tag_key() == LEGACY_TAG_KEY
    finally:
        for prefix in (fresh, other, old):
            for key in store.client.scan_iter(f"{prefix}:*"):
                store.client.delete(key)


def test_a_script_that_fails_inside_redis_is_a_state_script_error_not_an_outage(store: StateStore) -> None:
    """The loop retries Redis errors for as long as an outage lasts; a script's own error is a
    bug that no wait ends, so it comes out typed and is not retried."""
    with pytest.raises(StateScriptError), script_errors():
        store.client.eval("return nil + 1", 0)
    with pytest.raises(redis.ConnectionError), script_errors():
        raise redis.ConnectionError("an outage stays what it is")
