"""Classification and ranking metrics in numpy (no scikit-learn in the runtime)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


def topk_accuracy(proba: NDArray[Any], target: IntArray, k: int) -> float:
    if len(target) == 0:
        return float("nan")
    top = np.argpartition(-proba, kth=min(k, proba.shape[1]) - 1, axis=1)[:, :k]
    return float((top == target[:, None]).any(axis=1).mean())


def confusion(target: IntArray, predicted: IntArray, n_classes: int) -> IntArray:
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (target, predicted), 1)
    return matrix


def per_class(matrix: IntArray, names: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support per class (rows = truth, columns = prediction)."""
    tp = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0)
    support = matrix.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=precision + recall > 0)
    return {
        name: {
            "precision": round(float(p), 4),
            "recall": round(float(r), 4),
            "f1": round(float(f), 4),
            "support": int(s),
        }
        for name, p, r, f, s in zip(names, precision, recall, f1, support, strict=True)
    }


def macro_f1(matrix: IntArray) -> float:
    """Mean F1 over the classes that occur in the truth."""
    scores = per_class(matrix, [str(i) for i in range(len(matrix))])
    present = [v["f1"] for v in scores.values() if v["support"] > 0]
    return float(np.mean(present)) if present else float("nan")


def weighted_f1(matrix: IntArray) -> float:
    scores = per_class(matrix, [str(i) for i in range(len(matrix))])
    support = np.array([v["support"] for v in scores.values()], dtype=np.float64)
    f1 = np.array([v["f1"] for v in scores.values()])
    return float((f1 * support).sum() / support.sum()) if support.sum() else float("nan")


def roc_auc(label: NDArray[Any], score: NDArray[Any]) -> float:
    """Area under the ROC curve by the rank statistic (ties get average ranks)."""
    label = np.asarray(label).astype(bool)
    n_pos, n_neg = int(label.sum()), int((~label).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    sorted_score = np.asarray(score)[order]
    ranks = np.empty(len(score), dtype=np.float64)
    _, first, counts = np.unique(sorted_score, return_index=True, return_counts=True)
    average = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(average, counts)
    return float((ranks[label].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(label: NDArray[Any], score: NDArray[Any], points: int = 200) -> tuple[FloatArray, FloatArray]:
    thresholds = np.unique(np.quantile(score, np.linspace(0, 1, points)))[::-1]
    label = np.asarray(label).astype(bool)
    pos, neg = max(label.sum(), 1), max((~label).sum(), 1)
    tpr = np.array([(score[label] >= t).sum() / pos for t in thresholds])
    fpr = np.array([(score[~label] >= t).sum() / neg for t in thresholds])
    return np.concatenate([[0.0], fpr, [1.0]]), np.concatenate([[0.0], tpr, [1.0]])


def precision_recall(label: NDArray[Any], score: NDArray[Any]) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Precision and recall at every distinct threshold, highest threshold first."""
    label = np.asarray(label).astype(bool)
    order = np.argsort(-np.asarray(score), kind="mergesort")
    sorted_score, sorted_label = np.asarray(score)[order], label[order]
    distinct = np.flatnonzero(np.diff(sorted_score)) if len(order) > 1 else np.zeros(0, dtype=np.int64)
    cut = np.concatenate([distinct, [len(order) - 1]])
    tp = np.cumsum(sorted_label)[cut].astype(np.float64)
    fp = (cut + 1 - tp).astype(np.float64)
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / max(label.sum(), 1)
    return precision, recall, sorted_score[cut].astype(np.float64)


def pr_auc(label: NDArray[Any], score: NDArray[Any]) -> float:
    """Average precision: precision summed over the recall steps."""
    if not np.asarray(label).astype(bool).any():
        return float("nan")
    precision, recall, _ = precision_recall(label, score)
    return float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))


def best_f1_threshold(label: NDArray[Any], score: NDArray[Any]) -> tuple[float, float]:
    """(threshold, F1) maximising F1 of `score >= threshold`."""
    precision, recall, thresholds = precision_recall(label, score)
    f1 = np.divide(
        2 * precision * recall, precision + recall, out=np.zeros_like(precision), where=precision + recall > 0
    )
    best = int(np.argmax(f1)) if len(f1) else 0
    return (float(thresholds[best]), float(f1[best])) if len(f1) else (0.5, float("nan"))


def brier(label: NDArray[Any], proba: NDArray[Any]) -> float:
    return float(np.mean((np.asarray(proba, dtype=np.float64) - np.asarray(label, dtype=np.float64)) ** 2))


def calibration(label: NDArray[Any], proba: NDArray[Any], bins: int = 10) -> dict[str, list[Any]]:
    """Mean predicted vs observed rate per probability bin (bins with no examples left out)."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(proba, edges) - 1, 0, bins - 1)
    mean_p: list[float] = []
    observed: list[float] = []
    count: list[int] = []
    for b in range(bins):
        rows = which == b
        if rows.any():
            mean_p.append(round(float(np.mean(proba[rows])), 4))
            observed.append(round(float(np.mean(label[rows])), 4))
            count.append(int(rows.sum()))
    return {"predicted": mean_p, "observed": observed, "count": count}


def binary_f1(label: NDArray[Any], predicted: NDArray[Any]) -> float:
    label, predicted = np.asarray(label).astype(bool), np.asarray(predicted).astype(bool)
    tp = float((label & predicted).sum())
    denominator = float(label.sum() + predicted.sum())
    return 2 * tp / denominator if denominator else float("nan")
