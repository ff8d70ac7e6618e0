from __future__ import annotations

import numpy as np

from training.baselines import NgramBackoff, accuracy, context_codes, markov, most_frequent, next_targets


def seqs(*sequences: list[int]) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.array([t for s in sequences for t in s], dtype=np.int64)
    start = np.array([i == 0 for s in sequences for i in range(len(s))])
    return tokens, start


def test_targets_stop_at_each_customer() -> None:
    tokens, start = seqs([0, 1, 2], [3, 4])
    assert next_targets(tokens, start).tolist() == [1, 2, -1, 4, -1]


def test_context_codes_do_not_cross_customers() -> None:
    tokens, start = seqs([0, 1], [0, 1])
    codes = context_codes(tokens, start, 2, n_classes=5)
    assert codes[1] == codes[3]
    assert codes[0] == codes[2] != codes[1]


def test_second_order_pattern_beats_markov() -> None:
    # after (0, 1) comes 2; after (3, 1) comes 4: the last token alone cannot tell
    tokens, start = seqs(*([[0, 1, 2]] * 20 + [[3, 1, 4]] * 20))
    target = next_targets(tokens, start)
    ngram = NgramBackoff(5, max_order=2).fit(tokens, start)
    first = markov(5).fit(tokens, start)
    assert accuracy(ngram.predict_proba(tokens, start), target) == 1.0
    assert accuracy(first.predict_proba(tokens, start), target) < 1.0


def test_backoff_to_shorter_context_when_unseen() -> None:
    tokens, start = seqs(*([[0, 1]] * 10))
    model = NgramBackoff(3, max_order=3).fit(tokens, start)
    unseen, unseen_start = seqs([2, 0])
    proba = model.predict_proba(unseen, unseen_start)
    assert proba[1].argmax() == 1  # context (2, 0) unseen; (0,) -> 1


def test_most_frequent_ignores_context() -> None:
    tokens, start = seqs([0, 1, 1, 1], [2, 1])
    proba = most_frequent(3).fit(tokens, start).predict_proba(tokens, start)
    assert (proba.argmax(axis=1) == 1).all()
    assert np.allclose(proba.sum(axis=1), 1.0)
