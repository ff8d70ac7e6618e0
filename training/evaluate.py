"""Honest evaluation: the serving path (gather windows -> encode -> serving graph) on every
scoring point, beside count baselines fitted without the evaluated examples.

Next action: most frequent, first-order Markov, back-off n-gram (orders 1-4).
Churn: recency (logistic regression on time since the last event and the last gap) and
BG/NBD expected events in the horizon.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from state.encoding import DAY, FIRST_TOKEN, FeatureSpec, encode, gather_windows
from training import bgnbd, metrics
from training.baselines import NgramBackoff, markov, most_frequent
from training.history import History
from training.labels import SilencePoints, as_of_points, churn_labels, next_event_ts

SCORE_BATCH = 8192
NO_NEXT_EVENT = -1  # next_class: nothing to predict (the customer's last event, or outside the period)
UNSEEN_NEXT = -2  # next_class: a next event whose activity training never saw, a miss for every model


@dataclass
class ScoringSet:
    """Scoring points: window ending at event `ends[i]`, scored at `score_ts[i]`, with labels."""

    ends: NDArray[np.int64]
    score_ts: NDArray[np.int64]
    next_class: NDArray[np.int64]  # NO_NEXT_EVENT, UNSEEN_NEXT, or the next activity's class
    churn_label: NDArray[np.float32]
    churn_known: NDArray[np.bool_]

    def __len__(self) -> int:
        return len(self.ends)

    def subset(self, keep: NDArray[np.bool_]) -> ScoringSet:
        return ScoringSet(
            self.ends[keep], self.score_ts[keep], self.next_class[keep], self.churn_label[keep], self.churn_known[keep]
        )


def class_of_tokens(tokens: NDArray[np.int64]) -> NDArray[np.int64]:
    return np.where(tokens >= FIRST_TOKEN, tokens - FIRST_TOKEN, -1)


def next_classes(
    history: History, spec: FeatureSpec, ends: NDArray[np.int64], has_next: NDArray[np.bool_]
) -> NDArray[np.int64]:
    """The class of the event after each of `ends`: UNSEEN_NEXT for an activity outside the
    vocabulary (counted as a miss, as the outside check counts it), NO_NEXT_EVENT without one."""
    tokens = spec.tokens(history.codes(spec.level))
    following = class_of_tokens(tokens[np.minimum(ends + 1, len(tokens) - 1)])
    return np.where(has_next, np.where(following >= 0, following, UNSEEN_NEXT), NO_NEXT_EVENT)


def prefix_set(
    history: History, spec: FeatureSpec, events: NDArray[np.bool_], data_end: int, horizon_days: float
) -> ScoringSet:
    """Score at each selected event; labels use the events before `data_end` only."""
    ends = np.flatnonzero(events).astype(np.int64)
    nxt = next_event_ts(history.ts, history.seq_start)
    next_class = next_classes(history, spec, ends, nxt[ends] < data_end)
    label, known = churn_labels(history.ts[ends], nxt[ends], data_end, horizon_days)
    return ScoringSet(ends, history.ts[ends].copy(), next_class, label, known)


def as_of_set(history: History, spec: FeatureSpec, as_of: int, horizon_days: float) -> ScoringSet:
    """Every customer with an event before `as_of`, scored at `as_of` from those events."""
    return as_of_set_at(history, spec, np.array([as_of], dtype=np.int64), horizon_days)


def as_of_set_at(
    history: History,
    spec: FeatureSpec,
    dates: NDArray[np.int64],
    horizon_days: float,
    customers: NDArray[np.bool_] | None = None,
) -> ScoringSet:
    """Every customer (of `customers`, default all) with an event before each date, scored at
    that date from those events. Nobody is censored when the data runs past date + horizon:
    labels come from [date, date + horizon)."""
    data_end = int(history.ts.max()) + 1
    points = as_of_points(history.ts, history.seq_start, dates, data_end, horizon_days)
    if customers is not None:
        keep = customers[history.customer[points.ends]]
        points = SilencePoints(points.ends[keep], points.score_ts[keep], points.label[keep], points.weight[keep])
    ends = points.ends
    nxt = next_event_ts(history.ts, history.seq_start)
    next_class = next_classes(history, spec, ends, nxt[ends] < data_end)
    return ScoringSet(ends, points.score_ts, next_class, points.label, np.ones(len(ends), dtype=bool))


def predict(
    model: Any, spec: FeatureSpec, history: History, points: ScoringSet, progress: bool = False
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """(next-action probabilities, churn risk) through the serving graph, batch by batch."""
    codes = history.codes(spec.level)
    next_parts, churn_parts = [], []
    for start in range(0, len(points), SCORE_BATCH):
        part = slice(start, start + SCORE_BATCH)
        raw = gather_windows(
            history.ts,
            codes,
            history.customer_start,
            points.ends[part],
            points.score_ts[part],
            spec.window,
            history.gender,
            history.age_group,
        )
        out = model.predict_on_batch(encode(raw, spec))
        next_parts.append(np.asarray(out["next"], dtype=np.float32))
        churn_parts.append(np.asarray(out["churn"], dtype=np.float32).reshape(-1))
        if progress and start // SCORE_BATCH % 10 == 9:
            print(f"  scored {start + SCORE_BATCH:,}/{len(points):,}", file=sys.stderr)
    if not next_parts:
        return np.zeros((0, spec.n_classes), np.float32), np.zeros(0, np.float32)
    return np.concatenate(next_parts), np.concatenate(churn_parts)


def next_action_metrics(proba: NDArray[Any], target: NDArray[np.int64], names: list[str]) -> dict[str, Any]:
    rows = target != NO_NEXT_EVENT
    proba, target = proba[rows], target[rows]
    predicted = proba.argmax(axis=1) if len(target) else np.zeros(0, dtype=np.int64)
    seen = target >= 0
    matrix = metrics.confusion(target[seen], predicted[seen], len(names))
    return {
        "accuracy": round(float((predicted == target).mean()), 4) if len(target) else float("nan"),
        "top3_accuracy": round(metrics.topk_accuracy(proba, target, 3), 4),
        "macro_f1": round(metrics.macro_f1(matrix), 4),
        "weighted_f1": round(metrics.weighted_f1(matrix), 4),
        "per_class": metrics.per_class(matrix, names),
        "confusion": matrix.tolist(),
        "n_examples": len(target),
    }


def churn_metrics(label: NDArray[Any], risk: NDArray[Any], threshold: float) -> dict[str, Any]:
    if len(label) == 0:
        return {"roc_auc": float("nan"), "n_examples": 0}
    return {
        "roc_auc": round(metrics.roc_auc(label, risk), 4),
        "pr_auc": round(metrics.pr_auc(label, risk), 4),
        "brier": round(metrics.brier(label, risk), 4),
        "threshold": round(float(threshold), 4),
        "f1_at_threshold": round(metrics.binary_f1(label, risk >= threshold), 4),
        "positive_rate": round(float(np.mean(label)), 4),
        "calibration": metrics.calibration(label, risk),
        "n_examples": len(label),
    }


def _recency_features(history: History, points: ScoringSet) -> NDArray[np.float64]:
    ends = points.ends
    first = history.customer_start[ends] == ends
    gap = np.where(first, 0, history.ts[ends] - history.ts[np.maximum(ends - 1, 0)]) / DAY
    elapsed = (points.score_ts - history.ts[ends]) / DAY
    return np.column_stack([np.log1p(elapsed), np.log1p(np.maximum(gap, 0)), first.astype(np.float64)])


def _recency_model(x: NDArray[np.float64], y: NDArray[Any]) -> Any:
    """Logistic regression of churn on the recency features (one class only: a constant)."""
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(y)) < 2:
        return DummyClassifier(strategy="prior").fit(x, y)
    return LogisticRegression(C=1e3, max_iter=200).fit(x, y)


def _bgnbd_scores(
    history: History, fit_customers: NDArray[np.bool_], fit_at: int, points: ScoringSet, horizon_days: float
) -> NDArray[np.float64]:
    """Minus the expected events in the horizon, from BG/NBD fitted on the given customers' events before fit_at."""
    before = (history.ts < fit_at) & fit_customers[history.customer]
    idx = np.flatnonzero(before)
    if len(idx) == 0:
        return np.zeros(len(points))
    cust = history.customer[idx]
    last = np.append(cust[1:] != cust[:-1], True)
    ends = idx[last]
    start = history.customer_start[ends]
    x, t_x, big_t = bgnbd.summary_at(history.ts[ends], history.ts[start], ends - start + 1, np.full(len(ends), fit_at))
    model = bgnbd.fit(x, t_x, big_t)
    e = points.ends
    s = history.customer_start[e]
    x, t_x, big_t = bgnbd.summary_at(history.ts[e], history.ts[s], e - s + 1, points.score_ts)
    return -model.expected_events(x, t_x, big_t, horizon_days * DAY / bgnbd.WEEK)


