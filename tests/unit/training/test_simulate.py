from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from training.history import history_table, profiles_table, write_table
from training.simulate import COARSE, DAY, FINE_COUNTS, SimulatedHistory, simulate, summarize


@pytest.fixture(scope="module")
def history() -> SimulatedHistory:
    return simulate(6000, seed=3)


def test_same_seed_same_history_other_seed_differs() -> None:
    a, b, c = simulate(300, seed=5), simulate(300, seed=5), simulate(300, seed=6)
    assert np.array_equal(a.event_ts, b.event_ts) and np.array_equal(a.coarse, b.coarse)
    assert list(a.customer_ids) == list(b.customer_ids)
    assert not np.array_equal(a.event_ts[:50], c.event_ts[:50])


def test_activities_match_the_source_documents(history: SimulatedHistory) -> None:
    assert len(COARSE) == 8 and sum(FINE_COUNTS) == 22
    assert set(np.unique(history.coarse)) == set(range(8))
    details = set(history.detail_names())
    assert 20 <= len(details) <= 22
    assert all(d[0] in COARSE for d in details)


def test_events_lie_in_range_sorted_by_time(history: SimulatedHistory) -> None:
    assert history.event_ts.min() >= history.start and history.event_ts.max() < history.end
    assert (np.diff(history.event_ts) >= 0).all()


def test_counts_per_customer_are_skewed(history: SimulatedHistory) -> None:
    counts = np.bincount(history.event_customer)
    counts = counts[counts > 0]
    assert 0.15 < (counts == 1).mean() < 0.45, "many customers have a single event"
    assert (counts <= 25).mean() > 0.7, "most have 25 or fewer"
    assert counts.max() > 100, "a tail above 100"


def test_gaps_are_heavy_tailed(history: SimulatedHistory) -> None:
    order = np.lexsort((history.event_ts, history.event_customer))
    same = history.event_customer[order][1:] == history.event_customer[order][:-1]
    gaps = np.diff(history.event_ts[order])[same] / DAY
    assert np.percentile(gaps, 99) > 10 * np.median(gaps)


def test_weekends_are_quieter(history: SimulatedHistory) -> None:
    weekday = ((history.event_ts // 86_400) + 3) % 7
    per_day = np.bincount(weekday, minlength=7)
    assert per_day[5:].mean() < 0.7 * per_day[:5].mean()


def test_churners_fall_silent_and_show_their_patterns(history: SimulatedHistory) -> None:
    last = np.zeros(len(history.customer_ids), dtype=np.int64)
    np.maximum.at(last, history.event_customer, history.event_ts)
    seen = np.bincount(history.event_customer, minlength=len(last)) > 0
    quiet = last < history.end - 120 * DAY
    # churners who left within the last 120 days are not quiet long enough yet
    assert quiet[seen & history.churned].mean() > 0.6
    assert history.churned[seen & quiet].mean() > 0.8, "quiet customers are churners"
    # support contacts are more common among churners
    support = np.bincount(history.event_customer, weights=history.coarse == 1, minlength=len(last))
    total = np.bincount(history.event_customer, minlength=len(last))
    share = support / np.maximum(total, 1)
    assert share[seen & history.churned].mean() > 1.3 * share[seen & ~history.churned].mean()


def test_more_than_the_last_activity_matters(history: SimulatedHistory) -> None:
    acc = summarize(history)["next_action_accuracy_held_out"]
    assert isinstance(acc, dict)
    assert acc["ngram4"] > acc["markov"] + 0.03
    assert acc["generator_oracle"] > acc["ngram4"] + 0.02
    assert acc["markov"] > acc["most_frequent"]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_history_files_have_the_contract_columns(history: SimulatedHistory, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"events{suffix}"
    write_table(history_table(history), path)
    write_table(profiles_table(history), tmp_path / f"profiles{suffix}")
    table = pq.read_table(path) if suffix == ".parquet" else pacsv.read_csv(path)
    assert table.num_rows == history.n_events
    assert {"event_id", "customer_id", "ts", "activity", "activity_detail"} <= set(table.column_names)
    if suffix == ".csv":
        first = path.read_text().splitlines()[1]
        assert "Z" in first.split(",")[2]
