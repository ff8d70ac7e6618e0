"""`seqscore train`: history -> vocabulary and scaling -> windows and labels -> LSTM ->
evaluation against baselines on the held-out split -> a new registry version (+ promotion).

Splits: `time` (default) trains on events before T1, stops early on [T1, T2) and tests on
events from T2 on, with earlier history as context, as in production; `customer` splits
customers 70/15/15. Nothing reaches the registry until the version is complete.
"""

from __future__ import annotations

import json
import resource
import subprocess
import time
from collections.abc import Callable
from dataclasses import astuple, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from state.encoding import DAY, FeatureSpec, context_features, step_features, window_index
from state.errors import ConfigError
from training import fitting
from training.alerts import ThresholdRule, choose_threshold
from training.choice import choose_served
from training.defaults import DEFAULT_BUDGET_S, DEFAULT_WINDOW, SEARCH_SHARE
from training.evaluate import (
    ScoringSet,
    as_of_set_at,
    class_of_tokens,
    evaluate_points,
    predict,
    prefix_set,
)
from training.fitting import epochs_for, log
from training.history import History, TopicReplay, load_history
from training.labels import (
    SilencePoints,
    as_of_dates,
    as_of_points,
    churn_labels,
    customer_fold,
    next_event_ts,
    sample_score_times,
    silence_points,
    time_split,
    training_chunks,
)
from training.model import ModelConfig
from training.prior import prepare as prepare_prior
from training.registry import MANIFEST_FILE, MODEL_FILE, MODEL_FORMAT, Registry, load_model, resolve_model_dir
from training.search import search, trials_for

MAX_VOCABULARY = 1000
RECOVERY_RATIO = 0.8  # recovery threshold = alert threshold x this (hysteresis)
# silence windows per mark: at most the chunk windows / this (see labels.silence_points)
SILENCE_WINDOWS_PER_MARK_DIVISOR = 4
AS_OF_DATES = 12  # as-of snapshots of the customer base in the training period (churn at any silence)
VAL_AS_OF_DATES = 3
NEVER_ALERT = 1.5  # above any probability: the threshold of a model that could not learn churn


@dataclass
class TrainOptions:
    events: str
    registry: Path
    profiles: str | None = None
    level: str = "coarse"
    window: int = DEFAULT_WINDOW
    horizon_days: float = 120.0
    split: str = "time"
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    epochs: int | None = None  # a cap; None: sized to the data (training/fitting.py), early stopping decides
    trials: int | None = None  # recipe search trials; None: sized to the data (training/search.py)
    budget_s: float = DEFAULT_BUDGET_S  # wall-clock cap of the search and the refit
    fixed: dict[str, Any] = field(default_factory=dict)  # recipe values the search must keep (given as flags)
    refit: bool = True  # fit the chosen recipe again on every event before publishing
    alerts: ThresholdRule = field(default_factory=ThresholdRule)
    seed: int = 0
    promote: str = "auto"
    patience: int = 3
    model: ModelConfig = field(default_factory=ModelConfig)
    replay: TopicReplay | None = None  # how to replay `kafka://TOPIC` events


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


