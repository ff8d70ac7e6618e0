"""Scoring silence: customers who stop acting send no events, so their risk is scored when
their silence crosses a mark (e.g. 14, 30, 60 days), in event time.

Each partition has an event-time clock: the newest event time its stream has reached. The
state store reports which customers' `last event + mark` the batch's clock move passed
(`AppliedBatch.due`). Whether such a customer was still silent at the mark is decided here,
from the stream order alone: the mark fires unless the customer's own next event on the
partition comes before the stream reached the mark's time. The answer depends on the order
of the partition, never on where batches begin and end, so a replay after a crash fires
the same marks at the same places.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from numpy.typing import NDArray

from state.encoding import DAY, RawWindows, window_index
from state.store import APPLIED, LATE_INSERTED, TOO_LATE, AppliedBatch, EventBatch
from training.defaults import SILENCE_MARKS_DAYS

# statuses of an event that is the customer acting again (not a replay of a stored event, not
# a repeated record): it ends a silence
RETURNS = (APPLIED, LATE_INSERTED, TOO_LATE)


def marks_for(configured_days: list[int] | None, horizon_days: float) -> tuple[int, ...]:
    """Silence marks in seconds: as configured, or the training marks within the churn horizon."""
    days = configured_days if configured_days is not None else [d for d in SILENCE_MARKS_DAYS if d <= horizon_days]
    return tuple(sorted({int(d * DAY) for d in days}))


@dataclass
class Silences:
    """The due silences that fire, in the order they happen."""

    customer: NDArray[np.int64]  # index into AppliedBatch.customers
    as_of: NDArray[np.int64]  # last event + mark: the scoring time
    mark: NDArray[np.int64]  # seconds
    before_event: NDArray[np.int64]  # the batch event they come just before (len(batch): after all)
    raw: RawWindows

    def __len__(self) -> int:
        return len(self.customer)


def fired(
    applied: AppliedBatch, batch: EventBatch, marks: tuple[int, ...], event_windows: RawWindows, level: str
) -> Silences:
    """The silences of a batch that fire, with each customer's window as of the mark: those of
    stored customers (`applied.due`), and those that begin and reach a mark inside the batch
    (a batch may span more than a mark of event time). `event_windows`: each event's window."""
    stored = _stored_due(applied, batch, event_windows.ts.shape[1], level)
    inside = _inside_batch(applied, batch, marks, event_windows)
    both = _concat(stored, inside)
    order = np.lexsort((both.customer, both.as_of, both.before_event))
    return Silences(
        both.customer[order], both.as_of[order], both.mark[order], both.before_event[order], take_rows(both.raw, order)
    )


def _stored_due(applied: AppliedBatch, batch: EventBatch, window: int, level: str) -> Silences:
    """Due customers of the store: a mark fires unless the customer came back on the partition
    before the stream reached it."""
    due = applied.due
    n = len(batch)
    as_of = due["last_ts"].astype(np.int64) + due["mark"].astype(np.int64)
    customer = due["customer"].astype(np.int64)
    before = np.full(len(due), n, dtype=np.int64)
    keep = np.ones(len(due), dtype=bool)
    c0 = {int(p): int(c) for p, c in zip(applied.clocks["partition"], applied.clocks["c0"], strict=True)}
    for partition in np.unique(due["partition"]).tolist():
        rows = np.flatnonzero(due["partition"] == partition)
        on_partition = np.flatnonzero(batch.partition == partition)
        if not len(on_partition):  # the clock moved without events: all of them fire, after the batch
            continue
        # where, in stream order, the partition's clock first reaches each mark's time
        reached = np.maximum.accumulate(np.maximum(batch.ts[on_partition], c0.get(partition, 0)))
        at = np.searchsorted(reached, as_of[rows], side="left")
        before[rows] = np.where(at < len(on_partition), on_partition[np.minimum(at, len(on_partition) - 1)], n)
        # a replayed event (stored before a crash) is not a return: a clean run never sees it
        # here; nor is a repeated record (a producer's retry): the customer did nothing new
        returns = on_partition[np.isin(applied.status[on_partition], RETURNS)]
        first_own = np.full(len(applied.customers), n, dtype=np.int64)
        np.minimum.at(first_own, applied.customer_index[returns], returns)
        keep[rows] = first_own[customer[rows]] >= before[rows]
    rows = np.flatnonzero(keep)
    return Silences(
        customer=customer[rows],
        as_of=as_of[rows],
        mark=due["mark"][rows].astype(np.int64),
        before_event=before[rows],
        raw=_windows_at(applied, customer[rows], due["last_ts"][rows].astype(np.int64), as_of[rows], window, level),
    )


