"""Classification and ranking metrics, on scikit-learn's well-tested implementations.

What is ours: the rounding and the shape of the report's dictionaries, top-k accuracy
with targets no model can hit (an activity unseen in training counts as a miss), the
threshold of best F1, and calibration bins that keep their counts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn import metrics as sk

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


def topk_accuracy(proba: NDArray[Any], target: IntArray, k: int) -> float:
    """Share of rows whose target is among the k most probable classes; a negative target
    (an activity the model cannot know) is a miss."""
    if len(target) == 0:
        return float("nan")
    top = np.argpartition(-proba, kth=min(k, proba.shape[1]) - 1, axis=1)[:, :k]
    return float((top == target[:, None]).any(axis=1).mean())


def confusion(target: IntArray, predicted: IntArray, n_classes: int) -> IntArray:
    return sk.confusion_matrix(target, predicted, labels=np.arange(n_classes)).astype(np.int64)


def _from_confusion(matrix: IntArray) -> tuple[IntArray, IntArray]:
    """(truth, prediction) pairs that give this confusion matrix (rows = truth)."""
    n = len(matrix)
    truth = np.repeat(np.repeat(np.arange(n), n), matrix.reshape(-1))
    predicted = np.repeat(np.tile(np.arange(n), n), matrix.reshape(-1))
    return truth, predicted


def per_class(matrix: IntArray, names: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support per class (rows = truth, columns = prediction)."""
    truth, predicted = _from_confusion(matrix)
    precision, recall, f1, support = sk.precision_recall_fscore_support(
        truth, predicted, labels=np.arange(len(names)), zero_division=0
    )
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
    truth, predicted = _from_confusion(matrix)
    if len(truth) == 0:
        return float("nan")
    return float(sk.f1_score(truth, predicted, labels=np.unique(truth), average="macro", zero_division=0))


def weighted_f1(matrix: IntArray) -> float:
    truth, predicted = _from_confusion(matrix)
    if len(truth) == 0:
        return float("nan")
    return float(sk.f1_score(truth, predicted, labels=np.unique(truth), average="weighted", zero_division=0))


def _both_classes(label: NDArray[Any]) -> bool:
    label = np.asarray(label).astype(bool)
    return bool(label.any() and (~label).any())


def roc_auc(label: NDArray[Any], score: NDArray[Any]) -> float:
    return float(sk.roc_auc_score(label, score)) if _both_classes(label) else float("nan")


def roc_curve(label: NDArray[Any], score: NDArray[Any]) -> tuple[FloatArray, FloatArray]:
    if not _both_classes(label):
        return np.array([0.0, 1.0]), np.array([0.0, 1.0])
    fpr, tpr, _ = sk.roc_curve(label, score)
    return fpr, tpr


def precision_recall(label: NDArray[Any], score: NDArray[Any]) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Precision and recall at every distinct threshold, highest threshold first."""
    if not np.asarray(label).astype(bool).any():
        return np.zeros(1), np.zeros(1), np.array([float(np.max(score))]) if len(score) else np.zeros(1)
    precision, recall, thresholds = sk.precision_recall_curve(label, score)
    # scikit-learn ends with the (precision 1, recall 0) point, which has no threshold
    return precision[:-1][::-1], recall[:-1][::-1], thresholds[::-1].astype(np.float64)


def pr_auc(label: NDArray[Any], score: NDArray[Any]) -> float:
    """Average precision."""
    if not np.asarray(label).astype(bool).any():
        return float("nan")
    return float(sk.average_precision_score(label, score))


def best_f1_threshold(label: NDArray[Any], score: NDArray[Any]) -> tuple[float, float]:
    """(threshold, F1) maximising F1 of `score >= threshold`."""
    precision, recall, thresholds = precision_recall(label, score)
    f1 = np.divide(
        2 * precision * recall, precision + recall, out=np.zeros_like(precision), where=precision + recall > 0
    )
    best = int(np.argmax(f1)) if len(f1) else 0
    return (float(thresholds[best]), float(f1[best])) if len(f1) else (0.5, float("nan"))


def brier(label: NDArray[Any], proba: NDArray[Any]) -> float:
    return float(sk.brier_score_loss(np.asarray(label).astype(int), proba)) if len(label) else float("nan")


def calibration(label: NDArray[Any], proba: NDArray[Any], bins: int = 10) -> dict[str, list[Any]]:
    """Mean predicted vs observed rate per probability bin (bins with no examples left out)."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(proba, edges) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    present = count > 0
    mean_p = np.bincount(which, weights=proba, minlength=bins)[present] / count[present]
    observed = np.bincount(which, weights=np.asarray(label, dtype=np.float64), minlength=bins)[present] / count[present]
    return {
        "predicted": [round(float(v), 4) for v in mean_p],
        "observed": [round(float(v), 4) for v in observed],
        "count": [int(c) for c in count[present]],
    }


def binary_f1(label: NDArray[Any], predicted: NDArray[Any]) -> float:
    label, predicted = np.asarray(label).astype(bool), np.asarray(predicted).astype(bool)
    if not (label.any() or predicted.any()):
        return float("nan")
    return float(sk.f1_score(label, predicted))
