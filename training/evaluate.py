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
from training.labels import churn_labels, next_event_ts

SCORE_BATCH = 8192


@dataclass
class ScoringSet:
    """Scoring points: window ending at event `ends[i]`, scored at `score_ts[i]`, with labels."""

    ends: NDArray[np.int64]
    score_ts: NDArray[np.int64]
    next_class: NDArray[np.int64]  # -1: no known next event, or outside the vocabulary
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


def prefix_set(
    history: History, spec: FeatureSpec, events: NDArray[np.bool_], data_end: int, horizon_days: float
) -> ScoringSet:
    """Score at each selected event; labels use the events before `data_end` only."""
    ends = np.flatnonzero(events).astype(np.int64)
    tokens = spec.tokens(history.codes(spec.level))
    nxt = next_event_ts(history.ts, history.seq_start)
    has_next = nxt[ends] < data_end
    next_class = np.where(has_next, class_of_tokens(tokens[np.minimum(ends + 1, len(tokens) - 1)]), -1)
    label, known = churn_labels(history.ts[ends], nxt[ends], data_end, horizon_days)
    return ScoringSet(ends, history.ts[ends].copy(), next_class, label, known)


def as_of_set(history: History, spec: FeatureSpec, as_of: int, horizon_days: float) -> ScoringSet:
    """Every customer with an event before `as_of`, scored at `as_of` from those events."""
    before = history.ts < as_of
    last_before = before & np.append(~before[1:] | history.seq_start[1:], True)
    ends = np.flatnonzero(last_before).astype(np.int64)
    # nobody is censored when the data runs past as_of + horizon: labels come from [as_of, as_of + horizon)
    data_end = int(history.ts.max()) + 1
    tokens = spec.tokens(history.codes(spec.level))
    nxt = next_event_ts(history.ts, history.seq_start)
    has_next = nxt[ends] < data_end
    next_class = np.where(has_next, class_of_tokens(tokens[np.minimum(ends + 1, len(tokens) - 1)]), -1)
    score_ts = np.full(len(ends), as_of, dtype=np.int64)
    label, known = churn_labels(score_ts, nxt[ends], data_end, horizon_days)
    return ScoringSet(ends, score_ts, next_class, label, known)


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
    rows = target >= 0
    proba, target = proba[rows], target[rows]
    predicted = proba.argmax(axis=1) if len(target) else np.zeros(0, dtype=np.int64)
    matrix = metrics.confusion(target, predicted, len(names))
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


def logistic_fit(x: NDArray[np.float64], y: NDArray[Any], l2: float = 1e-3, steps: int = 25) -> NDArray[np.float64]:
    """Newton's method for L2-regularised logistic regression; returns weights with the bias last."""
    design = np.column_stack([x, np.ones(len(x))])
    weights = np.zeros(design.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-design @ weights))
        gradient = design.T @ (p - y) + l2 * weights
        hessian = (design * (p * (1 - p))[:, None]).T @ design + l2 * np.eye(len(weights))
        weights -= np.linalg.solve(hessian, gradient)
    return weights


def logistic_predict(weights: NDArray[np.float64], x: NDArray[np.float64]) -> NDArray[np.float64]:
    return 1 / (1 + np.exp(-(np.column_stack([x, np.ones(len(x))]) @ weights)))


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
        weights = logistic_fit(_recency_features(history, fit_points)[labelled], fit_points.churn_label[labelled])
        recency[rows] = logistic_predict(weights, _recency_features(history, points.subset(rows)))
        bg[rows] = _bgnbd_scores(history, fold["fit_customers"], fold["fit_at"], points.subset(rows), horizon_days)
    target = points.next_class
    known = points.churn_known
    out: dict[str, dict[str, Any]] = {"next_action": {}, "churn": {}}
    for name, proba in next_proba.items():
        rows = target >= 0
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
