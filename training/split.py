"""Which events train, validate and test each head, and where each head's labels end.

`time` (default) trains on events before T1, stops early on [T1, T2) and tests on events
from T2 on, with earlier history as context, as in production; `customer` splits customers
70/15/15.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from state.encoding import DAY, FeatureSpec
from training.evaluate import ScoringSet, prefix_set
from training.fitting import log
from training.history import History
from training.labels import customer_fold, next_event_ts, time_split


@dataclass(frozen=True)
class Period:
    """Which events carry loss for one head, and the end of the data its labels may use."""

    label_end: int
    loss_from: int | None = None
    loss_until: int | None = None

    def mask(self, ts: NDArray[np.int64]) -> NDArray[np.bool_]:
        keep = np.ones(ts.shape, dtype=bool)
        if self.loss_from is not None:
            keep &= ts >= self.loss_from
        if self.loss_until is not None:
            keep &= ts < self.loss_until
        return keep


@dataclass
class Split:
    """One split of a history; periods and label ends come in (next action, churn) pairs."""

    history: History
    horizon_days: float
    data_end: int  # one second after the last event
    train: History  # the events the network trains on
    val: History  # the events it validates on (earlier ones as context)
    train_periods: tuple[Period, Period]
    val_periods: tuple[Period, Period]
    val_events: NDArray[np.bool_]  # the validation scoring points
    test_events: NDArray[np.bool_]  # the held-out scoring points
    val_label_ends: tuple[int, int]
    # the n-gram prior and the baselines fit on these events and customers, up to `fit_at`
    fit_events: NDArray[np.bool_]
    fit_customers: NDArray[np.bool_]
    fit_at: int
    val_as_of_span: tuple[int, int, NDArray[np.bool_] | None]  # (start, end, customers) of validation as-of dates
    cuts: dict[str, dict[str, int]]  # each head's time cuts (epoch seconds), for the manifest
    # each head's labels only from its own period (time split; None: every label)
    val_next_from: int | None = None
    val_churn_range: tuple[int, int] | None = None
    test_next_from: int | None = None
    test_churn_range: tuple[int, int] | None = None

    def val_points(self, spec: FeatureSpec) -> ScoringSet:
        return scoring_points(
            self.history,
            spec,
            self.val_events,
            *self.val_label_ends,
            self.horizon_days,
            next_from=self.val_next_from,
            churn_range=self.val_churn_range,
        )

    def test_points(self, spec: FeatureSpec) -> ScoringSet:
        return scoring_points(
            self.history,
            spec,
            self.test_events,
            self.data_end,
            self.data_end,
            self.horizon_days,
            next_from=self.test_next_from,
            churn_range=self.test_churn_range,
        )

    def baseline_folds(self, val_points: ScoringSet, test_points: ScoringSet) -> list[dict[str, Any]]:
        """One fold for evaluate_points: the baselines fit before the test, predict all of it."""
        return [
            {
                "fit_events": self.fit_events,
                "fit_points": val_points,
                "fit_customers": self.fit_customers,
                "fit_at": self.fit_at,
                "predict": np.ones(len(test_points), dtype=bool),
            }
        ]


def split_history(
    history: History, how: str, fractions: tuple[float, float, float], horizon_days: float, seed: int
) -> Split:
    """The `time` or `customer` split of `history` (see the module docstring)."""
    if how == "time":
        return _time_split(history, fractions, horizon_days)
    return _customer_split(history, fractions, horizon_days, seed)


def _time_split(history: History, fractions: tuple[float, float, float], horizon_days: float) -> Split:
    # next action tests on the latest events; churn labels need `horizon` of data after the
    # scoring time, so churn gets its own cuts inside [first event, end - horizon)
    first, last = history.time_range()
    data_end = last + 1
    horizon = int(horizon_days * DAY)
    t1, t2 = time_split(history.ts, fractions)
    observable = history.ts[history.ts < data_end - horizon]
    if len(observable) == 0:
        log(
            f"churn: the data spans {(data_end - first) / DAY:.0f} days, less than the churn horizon "
            f"({horizon_days:g} days): no churn label is known, so churn is not learned and the "
            "model raises no churn alert (--churn-horizon-days sets a shorter horizon)"
        )
        c1, c2 = t1, t2
    else:
        c1, c2 = time_split(observable, fractions)
        c1, c2 = min(c1, t1), min(c2, t2)
    return Split(
        history=history,
        horizon_days=horizon_days,
        data_end=data_end,
        train=history.select(history.ts < t1),
        val=history.select(history.ts < t2),
        train_periods=(Period(label_end=t1), Period(label_end=c1)),
        val_periods=(Period(label_end=t2, loss_from=t1), Period(label_end=data_end, loss_from=c1, loss_until=c2)),
        val_events=(history.ts >= min(t1, c1)) & (history.ts < t2),
        test_events=history.ts >= min(t2, c2),
        val_label_ends=(t2, data_end),
        fit_events=next_event_ts(history.ts, history.seq_start) < t2,
        fit_customers=np.ones(len(history.customer_ids), dtype=bool),
        fit_at=c2,
        val_as_of_span=(c1, c2, None),
        cuts={
            "next_action": {"train_before": t1, "test_from": t2},
            "churn": {"train_before": c1, "test_from": c2, "test_until": data_end - horizon},
        },
        val_next_from=t1,
        val_churn_range=(c1, c2),
        test_next_from=t2,
        test_churn_range=(c2, data_end),
    )


def _customer_split(history: History, fractions: tuple[float, float, float], horizon_days: float, seed: int) -> Split:
    data_end = history.time_range()[1] + 1
    fold = customer_fold(history.customer, history.customer_ids, fractions, seed)
    fit_customers = np.zeros(len(history.customer_ids), dtype=bool)
    fit_customers[history.customer[fold != 2]] = True
    val_customers = np.zeros(len(history.customer_ids), dtype=bool)
    val_customers[history.customer[fold == 1]] = True
    everything = (Period(label_end=data_end), Period(label_end=data_end))
    return Split(
        history=history,
        horizon_days=horizon_days,
        data_end=data_end,
        train=history.select(fold == 0),
        val=history.select(fold == 1),
        train_periods=everything,
        val_periods=everything,
        val_events=fold == 1,
        test_events=fold == 2,
        val_label_ends=(data_end, data_end),
        fit_events=fold != 2,
        fit_customers=fit_customers,
        fit_at=data_end,
        val_as_of_span=(int(history.ts.min()), data_end - int(horizon_days * DAY), val_customers),
        cuts={},
    )


def scoring_points(
    history: History,
    spec: FeatureSpec,
    events: NDArray[np.bool_],
    next_end: int,
    churn_end: int,
    horizon_days: float,
    next_from: int | None = None,
    churn_range: tuple[int, int] | None = None,
) -> ScoringSet:
    """Scoring points at the selected events; each head keeps only the labels of its own period."""
    points = prefix_set(history, spec, events, next_end, horizon_days)
    if churn_end != next_end:
        churn_view = prefix_set(history, spec, events, churn_end, horizon_days)
        points.churn_label, points.churn_known = churn_view.churn_label, churn_view.churn_known
    ts = history.ts[points.ends]
    if next_from is not None:
        points.next_class = np.where(ts >= next_from, points.next_class, -1)
    if churn_range is not None:
        points.churn_known = points.churn_known & (ts >= churn_range[0]) & (ts < churn_range[1])
    return points
