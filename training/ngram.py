"""The count model the network builds on: a smoothed back-off n-gram over the last 1-4 tokens.

On process logs the next activity is mostly decided by the last few; the count model
knows that from the first event, and a network trained from scratch may need many epochs
to learn it (or never does, with hundreds of activities and a few thousand cases). So
the next-action head adds the network's logits to this model's log-probabilities (a
residual): it starts where the n-gram is and learns what time, tenure and long context
add. With the residual's weights zeroed the served model *is* the n-gram, which is how
training falls back when the network does not beat it on validation.

A context of order k is the last k tokens (padding 0 stands for "before the first
event"). Contexts are identified by nested integer keys, so lookups stay in 32-bit
range for any vocabulary: order 1 is the last token itself; order k is
`id(order k-1 suffix) * vocab_size + token k-1 events back`, looked up in a sorted key
table. Only contexts seen at least `min_count` times (with a known next activity) are
kept; a longer context's count never exceeds its suffix's, so every kept context's
suffix is kept too. Each kept context's distribution is its counts smoothed towards its
suffix's distribution (`SMOOTHING` pseudo-counts), down to the unigram, which is smoothed
towards uniform.

The same lookup runs in numpy (training, evaluation) and in Keras ops inside the served
model (training/layers.py), on the tables of `NgramTables`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

MAX_ORDER = 4
MIN_COUNT = 1
SMOOTHING = 0.5
MAX_TABLE_ENTRIES = 16_000_000  # rows x classes: 64 MB of float32 in the model file
NO_KEY = -1  # a sentinel first key, so that no key table is empty

IntArray = NDArray[np.int64]


@dataclass
class NgramTables:
    """Lookup tables of one fitted n-gram. `log_proba[row]` is a context's distribution;
    row 0 is the unigram.

    Plain contexts: `token_rows[t]` is the row of the order-1 context t (-1: too rare);
    `keys[k - 2]` / `key_rows[k - 2]` are order k's sorted keys and their rows. Timed
    contexts (the gap bucket of the newest event, then its last k tokens): `timed_keys[k - 1]`
    / `timed_rows[k - 1]`, rooted at the bucket. A timed context wins over a plain one."""

    vocab_size: int
    token_rows: NDArray[np.int32]
    keys: list[IntArray]
    key_rows: list[NDArray[np.int32]]
    timed_keys: list[IntArray]
    timed_rows: list[NDArray[np.int32]]
    log_proba: NDArray[np.float32]

    @property
    def order(self) -> int:
        return len(self.keys) + 1

    def rows(self, last_tokens: IntArray, buckets: IntArray) -> IntArray:
        """Table row for each context; `last_tokens` (n, k) holds each context's last k tokens,
        oldest first (0 = before the first event), `buckets` (n,) the newest event's gap bucket."""
        width = last_tokens.shape[1]
        if width < self.order:
            last_tokens = np.pad(last_tokens, ((0, 0), (self.order - width, 0)))
        newest = last_tokens[:, -1].astype(np.int64)
        by_token = self.token_rows[newest].astype(np.int64)
        plain = self._follow(
            np.where(by_token >= 0, by_token, 0),
            newest,
            by_token >= 0,
            self.keys,
            self.key_rows,
            last_tokens,
            first_lag=2,
        )
        start = np.full(len(newest), -1, dtype=np.int64)
        timed = self._follow(
            start,
            np.asarray(buckets, np.int64),
            np.ones(len(newest), bool),
            self.timed_keys,
            self.timed_rows,
            last_tokens,
            first_lag=1,
        )
        return np.where(timed >= 0, timed, plain)

    def _follow(
        self,
        row: IntArray,
        parent: IntArray,
        valid: NDArray[np.bool_],
        keys_by_order: list[IntArray],
        rows_by_order: list[NDArray[np.int32]],
        last_tokens: IntArray,
        first_lag: int,
    ) -> IntArray:
        for k, (keys, key_rows) in enumerate(zip(keys_by_order, rows_by_order, strict=True), start=first_lag):
            key = parent * self.vocab_size + last_tokens[:, -k]
            pos = np.clip(np.searchsorted(keys, key), 0, len(keys) - 1)
            found = valid & (keys[pos] == key)
            row = np.where(found, key_rows[pos], row)
            parent, valid = pos, found
        return row

    def lookup(self, last_tokens: IntArray, buckets: IntArray) -> NDArray[np.float32]:
        """(n, classes) log-probabilities of the next activity after each context."""
        return self.log_proba[self.rows(last_tokens, buckets)]


