from __future__ import annotations

import itertools

import numpy as np
import pytest

from training import metrics
from training.bgnbd import BGNBD, fit


def brute_auc(label: np.ndarray, score: np.ndarray) -> float:
    pos, neg = score[label == 1], score[label == 0]
    pairs = [(p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg)]
    return float(np.mean(pairs))


def test_roc_auc_matches_pair_counting_with_ties() -> None:
    rng = np.random.default_rng(1)
    label = rng.integers(0, 2, 200)
    score = rng.integers(0, 10, 200).astype(float) + label
    assert metrics.roc_auc(label, score) == pytest.approx(brute_auc(label, score))


def test_perfect_ranking() -> None:
    label = np.array([0, 0, 1, 1])
    score = np.array([0.1, 0.2, 0.8, 0.9])
    assert metrics.roc_auc(label, score) == 1.0
    assert metrics.pr_auc(label, score) == 1.0
    threshold, f1 = metrics.best_f1_threshold(label, score)
    assert f1 == 1.0 and 0.2 < threshold <= 0.8


def test_per_class_and_macro_f1() -> None:
    matrix = metrics.confusion(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 2)
    scores = metrics.per_class(matrix, ["a", "b"])
    assert scores["a"] == {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "support": 2}
    assert scores["b"]["precision"] == pytest.approx(0.6667, abs=1e-4)
    assert metrics.macro_f1(matrix) == pytest.approx((0.6667 + 0.8) / 2, abs=1e-4)


def test_topk() -> None:
    proba = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]])
    assert metrics.topk_accuracy(proba, np.array([1, 0]), 1) == 0.0
    assert metrics.topk_accuracy(proba, np.array([1, 0]), 2) == 0.5


def test_bgnbd_recovers_its_parameters() -> None:
    rng = np.random.default_rng(0)
    n, weeks = 4000, 52.0
    lam, p = rng.gamma(0.6, 1 / 4.0, n), rng.beta(1.5, 3.0, n)
    x, t_x = np.zeros(n), np.zeros(n)
    for i in range(n):
        t = 0.0
        while True:
            t += rng.exponential(1 / lam[i])
            if t > weeks:
                break
            x[i], t_x[i] = x[i] + 1, t
            if rng.random() < p[i]:
                break
    model = fit(x, t_x, np.full(n, weeks))
    assert model.r == pytest.approx(0.6, rel=0.25) and model.alpha == pytest.approx(4.0, rel=0.3)
    expected = model.expected_events(x, t_x, np.full(n, weeks), 10.0)
    assert (expected >= 0).all()
    assert expected[x > 5].mean() > expected[x == 0].mean()


def test_bgnbd_expects_fewer_events_after_long_silence() -> None:
    model = BGNBD(0.6, 4.0, 1.5, 3.0)
    recent = model.expected_events(np.array([5.0]), np.array([50.0]), np.array([52.0]), 10.0)
    silent = model.expected_events(np.array([5.0]), np.array([10.0]), np.array([52.0]), 10.0)
    assert recent[0] > silent[0]
