"""The live view's arithmetic: quantiles from histogram deltas and the summary line."""

from __future__ import annotations

import math

from consumer.ops.watch import Scrape, quantile, summary_line

INF = math.inf


def test_quantile_interpolates_within_the_bucket_of_the_rank() -> None:
    before = [(0.1, 10.0), (0.5, 10.0), (1.0, 10.0), (INF, 10.0)]
    # 100 new observations: 50 below 0.1 s, 40 in (0.1, 0.5], 10 in (0.5, 1.0]
    after = [(0.1, 60.0), (0.5, 100.0), (1.0, 110.0), (INF, 110.0)]
    assert quantile(0.5, before, after) == 0.1
    assert math.isclose(quantile(0.7, before, after) or 0, 0.1 + 0.4 * (20 / 40))
    assert math.isclose(quantile(0.95, before, after) or 0, 0.5 + 0.5 * (5 / 10))
    assert quantile(0.5, after, after) is None, "nothing observed in between"


def test_quantile_in_the_overflow_bucket_is_unbounded_and_shown_as_beyond_the_last_bound() -> None:
    after = [(0.1, 1.0), (1.0, 1.0), (INF, 5.0)]
    assert quantile(0.99, [], after) == INF
    a = Scrape(at=0.0)
    b = Scrape(at=1.0, buckets={"seqscore_event_to_output_seconds": after})
    assert "p50/p95/p99 >1000/>1000/>1000 ms" in summary_line(a, b)


def test_summary_line_reports_rates_batches_and_percentiles() -> None:
    a = Scrape(at=0.0, counters={"seqscore_events_total": 0.0, "seqscore_batch_size_count": 0.0},
               buckets={"seqscore_event_to_output_seconds": [(0.05, 0.0), (INF, 0.0)]},
               sums={"seqscore_batch_size": 0.0})
    b = Scrape(at=2.0, counters={"seqscore_events_total": 2000.0, "seqscore_predictions_total": 1980.0,
                                 "seqscore_batch_size_count": 10.0,
                                 "seqscore_events_invalid_total{reason=bad_json}": 20.0},
               buckets={"seqscore_event_to_output_seconds": [(0.05, 2000.0), (INF, 2000.0)]},
               sums={"seqscore_batch_size": 2000.0}, lag=7.0, model="v1")
    line = summary_line(a, b)
    assert "1,000 ev/s" in line and "990 pred/s" in line
    assert "batch  200.0" in line and "p50/p95/p99 25/48/50 ms" in line
    assert "lag 7" in line and "dlq 20" in line and "model v1" in line


def test_alert_flips_count_messages_per_customer() -> None:
    from consumer.ops.watch import AlertFlips

    flips = AlertFlips()
    for customer, kind in [("a", "alert"), ("a", "recovery"), ("a", "alert"), ("b", "alert")]:
        flips.add({"customer_id": customer, "kind": kind})
    assert flips.line() == (
        "churn alerts: 3 alert and 1 recovery messages to 2 customers (2.00 per customer; 1 customers got more than 2)"
    )