def context_tokens(tokens: IntArray, seq_start: NDArray[np.bool_], order: int = MAX_ORDER) -> IntArray:
    """(n, order): the last `order` tokens up to and including each event of a flat history
    sorted by (customer, time), oldest first, 0 before the customer's first event."""
    n = len(tokens)
    position = np.arange(n) - np.maximum.accumulate(np.where(seq_start, np.arange(n), 0))
    out = np.zeros((n, order), dtype=np.int64)
    for lag in range(order):
        if lag < n:
            out[lag:, order - 1 - lag] = np.where(position[lag:] >= lag, tokens[: n - lag], 0)
    return out


def fit(
    contexts: IntArray, buckets: IntArray, target: IntArray, vocab_size: int, n_classes: int, order: int = MAX_ORDER
) -> NgramTables:
    """Tables from contexts (n, order), the newest event's gap bucket (n,) and next classes
    (n,); rows with target < 0 skipped."""
    use = target >= 0
    contexts, buckets, target = contexts[use], np.asarray(buckets, np.int64)[use], target[use]
    min_count = _min_count_within_budget(contexts, buckets, n_classes, order)
    unigram = np.bincount(target, minlength=n_classes).astype(np.float64)
    table = _Rows(((unigram + 0.5) / (unigram.sum() + 0.5 * n_classes))[None, :])
    counts1 = np.zeros((vocab_size, n_classes))
    np.add.at(counts1, (contexts[:, -1], target), 1.0)
    kept1 = np.flatnonzero(counts1.sum(axis=1) >= min_count)
    token_rows = np.full(vocab_size, -1, dtype=np.int32)
    token_rows[kept1] = table.add(_smoothed(counts1[kept1], np.broadcast_to(table.parts[0], (len(kept1), n_classes))))
    newest = contexts[:, -1].astype(np.int64)
    first_rows = np.where(token_rows[newest] >= 0, token_rows[newest], 0).astype(np.int64)
    plain = _grow(
        table,
        newest,
        token_rows[newest] >= 0,
        first_rows,
        contexts,
        target,
        2,
        order,
        vocab_size,
        min_count,
        towards=None,
    )
    timed = _grow(
        table,
        buckets,
        np.ones(len(target), bool),
        np.zeros(len(target), np.int64),
        contexts,
        target,
        1,
        order,
        vocab_size,
        min_count,
        towards=[np.zeros(len(target), np.int64), first_rows, *plain[2]],
    )
    return NgramTables(vocab_size, token_rows, plain[0], plain[1], timed[0], timed[1], table.matrix())


class _Rows:
    """The distribution table as it grows: each add returns the new rows' indices."""

    def __init__(self, first: NDArray[np.float64]) -> None:
        self.parts = [first]
        self.size = len(first)

    def add(self, block: NDArray[np.float64]) -> NDArray[np.int32]:
        rows = np.arange(self.size, self.size + len(block), dtype=np.int32)
        self.parts.append(block)
        self.size += len(block)
        return rows

    def all(self) -> NDArray[np.float64]:
        return np.concatenate(self.parts)

    def matrix(self) -> NDArray[np.float32]:
        return np.log(self.all()).astype(np.float32)


