"""The n-gram prior (training/ngram.py) and the model's own layers (training/layers.py): the
lookup in numpy and inside the served model agree, out-of-fold rows never see their own
customer, the table budget holds, and churn risk never falls as the silence grows."""

from __future__ import annotations

import os

import numpy as np
import pytest

from training import ngram

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
VOCAB, CLASSES = 7, 5  # tokens 0 pad, 1 unknown, 2..6 = classes 0..4


def random_history(n_customers: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokens of customers whose next activity mostly follows the last two (a 2nd-order chain)."""
    rng = np.random.default_rng(seed)
    tokens, starts = [], []
    for _ in range(n_customers):
        length = int(rng.integers(1, 12))
        seq = [int(rng.integers(2, VOCAB))]
        for _ in range(length - 1):
            prev2 = seq[-2] if len(seq) > 1 else 0
            seq.append(2 + (seq[-1] + prev2) % CLASSES if rng.random() < 0.8 else int(rng.integers(1, VOCAB)))
        tokens.extend(seq)
        starts.extend([True] + [False] * (len(seq) - 1))
    return np.array(tokens, dtype=np.int64), np.array(starts)


def targets_of(tokens: np.ndarray, starts: np.ndarray) -> np.ndarray:
    following = np.append(tokens[1:], 0) - 2
    has_next = np.append(~starts[1:], False)
    return np.where(has_next & (following >= 0), following, -1)


def test_context_tokens_hold_the_last_events_of_the_same_customer_only() -> None:
    tokens = np.array([2, 3, 4, 5, 6, 2])
    starts = np.array([True, False, False, True, False, False])
    contexts = ngram.context_tokens(tokens, starts, order=3)
    assert contexts.tolist() == [[0, 0, 2], [0, 2, 3], [2, 3, 4], [0, 0, 5], [0, 5, 6], [5, 6, 2]]


def test_the_prior_learns_the_chain_and_backs_off_for_unseen_contexts() -> None:
    tokens, starts = random_history(400, seed=1)
    contexts = ngram.context_tokens(tokens, starts)
    tables = ngram.fit(contexts, np.zeros(len(tokens), np.int64), targets_of(tokens, starts), VOCAB, CLASSES)
    # the chain: after (a, b) comes token 2 + (a + b) % 5, i.e. class (a + b) % 5; a first event b: b % 5
    probe = np.array([[2, 3, 4, 5], [6, 2, 4, 3], [0, 0, 0, 6]])
    for bucket in (0, 3):  # bucket 3 was never seen: the plain contexts answer
        predicted = tables.lookup(probe, np.full(3, bucket)).argmax(axis=1)
        assert predicted.tolist() == [(4 + 5) % CLASSES, (4 + 3) % CLASSES, (6 + 0) % CLASSES]
    never_seen = np.array([[1, 1, 1, 1]])  # four unknown activities in a row
    assert tables.rows(never_seen, np.zeros(1, np.int64))[0] >= 0
    assert np.allclose(np.exp(tables.lookup(never_seen, np.zeros(1, np.int64))).sum(), 1.0, atol=1e-5)
    assert np.allclose(np.exp(tables.log_proba).sum(axis=1), 1.0, atol=1e-5)


def test_the_gap_of_the_newest_event_splits_a_context() -> None:
    """After the same activities, a step logged in the same second as the previous one is
    followed by one activity, a step a day later by another: the timed contexts tell them apart."""
    contexts = np.tile([[0, 2, 3, 4]], (40, 1))
    buckets = np.repeat([0, 4], 20)
    target = np.repeat([1, 3], 20)
    tables = ngram.fit(contexts, buckets, target, VOCAB, CLASSES)
    assert tables.lookup(contexts[:2], np.array([0, 4])).argmax(axis=1).tolist() == [1, 3]
    assert np.isclose(np.exp(tables.lookup(contexts[:1], np.array([2]))[0, [1, 3]]), 0.5, atol=0.05).all()


def test_gap_buckets_split_at_a_second_a_minute_an_hour_and_a_day() -> None:
    from state.encoding import gap_bucket, short_gap_feature

    gaps = np.array([0, 1, 59, 60, 3599, 3600, 86399, 86400, 10**8])
    assert gap_bucket(short_gap_feature(gaps)).tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_out_of_fold_rows_come_from_tables_without_the_customer() -> None:
    tokens, starts = random_history(300, seed=2)
    # one customer with a context nobody else has: tokens 6,6,6,6 then 2, twice (kept in a table)
    tokens = np.concatenate([tokens, [6, 6, 6, 6, 2]])
    starts = np.concatenate([starts, [True, False, False, False, False]])
    contexts = ngram.context_tokens(tokens, starts)
    buckets = np.arange(len(tokens)) % 5
    target = targets_of(tokens, starts)
    customer = np.cumsum(starts) - 1
    fold = customer % 5
    stacked, rows = ngram.out_of_fold(contexts, buckets, target, fold, VOCAB, CLASSES)
    last = len(tokens) - 2  # context 6,6,6,6 predicting class 0
    other = fold != fold[last]
    others = ngram.fit(contexts[other], buckets[other], target[other], VOCAB, CLASSES)
    assert np.allclose(stacked[rows[last]], others.lookup(contexts[last : last + 1], buckets[last : last + 1])[0])


def test_a_table_over_budget_keeps_only_frequent_contexts(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens, starts = random_history(500, seed=3)
    contexts = ngram.context_tokens(tokens, starts)
    buckets = np.arange(len(tokens)) % 5
    target = targets_of(tokens, starts)
    unlimited = ngram.fit(contexts, buckets, target, VOCAB, CLASSES)
    monkeypatch.setattr(ngram, "MAX_TABLE_ENTRIES", 40 * CLASSES)
    small = ngram.fit(contexts, buckets, target, VOCAB, CLASSES)
    assert len(small.log_proba) <= 40 + VOCAB < len(unlimited.log_proba)  # + the order-1 rows, never cut
    rows = small.rows(contexts, buckets)
    assert rows.min() >= 0 and rows.max() < len(small.log_proba)


def test_the_served_layer_looks_up_what_numpy_looks_up() -> None:
    from training.layers import NgramPrior

    tokens, starts = random_history(300, seed=4)
    from state.encoding import gap_bucket, short_gap_feature

    rng = np.random.default_rng(5)
    gaps = rng.choice([0, 1, 30, 600, 7_200, 200_000], size=len(tokens))
    contexts = ngram.context_tokens(tokens, starts)
    tables = ngram.fit(contexts, gap_bucket(short_gap_feature(gaps)), targets_of(tokens, starts), VOCAB, CLASSES)
    assert len(tables.timed_keys[0]) > 1
    layer = NgramPrior.of(tables)
    windows = rng.integers(0, VOCAB, size=(500, 9)).astype(np.int32)
    windows[:50, :6] = 0  # pre-padded short histories
    gap = short_gap_feature(rng.choice(gaps, size=500))
    for width in (9, 3, 1):  # windows narrower than the n-gram's order are padded inside
        got = np.asarray(layer([windows[:, -width:], gap]))
        assert np.array_equal(got, tables.lookup(windows[:, -width:].astype(np.int64), gap_bucket(gap)))


def test_churn_risk_never_falls_as_the_silence_grows() -> None:
    from training.layers import MonotoneChurn

    layer = MonotoneChurn()
    rng = np.random.default_rng(6)
    hidden = rng.normal(size=(64, 16)).astype(np.float32)
    layer.build([(None, 16), (None, 1)])
    layer.set_weights([rng.normal(size=(16, 5)).astype(np.float32) * 0.3, rng.normal(size=5).astype(np.float32)])
    silences = np.linspace(0, 6, 40, dtype=np.float32)  # far past the clip of 2 the encoding applies
    risks = np.stack([np.asarray(layer([hidden, np.full((64, 1), s, np.float32)]))[:, 0] for s in silences], axis=1)
    assert (np.diff(risks, axis=1) >= -1e-7).all()
    unsaturated = risks[:, 0] < 0.99
    assert unsaturated.sum() > 32 and (risks[unsaturated, -1] > risks[unsaturated, 0]).all()
