"""The network's arrays: vocabulary and scaling from the events, windows with their targets
and sample weights per head, and the per-window arrays of a split that the search draws on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import astuple, dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from state.encoding import DAY, FeatureSpec, context_features, step_features, window_index
from training import fitting
from training.evaluate import class_of_tokens
from training.fitting import epochs_for, log
from training.history import History
from training.labels import (
    SilencePoints,
    as_of_dates,
    as_of_points,
    churn_labels,
    next_event_ts,
    sample_score_times,
    silence_points,
    training_chunks,
)
from training.model import ModelConfig
from training.prior import Prior
from training.prior import prepare as prepare_prior
from training.search import FitTrial
from training.split import Period, Split

MAX_VOCABULARY = 1000
# silence windows per mark: at most the chunk windows / this (see labels.silence_points)
SILENCE_WINDOWS_PER_MARK_DIVISOR = 4
AS_OF_DATES = 12  # as-of snapshots of the customer base in the training period (churn at any silence)


def build_spec(history: History, level: str, window: int, use_profile: bool) -> FeatureSpec:
    """Vocabulary (most frequent first) and scaling constants from the training events."""
    names, index = history.names(level)
    counts = np.bincount(index, minlength=len(names))
    order = np.argsort(-counts, kind="stable")[:MAX_VOCABULARY]
    vocabulary = tuple(str(names[i]) for i in order if counts[i] > 0)
    same = ~history.seq_start[1:]
    gaps = np.diff(history.ts)[same] / DAY if len(history) > 1 else np.zeros(1)
    tenure = (history.ts - history.ts[history.customer_start]) / DAY
    count = np.arange(len(history)) - history.customer_start + 1

    def scale(values: NDArray[Any]) -> float:
        return float(max(np.log1p(np.percentile(values, 99)) if len(values) else 1.0, np.log1p(1.0)))

    return FeatureSpec(
        window=window,
        level=level,
        vocabulary=vocabulary,
        gap_scale=scale(gaps),
        tenure_scale=scale(tenure),
        count_scale=scale(count),
        use_profile=use_profile,
    )


def training_arrays(
    history: History,
    spec: FeatureSpec,
    next_period: Period,
    churn_period: Period,
    horizon_days: float,
    rng: np.random.Generator,
    prior_rows: NDArray[np.int64],
    as_of: NDArray[np.int64] | None = None,
) -> tuple[dict[str, Any], ...]:
    """(inputs, targets, sample weights): chunked windows, where each event is a target once,
    then windows scored in the silence after an event and at the `as_of` dates (churn loss at
    their last step only).

    Each head learns from the events its Period selects, with labels from the events before
    its `label_end`; earlier history still serves as context. `prior_rows` gives each event's
    row in the training graph's n-gram table.
    """
    window = spec.window
    chunks = training_chunks(history.customer_start, window)
    nxt = next_event_ts(history.ts, history.seq_start)
    score = sample_score_times(history.ts, nxt, churn_period.label_end, rng)
    codes = history.codes(spec.level)
    following = class_of_tokens(np.append(spec.tokens(codes)[1:], 0))
    next_class = np.where(nxt < next_period.label_end, following, -1)
    churn, known = churn_labels(score, nxt, churn_period.label_end, horizon_days)

    idx, real = window_index(chunks.ends, history.customer_start[chunks.ends], window)
    loss = real & (np.arange(window)[None, :] >= chunks.first_loss[:, None])
    w_next = loss & (next_class[idx] >= 0) & next_period.mask(history.ts[idx])
    w_churn = loss & known[idx] & churn_period.mask(history.ts[idx])
    elapsed = np.where(real, score[idx] - history.ts[idx], 0)
    inputs = _window_arrays(history, spec, codes, chunks.ends, elapsed, prior_rows)
    targets = {"next": np.where(w_next, next_class[idx], 0), "churn": np.where(w_churn, churn[idx], 0)}
    weights = {"next": w_next, "churn": w_churn}

    points = _quiet_points(history, nxt, churn_period, horizon_days, rng, len(chunks.ends), as_of)
    at_last = np.arange(window)[None, :] == window - 1
    quiet_elapsed = np.where(at_last, (points.score_ts - history.ts[points.ends])[:, None], 0)
    silent = _window_arrays(history, spec, codes, points.ends, quiet_elapsed, prior_rows)
    inputs = {k: np.concatenate([inputs[k], silent[k]]) for k in inputs}
    n_quiet = len(points.ends)
    targets = {
        "next": np.concatenate([targets["next"], np.zeros((n_quiet, window))]).astype(np.int32),
        "churn": np.concatenate([targets["churn"], at_last * points.label[:, None]]).astype(np.float32)[..., None],
    }
    weights = {
        "next": np.concatenate([weights["next"], np.zeros((n_quiet, window), dtype=bool)]).astype(np.float32),
        "churn": np.concatenate([weights["churn"], at_last * points.weight[:, None]]).astype(np.float32),
    }
    return inputs, targets, weights


def _quiet_points(
    history: History,
    nxt: NDArray[np.int64],
    churn_period: Period,
    horizon_days: float,
    rng: np.random.Generator,
    n_chunks: int,
    as_of: NDArray[np.int64] | None,
) -> SilencePoints:
    """The churn-only windows: scored in the silence after events and at the `as_of` dates,
    inside the churn period; `n_chunks` (the chunked windows) bounds how many."""
    per_mark = max(n_chunks // SILENCE_WINDOWS_PER_MARK_DIVISOR, 1)
    quiet = silence_points(history.ts, nxt, churn_period.label_end, horizon_days, rng, per_mark)
    parts = [quiet]
    if as_of is not None and len(as_of):
        snapshot = as_of_points(history.ts, history.seq_start, as_of, churn_period.label_end, horizon_days)
        if len(snapshot.ends) > n_chunks:  # as many snapshot windows as chunked ones at most
            keep = np.sort(rng.choice(len(snapshot.ends), n_chunks, replace=False))
            snapshot = SilencePoints(*(part[keep] for part in astuple(snapshot)))
        parts.append(snapshot)
    points = SilencePoints(*(np.concatenate(column) for column in zip(*map(astuple, parts), strict=True)))
    return SilencePoints(*(part[churn_period.mask(history.ts[points.ends])] for part in astuple(points)))


def _window_arrays(
    history: History,
    spec: FeatureSpec,
    codes: NDArray[np.uint32],
    ends: NDArray[np.int64],
    elapsed: NDArray[np.int64],
    prior_rows: NDArray[np.int64],
) -> dict[str, NDArray[Any]]:
    """Model inputs of the windows ending at `ends`, with the elapsed time at each step;
    `codes` are the history's activity codes at the model's level."""
    starts = history.customer_start[ends]
    idx, real = window_index(ends, starts, spec.window)
    ts = np.where(real, history.ts[idx], 0)
    window_codes = np.where(real, codes[idx], 0).astype(np.uint32)
    return {
        "tokens": np.where(real, spec.tokens(window_codes), 0).astype(np.int32),
        "steps": step_features(ts, window_codes, ends - starts + 1, history.ts[starts], spec),
        "context": context_features(np.where(real, elapsed, 0), history.gender[idx], history.age_group[idx], spec),
        "prior_row": np.where(real, prior_rows[idx], 0).astype(np.int32),
    }


@dataclass
class TrainingData:
    """A split's training and validation arrays per window, built when a window is first
    asked for (the search tries several); `spec` is the full window's."""

    split: Split
    spec: FeatureSpec
    prior: Prior
    as_of: NDArray[np.int64]  # the training arrays' as-of dates
    seed: int
    _by_window: dict[int, tuple[FeatureSpec, fitting.Arrays, fitting.Arrays]] = field(default_factory=dict)

    def at(self, window: int) -> tuple[FeatureSpec, fitting.Arrays, fitting.Arrays]:
        """(spec, training arrays, validation arrays) of the windows `window` events long."""
        if window not in self._by_window:
            split = self.split
            windowed = replace(self.spec, window=window)
            draw = np.random.default_rng([self.seed, window])  # the same arrays whatever the trial order
            train = training_arrays(
                split.train, windowed, *split.train_periods, split.horizon_days, draw, self.prior.train_rows, self.as_of
            )
            val = training_arrays(
                split.val, windowed, *split.val_periods, split.horizon_days, draw, self.prior.val_rows
            )
            self._by_window[window] = (windowed, train, val)
        return self._by_window[window]

    @property
    def windows(self) -> int:
        """Training windows at the full window."""
        return len(self.at(self.spec.window)[1][0]["tokens"])

    @property
    def targets(self) -> int:
        """Next-action targets in training at the full window."""
        return int(self.at(self.spec.window)[1][2]["next"].sum())

    @property
    def val_targets(self) -> int:
        """Next-action targets in validation at the full window."""
        return int(self.at(self.spec.window)[2][2]["next"].sum())

    def trial_fitter(self, epochs_cap: int | None, patience: int) -> FitTrial:
        """How the search fits one recipe: on its window's arrays, for epochs sized to them."""

        def fit_trial(
            config: ModelConfig, window: int, seed: int, on_epoch: Callable[[int, dict[str, float]], None]
        ) -> fitting.Fitted:
            windowed, train, val = self.at(window)
            epochs = epochs_for(len(train[0]["tokens"]), config.batch_size, epochs_cap)
            return fitting.fit(
                windowed, config, train, val, self.prior.table, self.prior.serving, epochs, seed, patience, on_epoch
            )

        return fit_trial


def prepare_training_data(split: Split, level: str, window: int, seed: int) -> TrainingData:
    """Vocabulary and scaling, the n-gram prior and the full window's arrays of `split`."""
    history = split.history
    use_profile = bool((history.gender >= 0).any() or (history.age_group >= 0).any())
    # every activity of the file is a class: one that appears only late is the newest behaviour
    spec = build_spec(history, level, window, use_profile)
    log(
        f"vocabulary: {spec.n_classes} activities at level {level}; window {spec.window}; "
        f"profile features {'on' if use_profile else 'off'}"
    )
    prior = prepare_prior(history, split.train, split.val, spec, split.fit_events, seed)
    horizon = int(split.horizon_days * DAY)
    train_as_of = as_of_dates(
        split.train.ts, int(split.train.ts.min()), split.train_periods[1].label_end - horizon, AS_OF_DATES
    )
    data = TrainingData(split, spec, prior, train_as_of, seed)
    _, train, val = data.at(spec.window)
    log(
        f"training on {len(train[0]['tokens']):,} windows ({data.targets:,} next-action targets, "
        f"{int(train[2]['churn'].sum()):,} churn targets, {len(train_as_of)} as-of dates); validating on "
        f"{int(val[2]['next'].sum()):,}"
    )
    return data