def _grow(
    table: _Rows,
    parent_id: IntArray,
    parent_ok: NDArray[np.bool_],
    parent_rows: IntArray,
    contexts: IntArray,
    target: IntArray,
    first_lag: int,
    order: int,
    vocab_size: int,
    min_count: int,
    towards: list[IntArray] | None,
) -> tuple[list[IntArray], list[NDArray[np.int32]], list[IntArray]]:
    """Contexts grown one token back at a time, for lags `first_lag`..`order`: order k's key is
    its parent's id * vocab_size + the token k-1 events back. Each kept context's distribution
    is its counts smoothed towards `towards[k]` (per occurrence), by default its parent's.
    Returns the keys and rows per order, and each occurrence's best row per order."""
    n_classes = table.parts[0].shape[1]
    keys_out: list[IntArray] = []
    rows_out: list[NDArray[np.int32]] = []
    best_out: list[IntArray] = []
    best = parent_rows
    for k in range(first_lag, order + 1):
        key = parent_id * vocab_size + contexts[:, -k]
        unique, inverse = np.unique(key[parent_ok], return_inverse=True)
        counts = np.zeros((len(unique), n_classes))
        np.add.at(counts, (inverse, target[parent_ok]), 1.0)
        kept = counts.sum(axis=1) >= min_count
        prior_row = (towards[k] if towards is not None else best)[parent_ok]
        smooth_towards = np.zeros(len(unique), dtype=np.int64)
        smooth_towards[inverse] = prior_row
        rows = np.zeros(len(unique), dtype=np.int32)
        rows[kept] = table.add(_smoothed(counts[kept], table.all()[smooth_towards[kept]]))
        keys = np.concatenate([[NO_KEY], unique[kept]]).astype(np.int64)
        key_rows = np.concatenate([[0], rows[kept]]).astype(np.int32)
        keys_out.append(keys)
        rows_out.append(key_rows)
        pos = np.clip(np.searchsorted(keys, key), 0, len(keys) - 1)
        found = parent_ok & (keys[pos] == key)
        best = np.where(found, key_rows[pos], best).astype(np.int64)
        best_out.append(best)
        parent_id, parent_ok = pos, found
    return keys_out, rows_out, best_out


def _smoothed(counts: NDArray[np.float64], towards: NDArray[np.float64]) -> NDArray[np.float64]:
    return (counts + SMOOTHING * towards) / (counts.sum(axis=1, keepdims=True) + SMOOTHING)


def _min_count_within_budget(contexts: IntArray, buckets: IntArray, n_classes: int, order: int) -> int:
    """MIN_COUNT, raised until the kept contexts (plain and timed) x classes fit MAX_TABLE_ENTRIES."""
    max_rows = max(MAX_TABLE_ENTRIES // max(n_classes, 1), 2)
    if 2 * order * len(contexts) < max_rows:  # fewer occurrences than rows allowed: nothing to cut
        return MIN_COUNT
    counts_per_context = []
    for root in (contexts[:, -1], buckets):
        key = np.asarray(root, np.int64)
        for k in range(1 if root is buckets else 2, order + 1):
            key = np.unique(np.column_stack([key, contexts[:, -k]]), axis=0, return_inverse=True)[1].reshape(-1)
            counts_per_context.append(np.unique(key, return_counts=True)[1])
    all_counts = np.sort(np.concatenate(counts_per_context))[::-1]
    if len(all_counts) < max_rows:
        return MIN_COUNT
    return max(MIN_COUNT, int(all_counts[max_rows - 1]) + 1)


def out_of_fold(
    contexts: IntArray, buckets: IntArray, target: IntArray, fold: IntArray, vocab_size: int, n_classes: int
) -> tuple[NDArray[np.float32], IntArray]:
    """Each fold's contexts looked up in a table fitted on the other folds: (the tables
    stacked, each context's row in the stack). Training targets then get the n-gram's
    view of a customer it has not seen, as serving will."""
    rows = np.zeros(len(contexts), dtype=np.int64)
    stacked, offset = [], 0
    for f in np.unique(fold):
        mine = fold == f
        tables = fit(contexts[~mine], buckets[~mine], target[~mine], vocab_size, n_classes)
        rows[mine] = tables.rows(contexts[mine], buckets[mine]) + offset
        stacked.append(tables.log_proba)
        offset += len(tables.log_proba)
    if not stacked:
        return np.zeros((1, n_classes), np.float32), rows
    return np.concatenate(stacked), rows