@dataclass(frozen=True)
class Period:
    """Which events carry loss for one head, and the end of the data its labels may use."""

    label_end: int
    loss_from: int | None = None
    loss_until: int | None = None

    def mask(self, ts: NDArray[np.int64]) -> NDArray[np.bool_]:
        keep = np.ones(ts.shape, dtype=bool)
        if self.loss_from is not None:
            keep &= ts >= self.loss_from
        if self.loss_until is not None:
            keep &= ts < self.loss_until
        return keep


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

    per_mark = max(len(chunks.ends) // SILENCE_WINDOWS_PER_MARK_DIVISOR, 1)
    quiet = silence_points(history.ts, nxt, churn_period.label_end, horizon_days, rng, per_mark)
    parts = [quiet]
    if as_of is not None and len(as_of):
        snapshot = as_of_points(history.ts, history.seq_start, as_of, churn_period.label_end, horizon_days)
        if len(snapshot.ends) > len(chunks.ends):  # as many snapshot windows as chunked ones at most
            keep = np.sort(rng.choice(len(snapshot.ends), len(chunks.ends), replace=False))
            snapshot = SilencePoints(*(part[keep] for part in astuple(snapshot)))
        parts.append(snapshot)
    points = SilencePoints(*(np.concatenate(column) for column in zip(*map(astuple, parts), strict=True)))
    points = SilencePoints(*(part[churn_period.mask(history.ts[points.ends])] for part in astuple(points)))
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


def refit_on_everything(
    history: History, spec: FeatureSpec, options: TrainOptions, epochs: int, choice: dict[str, Any],
    rng: np.random.Generator,
) -> fitting.Fitted:
    """The served model: the chosen settings fitted again on every event of the file (the split
    chose them and measured them; the newest events are the ones the future resembles most),
    with the same parts switched off as the split's choice switched off."""
    data_end = int(history.ts.max()) + 1
    everything = np.ones(len(history), dtype=bool)
    prior = prepare_prior(history, history, history, spec, everything, options.seed)
    dates = as_of_dates(history.ts, int(history.ts.min()), data_end - int(options.horizon_days * DAY), AS_OF_DATES)
    period = Period(label_end=data_end)
    arrays = training_arrays(history, spec, period, period, options.horizon_days, rng, prior.train_rows, dates)
    final = fitting.fit(spec, options.model, arrays, None, prior.table, prior.serving, epochs, options.seed,
                        label="refit ")
    if choice["next_action"]["served"] == "ngram":
        fitting.serve_ngram_alone(final)
    if choice["churn"]["served"] == "recency":
        fitting.serve_recency_alone(final)
    return final


def epochs_within(fitted: fitting.Fitted, seconds_left: float, growth: float) -> int:
    """The refit's epochs: the split's best, or as many as the rest of the wall-clock cap holds
    on data `growth` times larger (0 when that is under half the best: then no refit)."""
    per_epoch = fitted.seconds / max(fitted.epochs_run, 1) * growth
    affordable = int(seconds_left // max(per_epoch, 1e-9))
    if affordable >= fitted.best_epochs:
        return fitted.best_epochs
    return affordable if affordable >= max(fitted.best_epochs // 2, 1) else 0


def same_alert_rate(risk: NDArray[np.float32], threshold: float, new_risk: NDArray[np.float32]) -> float:
    """The threshold at which `new_risk` alerts as many of the same points as `risk` did at `threshold`."""
    if len(risk) == 0:
        return threshold
    rate = float(np.mean(risk >= threshold))
    return float(np.quantile(new_risk, 1 - rate)) if 0 < rate < 1 else threshold


def scoring_points(
    history: History,
    spec: FeatureSpec,
    events: NDArray[np.bool_],
    next_end: int,
    churn_end: int,
    horizon_days: float,
    next_from: int | None = None,
    churn_range: tuple[int, int] | None = None,
) -> ScoringSet:
    """Scoring points at the selected events; each head keeps only the labels of its own period."""
    points = prefix_set(history, spec, events, next_end, horizon_days)
    if churn_end != next_end:
        churn_view = prefix_set(history, spec, events, churn_end, horizon_days)
        points.churn_label, points.churn_known = churn_view.churn_label, churn_view.churn_known
    ts = history.ts[points.ends]
    if next_from is not None:
        points.next_class = np.where(ts >= next_from, points.next_class, -1)
    if churn_range is not None:
        points.churn_known = points.churn_known & (ts >= churn_range[0]) & (ts < churn_range[1])
    return points


def code_version() -> str:
    """The package version, with the git commit where this runs from a checkout."""
    from importlib.metadata import version

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except OSError:
        commit = ""
    return f"{version('seqscore')}{'+' + commit if commit else ''}"


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _smoke_sample(model: Any, spec: FeatureSpec, history: History, points: ScoringSet) -> dict[str, Any]:
    """A few scoring points and their outputs: serving re-checks them after loading a model."""
    from state.encoding import encode, gather_windows

    take = points.subset(np.isin(np.arange(len(points)), np.linspace(0, len(points) - 1, 8).astype(int)))
    raw = gather_windows(
        history.ts,
        history.codes(spec.level),
        history.customer_start,
        take.ends,
        take.score_ts,
        spec.window,
        history.gender,
        history.age_group,
    )
    inputs = encode(raw, spec)
    out = model.predict_on_batch(inputs)
    return {
        "inputs": {k: v.tolist() for k, v in inputs.items()},
        "next": np.asarray(out["next"]).round(6).tolist(),
        "churn": np.asarray(out["churn"]).reshape(-1).round(6).tolist(),
    }


def _decide_promotion(
    options: TrainOptions,
    registry: Registry,
    result: dict[str, Any],
    history: History,
    test_points_for: Callable[[FeatureSpec], ScoringSet],
    folds: list[dict[str, Any]],
) -> tuple[bool, str]:
    if options.promote == "never":
        return False, "--promote never"
    if options.promote == "always":
        return True, "--promote always"
    below = below_baselines(result)
    refused = f"worse than a baseline on the test data: {below}" if below else ""
    current = registry.current()
    if current is None:
        return (False, refused) if below else (True, "no current model; not worse than any baseline")
    try:
        model, manifest = load_model(registry.path(current))
    except ConfigError as exc:  # a model this version cannot serve is no bar to replacing it
        reason = f"the current model {current} cannot be evaluated ({exc})"
        return (False, f"{refused}; {reason}") if below else (True, f"{reason}; not worse than any baseline")
    spec = FeatureSpec.from_dict(manifest["features"])
    points = test_points_for(spec)
    threshold = manifest["churn"]["alert_threshold"]
    theirs = evaluate_points(model, spec, history, points, threshold, folds, options.horizon_days)
    ours_acc, theirs_acc = result["next_action"]["accuracy"], theirs["next_action"]["accuracy"]
    ours_auc, theirs_auc = result["churn"]["roc_auc"], theirs["churn"]["roc_auc"]
    verdict = (
        f"next-action accuracy {ours_acc:.4f} vs current {current} {theirs_acc:.4f}, "
        f"churn ROC AUC {ours_auc:.4f} vs {theirs_auc:.4f} on the same test data"
    )
    if below:
        return False, f"{refused}; {verdict}"
    if ours_acc >= theirs_acc and not ours_auc < theirs_auc:  # a NaN AUC (no churn labels) is no worse
        return True, f"not worse: {verdict}"
    return False, f"worse: {verdict}"


def below_baselines(result: dict[str, Any]) -> str:
    """Where the model is below the best baseline it reports ('' when nowhere)."""
    found = []
    for head, metric in (("next_action", "accuracy"), ("churn", "roc_auc")):
        ours = result[head][metric]
        scored = {k: v[metric] for k, v in result[head]["baselines"].items() if _finite(v[metric])}
        if not scored or not _finite(ours):
            continue
        best = max(scored, key=lambda k: scored[k])
        if ours < scored[best]:
            found.append(f"{head.replace('_', '-')} {metric} {ours:.4f} < {best} {scored[best]:.4f}")
    return "; ".join(found)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and bool(np.isfinite(value))


def run(options: TrainOptions) -> dict[str, Any]:
    """Train, evaluate, publish; returns the new version's manifest."""
    started = time.monotonic()
    history = load_history(options.events, options.profiles, options.replay)
    first, last = history.time_range()
    data_end = last + 1
    log(
        f"loaded {len(history):,} events of {len(history.customer_ids):,} customers from {options.events} "
        f"({_iso(first)} .. {_iso(last)})"
    )
    rng = np.random.default_rng(options.seed)
    fractions = options.fractions

    horizon = int(options.horizon_days * DAY)
    if options.split == "time":
        # next action tests on the latest events; churn labels need `horizon` of data after the
        # scoring time, so churn gets its own cuts inside [first event, end - horizon)
        t1, t2 = time_split(history.ts, fractions)
        observable = history.ts[history.ts < data_end - horizon]
        if len(observable) == 0:
            log(
                f"churn: the data spans {(data_end - first) / DAY:.0f} days, less than the churn horizon "
                f"({options.horizon_days:g} days): no churn label is known, so churn is not learned and the "
                "model raises no churn alert (--churn-horizon-days sets a shorter horizon)"
            )
            c1, c2 = t1, t2
        else:
            c1, c2 = time_split(observable, fractions)
            c1, c2 = min(c1, t1), min(c2, t2)
        train_hist = history.select(history.ts < t1)
        val_hist = history.select(history.ts < t2)
        train_periods = (Period(label_end=t1), Period(label_end=c1))
        val_periods = (Period(label_end=t2, loss_from=t1), Period(label_end=data_end, loss_from=c1, loss_until=c2))
        test_events = history.ts >= min(t2, c2)
        val_events = (history.ts >= min(t1, c1)) & (history.ts < t2)
        val_next_end, val_churn_end = t2, data_end
        fit_events = next_event_ts(history.ts, history.seq_start) < t2
        fit_customers = np.ones(len(history.customer_ids), dtype=bool)
        baseline_end = c2
        val_churn: tuple[int, int, NDArray[np.bool_] | None] = (c1, c2, None)
        cuts: dict[str, Any] = {
            "next_action": {"train_before": _iso(t1), "test_from": _iso(t2)},
            "churn": {"train_before": _iso(c1), "test_from": _iso(c2), "test_until": _iso(data_end - horizon)},
        }
    else:
        fold = customer_fold(history.customer, history.customer_ids, fractions, options.seed)
        train_hist, val_hist = history.select(fold == 0), history.select(fold == 1)
        train_periods = val_periods = (Period(label_end=data_end), Period(label_end=data_end))
        test_events, val_events = fold == 2, fold == 1
        val_next_end = val_churn_end = data_end
        t2 = c2 = int(history.ts.min())
        fit_events = fold != 2
        fit_customers = np.zeros(len(history.customer_ids), dtype=bool)
        fit_customers[history.customer[fold != 2]] = True
        baseline_end = data_end
        val_customers = np.zeros(len(history.customer_ids), dtype=bool)
        val_customers[history.customer[fold == 1]] = True
        val_churn = (int(history.ts.min()), data_end - horizon, val_customers)
        cuts = {}
    if len(train_hist) == 0 or not test_events.any():
        raise ConfigError(f"{options.events}: too little data for a {options.split} split {fractions}")

    use_profile = bool((history.gender >= 0).any() or (history.age_group >= 0).any())
    # every activity of the file is a class: one that appears only late is the newest behaviour
    spec = build_spec(history, options.level, options.window, use_profile)
    log(
        f"vocabulary: {spec.n_classes} activities at level {options.level}; window {spec.window}; "
        f"profile features {'on' if use_profile else 'off'}"
    )
    prior = prepare_prior(history, train_hist, val_hist, spec, fit_events, options.seed)
    train_as_of = as_of_dates(
        train_hist.ts, int(train_hist.ts.min()), train_periods[1].label_end - horizon, AS_OF_DATES
    )
    arrays: dict[int, tuple[FeatureSpec, fitting.Arrays, fitting.Arrays]] = {}

    def arrays_for(window: int) -> tuple[FeatureSpec, fitting.Arrays, fitting.Arrays]:
        if window not in arrays:
            windowed = replace(spec, window=window)
            draw = np.random.default_rng([options.seed, window])  # the same arrays whatever the trial order
            train = training_arrays(
                train_hist, windowed, *train_periods, options.horizon_days, draw, prior.train_rows, train_as_of
            )
            val = training_arrays(val_hist, windowed, *val_periods, options.horizon_days, draw, prior.val_rows)
            arrays[window] = (windowed, train, val)
        return arrays[window]

    _, train, val = arrays_for(spec.window)
    n_train = int(train[2]["next"].sum())
    log(
        f"training on {len(train[0]['tokens']):,} windows ({n_train:,} next-action targets, "
        f"{int(train[2]['churn'].sum()):,} churn targets, {len(train_as_of)} as-of dates); validating on "
        f"{int(val[2]['next'].sum()):,}"
    )

    def fit_trial(config: ModelConfig, window: int, seed: int, on_epoch: Any) -> fitting.Fitted:
        windowed, train, val = arrays_for(window)
        epochs = epochs_for(len(train[0]["tokens"]), config.batch_size, options.epochs)
        return fitting.fit(
            windowed, config, train, val, prior.table, prior.serving, epochs, seed, options.patience, on_epoch
        )

    n_val = int(val[2]["next"].sum())
    trials = options.trials or trials_for(n_train, epochs_for(len(train[0]["tokens"]), 128, options.epochs), n_val)
    search_started = time.monotonic()
    found = search(
        fit_trial, options.model, spec.window, trials, options.seed, options.budget_s * SEARCH_SHARE, options.fixed
    )
    fitted, spec, val = found.best, arrays_for(found.window)[0], arrays_for(found.window)[2]
    options = replace(options, model=found.config)
    serve_model, curves = fitted.serve_model, fitted.curves
    fit_seconds, epochs_run = fitted.seconds, fitted.epochs_run
    epochs = epochs_for(len(arrays_for(found.window)[1][0]["tokens"]), found.config.batch_size, options.epochs)

    val_points = scoring_points(
        history,
        spec,
        val_events,
        val_next_end,
        val_churn_end,
        options.horizon_days,
        next_from=t1 if options.split == "time" else None,
        churn_range=(c1, c2) if options.split == "time" else None,
    )
    val_dates = as_of_dates(history.ts, val_churn[0], val_churn[1], VAL_AS_OF_DATES)
    val_as_of = as_of_set_at(history, spec, val_dates, options.horizon_days, val_churn[2])
    choice = choose_served(fitted, val, prior.table, spec, history, val_as_of, val_points)
    _, val_risk = predict(serve_model, spec, history, val_points)
    known = val_points.churn_known
    if 0 < val_points.churn_label[known].sum() < known.sum():  # both outcomes seen: churn was learnable
        threshold, expected = choose_threshold(
            options.alerts,
            val_points.churn_label[known],
            val_risk[known],
            history.customer[val_points.ends[known]],
            val_points.score_ts[known],
        )
        log(
            f"churn alert threshold {threshold:.3f} ({options.alerts.describe()}): on validation precision "
            f"{expected['precision']}, recall {expected['recall']}, {expected['alerted_share_per_day']:.1%} of the "
            "customers scored on a day alerted"
        )
    else:
        threshold, expected = NEVER_ALERT, {"policy": options.alerts.kind, "value": options.alerts.value}

    def test_points_for(model_spec: FeatureSpec) -> ScoringSet:
        return scoring_points(
            history,
            model_spec,
            test_events,
            data_end,
            data_end,
            options.horizon_days,
            next_from=t2 if options.split == "time" else None,
            churn_range=(c2, data_end) if options.split == "time" else None,
        )

    test_points = test_points_for(spec)
    folds = [
        {
            "fit_events": fit_events,
            "fit_points": val_points,
            "fit_customers": fit_customers,
            "fit_at": baseline_end,
            "predict": np.ones(len(test_points), dtype=bool),
        }
    ]
    log(f"evaluating on {len(test_points):,} held-out scoring points ...")
    result = evaluate_points(serve_model, spec, history, test_points, threshold, folds, options.horizon_days)
    curves_for_plot = result.pop("_curves")

    refit: dict[str, Any] = {"events": 0}
    refit_epochs = epochs_within(
        fitted, options.budget_s - (time.monotonic() - search_started), len(history) / max(len(train_hist), 1)
    )
    if options.refit and refit_epochs == 0:
        log("no refit: the rest of --budget would not fit enough epochs on all events; serving the split's model")
        refit = {"events": 0, "skipped": "over --budget"}
    elif options.refit:
        log(f"refitting on all {len(history):,} events, {refit_epochs} epochs (the split's best {fitted.best_epochs})")
        final = refit_on_everything(history, spec, options, refit_epochs, choice, rng)
        _, final_val_risk = predict(final.serve_model, spec, history, val_points)
        threshold = same_alert_rate(val_risk[known], threshold, final_val_risk[known])
        serve_model = final.serve_model
        refit = {"events": len(history), "epochs": final.epochs_run, "seconds": round(final.seconds, 1)}

    registry = Registry(options.registry)
    version = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    while (registry.root / version).exists():
        version += "a"
    staging = registry.staging_dir(version)
    serve_model.save(staging / MODEL_FILE)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    manifest: dict[str, Any] = {
        "format": MODEL_FORMAT,
        "version": version,
        "created_at": _iso(int(time.time())),
        "code_version": code_version(),
        "model_file": MODEL_FILE,
        "data": {
            "source": options.events,
            "events": len(history),
            "customers": len(history.customer_ids),
            "start": _iso(first),
            "end": _iso(last),
        },
        "features": spec.to_dict(),
        "churn": {
            "horizon_days": options.horizon_days,
            "alert_threshold": round(threshold, 6),
            "recovery_threshold": round(threshold * RECOVERY_RATIO, 6),
            "alert_policy": expected,
        },
        "training": {
            "split": options.split,
            "fractions": list(fractions),
            "cuts": cuts,
            "epochs_max": epochs,
            "epochs_run": epochs_run,
            "seed": options.seed,
            "model": options.model.to_dict(),
            "trials": found.summary(),
            "seconds": round(fit_seconds, 1),
            "events_per_second": round(n_train * epochs_run / fit_seconds),
            "total_seconds": round(time.monotonic() - started, 1),
            "peak_rss_mb": round(peak_rss_mb),
            "windows": len(train[0]["tokens"]),
            "targets": n_train,
        },
        "choice": choice,
        "refit": refit,
        "metrics": result,
        "smoke": _smoke_sample(serve_model, spec, history, test_points),
    }
    from training.report import write_report

    write_report(staging, manifest, result, curves_for_plot, curves)
    (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    promote, reason = _decide_promotion(options, registry, result, history, test_points_for, folds)
    registry.publish(staging, version)
    if promote:
        registry.promote(version, reason)
    log(f"published {registry.root / version}; {'promoted' if promote else 'not promoted'}: {reason}")
    manifest["promotion"] = {"promoted": promote, "reason": reason}
    return manifest


def evaluate_model(
    model_path: Path,
    events: str,
    profiles: str | None,
    as_of: int | None,
    progress: bool = True,
    replay: TopicReplay | None = None,
) -> dict[str, Any]:
    """`seqscore evaluate`: any model on any history, baselines cross-fitted by customer halves."""
    from training.evaluate import as_of_set, crossfit_folds

    model_dir = resolve_model_dir(model_path)
    model, manifest = load_model(model_dir)
    spec = FeatureSpec.from_dict(manifest["features"])
    horizon = float(manifest["churn"]["horizon_days"])
    history = load_history(events, profiles, replay)
    data_end = int(history.ts.max()) + 1
    if as_of is None:
        points = prefix_set(history, spec, np.ones(len(history), dtype=bool), data_end, horizon)
    else:
        points = as_of_set(history, spec, as_of, horizon)
        if len(points) == 0:
            raise ConfigError(f"--as-of {_iso(as_of)}: no customer has an event before it")
    if progress:
        log(f"evaluating {manifest['version']} on {len(points):,} scoring points of {events}")
    folds = crossfit_folds(history, points, data_end if as_of is None else as_of)
    result = evaluate_points(
        model, spec, history, points, manifest["churn"]["alert_threshold"], folds, horizon, progress=progress
    )
    result.pop("_curves")
    result["model_version"] = manifest["version"]
    if as_of is not None:
        result["as_of"] = _iso(as_of)
    return result
