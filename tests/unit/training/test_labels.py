from __future__ import annotations

import numpy as np

from state.encoding import DAY
from training.labels import (
    MAX_MARK_WEIGHT,
    NO_NEXT,
    SILENCE_MARKS_DAYS,
    churn_labels,
    next_event_ts,
    sample_score_times,
    silence_points,
    time_split,
    training_chunks,
)

D = int(DAY)


def test_churn_label_rules() -> None:
    score = np.array([0, 0, 0, 0, 50 * D])
    nxt = np.array([10 * D, 130 * D, NO_NEXT, NO_NEXT, NO_NEXT])
    end = 200 * D
    label, known = churn_labels(score, nxt, end, 120)
    assert label.tolist()[:3] == [0, 1, 1]  # returns; comes back too late; silent to the end
    assert known.tolist() == [True, True, True, True, True]
    label, known = churn_labels(np.array([150 * D]), np.array([NO_NEXT]), end, 120)
    assert not known[0], "silent but the data ends before the horizon: censored, never churn"
    label, known = churn_labels(np.array([150 * D]), np.array([160 * D]), end, 120)
    assert known[0] and label[0] == 0, "a return inside the data is known even near the end"


def test_events_at_or_after_the_data_end_are_unseen() -> None:
    label, known = churn_labels(np.array([0]), np.array([100 * D]), 50 * D, 30)
    assert known[0] and label[0] == 1


def test_next_event_ts_stops_at_each_customer() -> None:
    ts = np.array([1, 2, 3, 10, 11])
    start = np.array([True, False, False, True, False])
    assert next_event_ts(ts, start).tolist() == [2, 3, NO_NEXT, 11, NO_NEXT]


def test_score_times_fall_in_the_silence_after_each_event() -> None:
    rng = np.random.default_rng(0)
    ts = np.arange(0, 1000) * 5 * D
    nxt = np.append(ts[1:], NO_NEXT)
    end = int(ts[-1] + 400 * D)
    score = sample_score_times(ts, nxt, end, rng)
    assert (score >= ts).all() and (score < np.minimum(nxt, end)).all()
    assert 0.3 < (score == ts).mean() < 0.8
    assert (score[-1] - ts[-1]) >= 0


def test_every_event_is_a_training_target_once() -> None:
    lengths = [1, 3, 20, 57, 120]
    start = np.concatenate([np.full(n, sum(lengths[:i])) for i, n in enumerate(lengths)])
    window = 20
    chunks = training_chunks(start, window)
    hits = np.zeros(len(start), dtype=int)
    for end, first in zip(chunks.ends, chunks.first_loss, strict=True):
        positions = end - (window - 1) + np.arange(window)
        valid = positions >= start[end]
        trained = positions[valid & (np.arange(window) >= first)]
        hits[trained] += 1
    assert (hits == 1).all()


def test_time_split_orders_the_cuts() -> None:
    t1, t2 = time_split(np.arange(1000), (0.7, 0.15, 0.15))
    assert 690 <= t1 <= 710 and 840 <= t2 <= 860


def test_silence_points_sit_at_each_mark_the_silence_reached_with_a_known_label() -> None:
    # one customer: events at day 0 and day 40, then nothing; the data ends at day 400
    ts = np.array([0, 40 * DAY], dtype=np.int64)
    nxt = np.array([40 * DAY, NO_NEXT], dtype=np.int64)
    points = silence_points(ts, nxt, 400 * DAY, 120.0, np.random.default_rng(0), per_mark=10)
    elapsed_days = sorted(((points.score_ts - ts[points.ends]) // DAY).tolist())
    # after day 0: marks 7, 14, 30 fit before the return at day 40 (labels 0); after day 40:
    # marks up to 240 days fit with the horizon seen (labels 1), the 180-day mark included
    assert elapsed_days == sorted([7, 14, 30, *SILENCE_MARKS_DAYS])
    assert points.label[points.ends == 0].tolist() == [0.0, 0.0, 0.0]
    assert set(points.label[points.ends == 1].tolist()) == {1.0}
    assert set(points.weight.tolist()) == {MAX_MARK_WEIGHT}, "one point per mark of 10 allowed: the cap"


def test_silence_points_per_mark_are_capped_by_a_draw() -> None:
    ts = np.arange(100, dtype=np.int64) * 1000 * DAY  # 100 customers' last events, far apart
    nxt = np.full(100, NO_NEXT, dtype=np.int64)
    points = silence_points(ts, nxt, 200_000 * DAY, 120.0, np.random.default_rng(1), per_mark=20)
    per_mark = np.bincount(((points.score_ts - ts[points.ends]) // DAY).astype(np.int64))
    assert set(per_mark[per_mark > 0].tolist()) == {20} and set(points.weight.tolist()) == {1.0}
