"""Examples and labels from a history sorted by (customer, time).

Next action: the activity of the customer's following event. Churn at a scoring time
s: 1 when the customer has no event in [s, s + horizon), 0 when they have one; when
the data ends before s + horizon with no event after s, the example is censored
(excluded, never labelled churn).

Churn is scored both at events and during silence, so training samples scoring times
between events and after the last one (at silence marks), labelled by the horizon
after that time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from state.encoding import DAY
from training.defaults import SILENCE_MARKS_DAYS

NO_NEXT = np.iinfo(np.int64).max
MAX_MARK_WEIGHT = 4.0


def next_event_ts(ts: NDArray[np.int64], seq_start: NDArray[np.bool_]) -> NDArray[np.int64]:
    """Time of each event's successor of the same customer; NO_NEXT after the last."""
    out = np.full(len(ts), NO_NEXT, dtype=np.int64)
    if len(ts) > 1:
        out[:-1] = np.where(seq_start[1:], NO_NEXT, ts[1:])
    return out


def churn_labels(
    score_ts: NDArray[np.int64], next_ts: NDArray[np.int64], data_end: int, horizon_days: float
) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """(label, known) for scoring at `score_ts` when the next event comes at `next_ts`.

    The next event must not lie before the scoring time (the caller scores within gaps).
    Events at or after `data_end` are treated as unseen.
    """
    horizon = horizon_days * DAY
    seen_next = next_ts < data_end
    returns = seen_next & (next_ts < score_ts + horizon)
    silent_long = (seen_next & (next_ts >= score_ts + horizon)) | (~seen_next & (score_ts + horizon <= data_end))
    known = returns | silent_long
    return silent_long.astype(np.float32), known


def sample_score_times(
    ts: NDArray[np.int64],
    next_ts: NDArray[np.int64],
    data_end: int,
    rng: np.random.Generator,
    at_event_share: float = 0.5,
) -> NDArray[np.int64]:
    """A scoring time per event: at the event itself, or later in the silence after it
    (a silence mark with jitter, before the next event and before the end of the data)."""
    n = len(ts)
    marks = np.array(SILENCE_MARKS_DAYS, dtype=np.float64)[rng.integers(0, len(SILENCE_MARKS_DAYS), n)]
    offset = marks * DAY * rng.uniform(0.8, 1.2, n)
    limit = np.minimum(next_ts, data_end).astype(np.float64) - ts - 1
    at_event = (rng.random(n) < at_event_share) | (limit <= 0)
    offset = np.where(offset < limit, offset, rng.uniform(0, 1, n) * np.maximum(limit, 0))
    return np.where(at_event, ts, ts + offset.astype(np.int64))


@dataclass
class SilencePoints:
    """Scoring points in the silence after an event, as serving scores them: at a mark."""

    ends: NDArray[np.int64]  # the event the silence follows (index into the history)
    score_ts: NDArray[np.int64]
    label: NDArray[np.float32]
    weight: NDArray[np.float32]  # marks with fewer points than `per_mark` weigh more, up to MAX_MARK_WEIGHT


def silence_points(
    ts: NDArray[np.int64],
    next_ts: NDArray[np.int64],
    data_end: int,
    horizon_days: float,
    rng: np.random.Generator,
    per_mark: int,
) -> SilencePoints:
    """A point at every silence mark each event's silence reached with a known label, at most
    `per_mark` per mark (a uniform draw among them).

    Serving scores a quiet customer at each mark, so the churn head must learn how risk
    grows with the silence; points inside gaps alone are mostly short ones (few gaps are
    long) and the silence after a customer's last event is one point among many. Capping
    each mark keeps the frequent short marks from outnumbering the rare long ones; drawing
    within a mark leaves the risk given the elapsed time unbiased, and so does weighting the
    rarer long marks up: a weight that depends on the elapsed time alone shifts the model's
    effort towards long silences, not its estimate of the risk at a given silence.
    """
    ends, scores, labels, weights = [], [], [], []
    for mark in SILENCE_MARKS_DAYS:
        score = ts + int(mark * DAY)
        label, known = churn_labels(score, next_ts, data_end, horizon_days)
        eligible = np.flatnonzero(known & (score < np.minimum(next_ts, data_end)))
        if len(eligible) > per_mark:
            eligible = np.sort(rng.choice(eligible, per_mark, replace=False))
        ends.append(eligible)
        scores.append(score[eligible])
        labels.append(label[eligible])
        weights.append(np.full(len(eligible), min(per_mark / max(len(eligible), 1), MAX_MARK_WEIGHT)))
    return SilencePoints(
        np.concatenate(ends).astype(np.int64),
        np.concatenate(scores).astype(np.int64),
        np.concatenate(labels).astype(np.float32),
        np.concatenate(weights).astype(np.float32),
    )


