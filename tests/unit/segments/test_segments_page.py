"""The /segments page's pure parts: the query it accepts and what it renders from a snapshot."""

from __future__ import annotations

import re

import numpy as np
import pytest

from consumer.segments import scan as segments
from consumer.segments.page import PageContext, SegmentQuery, render, risk_histogram
from state.encoding import activity_code


def snapshot() -> segments.Snapshot:
    codes = [activity_code(n) for n in "ABC"]
    return segments.Snapshot(
        customer_ids=["c1", "c2", "c3", "c4"],
        last_codes=np.array([[0, codes[0], codes[1]], [codes[0], codes[0], codes[1]], [0, 0, codes[2]], [0, 0, 0]],
                            dtype=np.uint32),
        pred_code=np.array([codes[2], codes[2], codes[0], 0], dtype=np.uint32),
        churn_risk=np.array([0.9, 0.55, 0.95, 0.0], dtype=np.float32),
        pred_ts=np.array([100, 100, 100, 0], dtype=np.int64),
        last_ts=np.array([90, 90, 90, 0], dtype=np.int64),
        count=np.array([2, 3, 1, 0], dtype=np.int64),
    )


def test_a_query_round_trips_and_its_faults_name_the_field() -> None:
    query = SegmentQuery.parse("last=A%2C*%2CB&predicted=C&min_churn=0.5")
    assert query == SegmentQuery(["A", "*", "B"], "C", 0.5)
    assert SegmentQuery.parse(query.query_string()) == query
    assert SegmentQuery.parse("") == SegmentQuery([], None, 0.0)
    for bad, field in (("min_churn=x", "min_churn"), ("min_churn=1.5", "min_churn"), ("last=A,,B", "last"),
                       ("last=" + ",".join("A" * 9), "last")):
        with pytest.raises(ValueError, match=f"^{field}:"):
            SegmentQuery.parse(bad)


def test_the_page_counts_lists_and_plots_the_segment() -> None:
    view = snapshot()
    query = SegmentQuery(["*", "B"], "C", 0.5)
    rows = segments.select(view, query.last, query.predicted, query.min_churn)
    page = render(view, rows, query, PageContext(("A", "B", "C"), 0.8, "v1"), 0.0)
    assert re.search(r'<strong id="matched">2</strong> of <span id="total">4</span>', page)
    assert re.findall(r"<tr><td>(c\d)</td>", page) == ["c1", "c2"], "riskiest first"
    segment_bars = [int(n) for n in re.findall(r'class="seg" data-bin="\d+" data-count="(\d+)"', page)]
    assert sum(segment_bars) == 2 and segment_bars[18] == 1 and segment_bars[11] == 1
    assert 'href="/segments.csv?last=%2A%2CB&amp;predicted=C&amp;min_churn=0.5"' in page
    assert '<option value="C" selected>' in page and "alert 0.80" in page


def test_the_histogram_keeps_a_risk_of_one_in_the_last_bin() -> None:
    counts = risk_histogram(np.array([0.0, 0.049, 0.05, 1.0], dtype=np.float32))
    assert counts.tolist()[:2] == [2, 1] and counts[-1] == 1 and counts.sum() == 4


def test_a_snapshot_narrows_to_its_newest_activities() -> None:
    view = snapshot().last(2)
    assert view.last_codes.tolist()[0] == [activity_code("A"), activity_code("B")]
    with pytest.raises(ValueError):
        snapshot().last(4)


def test_the_csv_export_never_hands_a_spreadsheet_a_formula() -> None:
    import csv
    import io

    from consumer.segments.scan import to_csv

    hostile = ["=HYPERLINK(\"http://x\")", "+1+1", "-2+3", "@SUM(A1)", "\tcmd", "plain-id"]
    rows = [{"customer_id": cid, "last_activities": "=A|B", "predicted_next": "C", "churn_risk": -0.0,
             "scored_at": "2024-01-01T00:00:00Z", "last_event_at": "2024-01-01T00:00:00Z", "events": 3}
            for cid in hostile]
    parsed = list(csv.DictReader(io.StringIO(to_csv(rows))))
    assert [row["customer_id"] for row in parsed] == ["'" + cid for cid in hostile[:-1]] + ["plain-id"]
    assert {row["last_activities"] for row in parsed} == {"'=A|B"}