def _inside_batch(
    applied: AppliedBatch, batch: EventBatch, marks: tuple[int, ...], event_windows: RawWindows
) -> Silences:
    """Silences after an event of this batch that reach a mark before the customer's next event
    and before the batch's clock move ends."""
    n = len(batch)
    mark = np.asarray(marks, dtype=np.int64)
    c0 = dict(zip(applied.clocks["partition"].tolist(), applied.clocks["c0"].tolist(), strict=True))
    c1 = dict(zip(applied.clocks["partition"].tolist(), applied.clocks["c1"].tolist(), strict=True))
    found_event, found_mark, found_before = [], [], []
    for partition in np.unique(batch.partition).tolist() if len(mark) else []:
        on = np.flatnonzero(batch.partition == partition)
        reached = np.maximum.accumulate(np.maximum(batch.ts[on], c0.get(partition, 0)))
        # each event's customer's next return (a repeated or replayed record is none)
        returning = np.flatnonzero(np.isin(applied.status[on], RETURNS))
        customer = applied.customer_index[on][returning]
        by_customer = np.lexsort((returning, customer))
        same = customer[by_customer][1:] == customer[by_customer][:-1]
        next_own = np.full(len(on), len(on), dtype=np.int64)
        next_own[returning[by_customer[:-1][same]]] = returning[by_customer[1:][same]]
        starts = np.flatnonzero(applied.status[on] == APPLIED)  # in order: the customer's newest event
        as_of = batch.ts[on][starts, None] + mark[None, :]
        at = np.searchsorted(reached, as_of, side="left")
        fire = (at > starts[:, None]) & (at <= next_own[starts, None]) & ((at < len(on)) | (as_of <= c1[partition]))
        rows, which = np.nonzero(fire)
        found_event.append(on[starts[rows]])
        found_mark.append(mark[which])
        found_before.append(np.where(at[rows, which] < len(on), on[np.minimum(at[rows, which], len(on) - 1)], n))
    none = np.zeros(0, np.int64)
    event = np.concatenate(found_event) if found_event else none
    marks_hit = np.concatenate(found_mark) if found_mark else none
    raw = take_rows(event_windows, event)
    raw.score_ts = batch.ts[event] + marks_hit
    before = np.concatenate(found_before) if found_before else none
    return Silences(applied.customer_index[event], raw.score_ts.copy(), marks_hit, before, raw)


def take_rows(raw: RawWindows | Silences, rows: NDArray[np.int64]) -> Any:
    """The same arrays, at `rows`."""
    if isinstance(raw, Silences):
        return Silences(
            raw.customer[rows], raw.as_of[rows], raw.mark[rows], raw.before_event[rows], take_rows(raw.raw, rows)
        )
    return RawWindows(**{f.name: getattr(raw, f.name)[rows] for f in fields(RawWindows)})


def _concat(a: Silences, b: Silences) -> Silences:
    raw = RawWindows(
        **{f.name: np.concatenate([getattr(a.raw, f.name), getattr(b.raw, f.name)]) for f in fields(RawWindows)}
    )
    return Silences(
        np.concatenate([a.customer, b.customer]),
        np.concatenate([a.as_of, b.as_of]),
        np.concatenate([a.mark, b.mark]),
        np.concatenate([a.before_event, b.before_event]),
        raw,
    )


def _windows_at(
    applied: AppliedBatch,
    customer: NDArray[np.int64],
    last_ts: NDArray[np.int64],
    as_of: NDArray[np.int64],
    window: int,
    level: str,
) -> RawWindows:
    """Each customer's stored history up to their last event before the silence."""
    records = applied.records
    starts = applied.record_start[customer]
    n_records = applied.headers["n_records"].astype(np.int64)[customer]
    ts_all = records["ts"].astype(np.int64)
    # records after the silence began are this batch's own events (they come later in the stream)
    # records are grouped by customer and time-ordered within, so (customer, ts) is sorted
    owner = np.repeat(np.arange(len(applied.headers), dtype=np.int64), applied.headers["n_records"].astype(np.int64))
    upto = np.searchsorted((owner << 32) | ts_all, (customer << 32) | last_ts, side="right") - starts
    idx, real = window_index(starts + upto - 1, starts, window)
    codes_all = records["coarse" if level == "coarse" else "fine"].astype(np.uint32)
    safe = np.minimum(idx, max(len(ts_all) - 1, 0))
    ts = np.where(real, ts_all[safe] if len(ts_all) else 0, 0)
    codes = np.where(real, codes_all[safe] if len(codes_all) else 0, 0)
    total = applied.headers["count"].astype(np.int64)[customer]
    return RawWindows(
        ts=ts.astype(np.int64),
        codes=codes.astype(np.uint32),
        count=np.maximum(total - (n_records - upto), 1),
        first_ts=applied.headers["first_ts"].astype(np.int64)[customer],
        score_ts=as_of,
        gender=applied.gender[customer],
        age_group=applied.age_group[customer],
    )