def time_split(ts: NDArray[np.int64], fractions: tuple[float, float, float]) -> tuple[int, int]:
    """Cut times (T1, T2): the first fraction of events (by time) trains, the next validates."""
    train, val, _ = fractions
    t1 = int(np.quantile(ts, train))
    t2 = int(np.quantile(ts, min(train + val, 1.0)))
    return t1, max(t2, t1 + 1)


def customer_fold(
    customer: NDArray[np.int64], customer_ids: NDArray[np.str_], fractions: tuple[float, float, float], seed: int
) -> NDArray[np.int64]:
    """Per event: 0 train, 1 validation, 2 test, by a seeded draw per customer."""
    rng = np.random.default_rng(seed + 104_729)
    draw = rng.random(len(customer_ids))
    fold = np.where(draw < fractions[0], 0, np.where(draw < fractions[0] + fractions[1], 1, 2))
    return fold[customer]


@dataclass
class Chunks:
    """Training windows: each ends at `ends[i]` and trains the positions from `first_loss[i]` on
    (window coordinates), so every event is a training target once, with long context."""

    ends: NDArray[np.int64]
    first_loss: NDArray[np.int64]


def training_chunks(customer_start: NDArray[np.int64], window: int) -> Chunks:
    """Chunk each customer's history: one window if it fits, else windows every window/2 events."""
    n = len(customer_start)
    if n == 0:
        return Chunks(np.zeros(0, np.int64), np.zeros(0, np.int64))
    stride = max(window // 2, 1)
    last = np.ones(n, dtype=bool)
    last[:-1] = customer_start[1:] != customer_start[:-1]
    ends_list, first_list = [], []
    seq_last = np.flatnonzero(last)
    seq_first = customer_start[seq_last]
    length = seq_last - seq_first + 1
    # windows end at first+window-1, then every stride events; the final one ends at the last event
    short = length <= window
    ends_list.append(seq_last[short])
    first_list.append(np.full(int(short.sum()), 0, dtype=np.int64))
    for first, total in zip(seq_first[~short], length[~short], strict=True):
        chunk_ends = np.arange(first + window - 1, first + total, stride)
        if chunk_ends[-1] != first + total - 1:
            chunk_ends = np.append(chunk_ends, first + total - 1)
        new = np.diff(np.concatenate([[first - 1], chunk_ends]))  # events new to each window
        ends_list.append(chunk_ends)
        first_list.append(np.maximum(window - new, 0))
    return Chunks(np.concatenate(ends_list).astype(np.int64), np.concatenate(first_list).astype(np.int64))


def as_of_points(
    ts: NDArray[np.int64],
    seq_start: NDArray[np.bool_],
    dates: NDArray[np.int64],
    label_end: int,
    horizon_days: float,
) -> SilencePoints:
    """Every customer with an event before each date, scored at that date from those events:
    the way `evaluate --as-of` and a daily batch score a customer base. Labels come from
    [date, date + horizon) and must be known before `label_end`; weights are 1."""
    nxt = next_event_ts(ts, seq_start)
    ends, scores, labels = [], [], []
    for date in np.asarray(dates, dtype=np.int64):
        before = ts < date
        last_before = np.flatnonzero(before & (nxt >= date))
        score = np.full(len(last_before), date, dtype=np.int64)
        label, known = churn_labels(score, nxt[last_before], label_end, horizon_days)
        ends.append(last_before[known])
        scores.append(score[known])
        labels.append(label[known])
    return SilencePoints(
        np.concatenate(ends).astype(np.int64) if ends else np.zeros(0, np.int64),
        np.concatenate(scores).astype(np.int64) if scores else np.zeros(0, np.int64),
        np.concatenate(labels).astype(np.float32) if labels else np.zeros(0, np.float32),
        np.ones(sum(len(e) for e in ends), dtype=np.float32),
    )


def as_of_dates(ts: NDArray[np.int64], start: int, end: int, count: int) -> NDArray[np.int64]:
    """`count` dates at evenly spaced quantiles of the event times in [start, end) (as-of
    snapshots where the customers are), none when that period holds no event."""
    inside = ts[(ts >= start) & (ts < end)]
    if len(inside) == 0 or count <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.quantile(inside, (np.arange(count) + 1) / (count + 1)).astype(np.int64))