def baseline_metrics(
    history: History, spec: FeatureSpec, points: ScoringSet, folds: list[dict[str, Any]], horizon_days: float
) -> dict[str, dict[str, Any]]:
    """Baselines on exactly the model's scoring points.

    Each fold names `fit_events` (events whose successor may be learned from), `fit_points`
    (labelled points to fit the recency model), `fit_customers` + `fit_at` (BG/NBD data) and
    `predict` (which of `points` it scores); the folds together score every point once.
    """
    tokens = spec.tokens(history.codes(spec.level)) - 1  # 0 = unknown activity, c + 1 = class c
    seq_start = history.seq_start
    n_types = spec.n_classes + 1
    next_proba = {name: np.zeros((len(points), spec.n_classes)) for name in ("most_frequent", "markov", "ngram")}
    recency = np.zeros(len(points))
    bg = np.zeros(len(points))
    for fold in folds:
        rows = fold["predict"]
        ends = points.ends[rows]
        for name, model in (
            ("most_frequent", most_frequent(n_types)),
            ("markov", markov(n_types)),
            ("ngram", NgramBackoff(n_types, max_order=4)),
        ):
            proba = model.fit(tokens, seq_start, fold["fit_events"]).predict_proba(tokens, seq_start)
            next_proba[name][rows] = proba[ends][:, 1:]
        fit_points: ScoringSet = fold["fit_points"]
        labelled = fit_points.churn_known
        if labelled.any():
            fitted = _recency_model(_recency_features(history, fit_points)[labelled], fit_points.churn_label[labelled])
            recency[rows] = fitted.predict_proba(_recency_features(history, points.subset(rows)))[:, -1]
        bg[rows] = _bgnbd_scores(history, fold["fit_customers"], fold["fit_at"], points.subset(rows), horizon_days)
    target = points.next_class
    known = points.churn_known
    out: dict[str, dict[str, Any]] = {"next_action": {}, "churn": {}}
    for name, proba in next_proba.items():
        rows = target != NO_NEXT_EVENT
        out["next_action"][name] = {
            "accuracy": round(float((proba[rows].argmax(axis=1) == target[rows]).mean()), 4) if rows.any() else None,
            "top3_accuracy": round(metrics.topk_accuracy(proba[rows], target[rows], 3), 4),
        }
    out["churn"]["recency"] = {"roc_auc": round(metrics.roc_auc(points.churn_label[known], recency[known]), 4)}
    out["churn"]["bgnbd"] = {"roc_auc": round(metrics.roc_auc(points.churn_label[known], bg[known]), 4)}
    return out


