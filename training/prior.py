"""The n-gram tables one training run needs: out-of-fold rows for the training events, a
table of the training events for validation, and the table the served model carries."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from state.encoding import FeatureSpec, gap_bucket, short_gap_feature
from training import ngram
from training.evaluate import class_of_tokens
from training.history import History

N_FOLDS = 5


@dataclass
class Prior:
    table: NDArray[np.float32]  # the training graph's: out-of-fold tables, then the training events' table
    train_rows: NDArray[np.int64]  # per event of the training history: its row in `table`
    val_rows: NDArray[np.int64]  # per event of the validation history
    serving: ngram.NgramTables


def contexts_and_targets(
    history: History, spec: FeatureSpec, learn: NDArray[np.bool_] | None = None
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Each event's last tokens, its gap bucket (as the encoding sees the newest event of a
    window) and the class of the customer's next event (-1: none, unknown, or the event is not
    in `learn`)."""
    tokens = spec.tokens(history.codes(spec.level))
    following = class_of_tokens(np.append(tokens[1:], 0))
    has_next = np.append(~history.seq_start[1:], False)
    target = np.where(has_next, following, -1)
    if learn is not None:
        target = np.where(learn, target, -1)
    gaps = np.where(history.seq_start, 0, history.ts - np.append(history.ts[:1], history.ts[:-1]))
    buckets = gap_bucket(short_gap_feature(gaps))
    return ngram.context_tokens(tokens, history.seq_start), buckets, target


def prepare(
    history: History,
    train_hist: History,
    val_hist: History,
    spec: FeatureSpec,
    serve_from: NDArray[np.bool_],
    seed: int,
) -> Prior:
    """`serve_from` selects the events of `history` whose successors the served table learns
    (training and validation periods: the data the reported baselines are fitted on)."""
    vocab, classes = spec.vocab_size, spec.n_classes
    contexts, buckets, target = contexts_and_targets(train_hist, spec)
    fold = np.random.default_rng(seed + 7_919).permutation(len(train_hist.customer_ids))[train_hist.customer] % N_FOLDS
    stacked, train_rows = ngram.out_of_fold(contexts, buckets, target, fold, vocab, classes)
    whole_train = ngram.fit(contexts, buckets, target, vocab, classes)
    val_contexts, val_buckets, _ = contexts_and_targets(val_hist, spec)
    val_rows = whole_train.rows(val_contexts, val_buckets) + len(stacked)
    all_contexts, all_buckets, all_target = contexts_and_targets(history, spec, serve_from)
    serving = ngram.fit(all_contexts, all_buckets, all_target, vocab, classes)
    return Prior(np.concatenate([stacked, whole_train.log_proba]), train_rows, val_rows, serving)
