"""Count baselines a sequence model must beat: most frequent, Markov, back-off n-gram, recency.

All work on flat arrays of one history sorted by (customer, time): `tokens` (int,
0..n_classes-1) and `seq_start` (True where a customer's history begins). Example i
predicts the token of event i + 1 from the events up to i (the same prefixes the
sequence model is scored on).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]
FloatArray = NDArray[np.float64]


def next_targets(tokens: IntArray, seq_start: BoolArray) -> IntArray:
    """The next token of the same customer for every event, -1 for each customer's last event."""
    target = np.full(len(tokens), -1, dtype=np.int64)
    if len(tokens) > 1:
        same = ~seq_start[1:]
        target[:-1] = np.where(same, tokens[1:], -1)
    return target


def context_codes(tokens: IntArray, seq_start: BoolArray, order: int, n_classes: int) -> IntArray:
    """An integer code of the last `order` tokens up to and including each event (0 = before the start)."""
    base = n_classes + 1
    n = len(tokens)
    position = np.arange(n) - np.maximum.accumulate(np.where(seq_start, np.arange(n), 0))
    code = np.zeros(n, dtype=np.int64)
    for lag in range(order):
        lagged = np.zeros(n, dtype=np.int64)
        if lag < n:
            lagged[lag:] = tokens[: n - lag] + 1
        code = code * base + np.where(position >= lag, lagged, 0)
    return code


@dataclass
class _Table:
    contexts: IntArray  # sorted unique context codes
    counts: FloatArray  # (len(contexts), n_classes)


class NgramBackoff:
    """Next token given the last k tokens, backing off to shorter contexts when unseen.

    `max_order=0` is the most-frequent baseline, `max_order=1, backoff=False` is a
    first-order Markov chain (unseen states fall back to the most frequent token).
    """

    def __init__(self, n_classes: int, max_order: int = 4, min_count: int = 2) -> None:
        self.n_classes = n_classes
        self.max_order = max_order
        self.min_count = min_count
        self._tables: list[_Table] = []

    def fit(self, tokens: IntArray, seq_start: BoolArray, mask: BoolArray | None = None) -> NgramBackoff:
        target = next_targets(tokens, seq_start)
        use = target >= 0 if mask is None else (target >= 0) & mask
        self._tables = []
        for order in range(self.max_order + 1):
            codes = context_codes(tokens, seq_start, order, self.n_classes)[use]
            contexts, inverse = np.unique(codes, return_inverse=True)
            counts = np.zeros((len(contexts), self.n_classes))
            np.add.at(counts, (inverse, target[use]), 1.0)
            self._tables.append(_Table(contexts, counts))
        return self

    def predict_proba(self, tokens: IntArray, seq_start: BoolArray) -> FloatArray:
        """Probabilities of the next token after every event, from the longest context seen enough."""
        n = len(tokens)
        proba = np.zeros((n, self.n_classes))
        done = np.zeros(n, dtype=bool)
        for order in range(self.max_order, -1, -1):
            table = self._tables[order]
            codes = context_codes(tokens, seq_start, order, self.n_classes)
            pos = np.clip(np.searchsorted(table.contexts, codes), 0, max(len(table.contexts) - 1, 0))
            found = (table.contexts[pos] == codes) if len(table.contexts) else np.zeros(n, dtype=bool)
            totals = np.where(found, table.counts[pos].sum(axis=1), 0.0)
            enough = 1 if order == 0 else self.min_count
            take = ~done & found & (totals >= enough)
            proba[take] = table.counts[pos[take]] / totals[take, None]
            done |= take
        proba[~done] = 1.0 / self.n_classes
        return proba


def markov(n_classes: int) -> NgramBackoff:
    """First-order Markov chain: next given the last activity (most frequent when unseen)."""
    return NgramBackoff(n_classes, max_order=1, min_count=1)


def most_frequent(n_classes: int) -> NgramBackoff:
    return NgramBackoff(n_classes, max_order=0)


def accuracy(proba: FloatArray, target: IntArray) -> float:
    """Top-1 accuracy over the rows with a target (target >= 0)."""
    rows = target >= 0
    if not rows.any():
        return float("nan")
    return float((proba[rows].argmax(axis=1) == target[rows]).mean())