def evaluate_points(
    model: Any,
    spec: FeatureSpec,
    history: History,
    points: ScoringSet,
    threshold: float,
    folds: list[dict[str, Any]],
    horizon_days: float,
    progress: bool = False,
) -> dict[str, Any]:
    """The metrics JSON (contract names) for the model and its baselines on `points`."""
    next_proba, risk = predict(model, spec, history, points, progress=progress)
    next_result = next_action_metrics(next_proba, points.next_class, list(spec.vocabulary))
    known = points.churn_known
    churn_result = churn_metrics(points.churn_label[known], risk[known], threshold)
    base = baseline_metrics(history, spec, points, folds, horizon_days)
    next_result["baselines"] = base["next_action"]
    churn_result["baselines"] = base["churn"]
    return {
        "next_action": next_result,
        "churn": churn_result,
        "n_examples": len(points),
        "_curves": {"churn_label": points.churn_label[known], "churn_risk": risk[known]},
    }


def crossfit_folds(history: History, points: ScoringSet, data_end: int) -> list[dict[str, Any]]:
    """Two folds by customer: baselines fitted on one half score the other."""
    half = history.customer % 2
    folds = []
    for f in (0, 1):
        fit_customer_mask = np.arange(len(history.customer_ids)) % 2 != f
        folds.append(
            {
                "fit_events": half != f,
                "fit_points": points.subset(half[points.ends] != f),
                "fit_customers": fit_customer_mask,
                "fit_at": data_end,
                "predict": half[points.ends] == f,
            }
        )
    return folds
