"""`seqscore train`: history -> split (training/split.py) -> vocabulary, n-gram prior and
windows (training/arrays.py) -> recipe search -> validation (served parts, alert threshold)
-> evaluation against baselines on the held-out split -> refit on every event -> a new
registry version (+ promotion). Nothing reaches the registry until the version is complete.
"""

from __future__ import annotations

import json
import resource
import subprocess
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from state.encoding import FeatureSpec
from state.errors import ConfigError
from training import fitting
from training.alerts import ThresholdRule, choose_threshold
from training.arrays import TrainingData, prepare_training_data
from training.choice import choose_served
from training.defaults import DEFAULT_BUDGET_S, DEFAULT_WINDOW, SEARCH_SHARE
from training.evaluate import ScoringSet, as_of_set_at, evaluate_points, predict, prefix_set
from training.fitting import epochs_for, log
from training.history import History, TopicReplay, load_history
from training.labels import as_of_dates
from training.model import ModelConfig
from training.promotion import decide_promotion
from training.refit import epochs_within, refit_on_everything, same_alert_rate
from training.registry import MANIFEST_FILE, MODEL_FILE, MODEL_FORMAT, Registry, load_model, resolve_model_dir
from training.search import SearchResult, search, trials_for
from training.split import Split, split_history

RECOVERY_RATIO = 0.8  # recovery threshold = alert threshold x this (hysteresis)
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


@dataclass
class Validated:
    """What the validation events decided for the split's model."""

    points: ScoringSet
    choice: dict[str, Any]  # the served parts (training/choice.py)
    risk: NDArray[np.float32]  # the model's churn risk at `points`
    threshold: float
    expected: dict[str, Any]  # the alert policy and what it gave on validation


@dataclass
class Tested:
    """The split's model on the held-out test events."""

    points: ScoringSet
    folds: list[dict[str, Any]]
    result: dict[str, Any]
    curves: dict[str, NDArray[Any]]  # for the report's plots


@dataclass
class Served:
    """The model to publish and its alert threshold."""

    model: Any
    threshold: float
    refit: dict[str, Any]  # how it was refit on every event, for the manifest


@dataclass
class Trained:
    """What a run publishes, and what its manifest and report say of it."""

    options: TrainOptions  # with the recipe the search chose
    split: Split
    data: TrainingData
    found: SearchResult
    spec: FeatureSpec  # at the chosen window
    epochs: int  # the chosen recipe's epoch cap
    validated: Validated
    tested: Tested
    served: Served


def _validate(
    split: Split,
    spec: FeatureSpec,
    fitted: fitting.Fitted,
    val: fitting.Arrays,
    prior_table: NDArray[np.float32],
    options: TrainOptions,
) -> Validated:
    """Choose the served parts (applied to `fitted`) and the churn alert threshold."""
    history = split.history
    points = split.val_points(spec)
    start, end, customers = split.val_as_of_span
    dates = as_of_dates(history.ts, start, end, VAL_AS_OF_DATES)
    as_of = as_of_set_at(history, spec, dates, options.horizon_days, customers)
    choice = choose_served(fitted, val, prior_table, spec, history, as_of, points)
    _, risk = predict(fitted.serve_model, spec, history, points)
    threshold, expected = _alert_threshold(options.alerts, history, points, risk)
    return Validated(points, choice, risk, threshold, expected)


def _alert_threshold(
    rule: ThresholdRule, history: History, points: ScoringSet, risk: NDArray[np.float32]
) -> tuple[float, dict[str, Any]]:
    known = points.churn_known
    if 0 < points.churn_label[known].sum() < known.sum():  # both outcomes seen: churn was learnable
        threshold, expected = choose_threshold(
            rule,
            points.churn_label[known],
            risk[known],
            history.customer[points.ends[known]],
            points.score_ts[known],
        )
        log(
            f"churn alert threshold {threshold:.3f} ({rule.describe()}): on validation precision "
            f"{expected['precision']}, recall {expected['recall']}, {expected['alerted_share_per_day']:.1%} of the "
            "customers scored on a day alerted"
        )
        return threshold, expected
    return NEVER_ALERT, {"policy": rule.kind, "value": rule.value}


def _test(split: Split, spec: FeatureSpec, model: Any, validated: Validated) -> Tested:
    points = split.test_points(spec)
    folds = split.baseline_folds(validated.points, points)
    log(f"evaluating on {len(points):,} held-out scoring points ...")
    result = evaluate_points(model, spec, split.history, points, validated.threshold, folds, split.horizon_days)
    curves = result.pop("_curves")
    return Tested(points, folds, result, curves)


def _serve(
    split: Split,
    spec: FeatureSpec,
    options: TrainOptions,
    fitted: fitting.Fitted,
    validated: Validated,
    seconds_left: float,
    rng: np.random.Generator,
) -> Served:
    """The split's model, or (--refit) the recipe refit on every event where the rest of the
    wall-clock cap affords it, its threshold alerting as often as the split's did."""
    history = split.history
    epochs = epochs_within(fitted, seconds_left, len(history) / max(len(split.train), 1))
    if options.refit and epochs == 0:
        log("no refit: the rest of --budget would not fit enough epochs on all events; serving the split's model")
        return Served(fitted.serve_model, validated.threshold, {"events": 0, "skipped": "over --budget"})
    if not options.refit:
        return Served(fitted.serve_model, validated.threshold, {"events": 0})
    log(f"refitting on all {len(history):,} events, {epochs} epochs (the split's best {fitted.best_epochs})")
    final = refit_on_everything(history, spec, options, epochs, validated.choice, rng)
    _, final_risk = predict(final.serve_model, spec, history, validated.points)
    known = validated.points.churn_known
    threshold = same_alert_rate(validated.risk[known], validated.threshold, final_risk[known])
    refit = {"events": len(history), "epochs": final.epochs_run, "seconds": round(final.seconds, 1)}
    return Served(final.serve_model, threshold, refit)


def _publish(trained: Trained, started: float) -> dict[str, Any]:
    """Stage the version (model, manifest, report), publish it, then promote it or not."""
    options, tested = trained.options, trained.tested
    registry = Registry(options.registry)
    version = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    while (registry.root / version).exists():
        version += "a"
    staging = registry.staging_dir(version)
    trained.served.model.save(staging / MODEL_FILE)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    manifest = _manifest(trained, version, started, peak_rss_mb)
    from training.report import write_report

    write_report(staging, manifest, tested.result, tested.curves, trained.found.best.curves)
    (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    split = trained.split
    promote, reason = decide_promotion(options, registry, tested.result, split.history, split.test_points, tested.folds)
    registry.publish(staging, version)
    if promote:
        registry.promote(version, reason)
    log(f"published {registry.root / version}; {'promoted' if promote else 'not promoted'}: {reason}")
    manifest["promotion"] = {"promoted": promote, "reason": reason}
    return manifest


def _manifest(trained: Trained, version: str, started: float, peak_rss_mb: float) -> dict[str, Any]:
    options, history, fitted = trained.options, trained.split.history, trained.found.best
    threshold = trained.served.threshold
    first, last = history.time_range()
    return {
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
        "features": trained.spec.to_dict(),
        "churn": {
            "horizon_days": options.horizon_days,
            "alert_threshold": round(threshold, 6),
            "recovery_threshold": round(threshold * RECOVERY_RATIO, 6),
            "alert_policy": trained.validated.expected,
        },
        "training": {
            "split": options.split,
            "fractions": list(options.fractions),
            "cuts": {head: {cut: _iso(at) for cut, at in cuts.items()} for head, cuts in trained.split.cuts.items()},
            "epochs_max": trained.epochs,
            "epochs_run": fitted.epochs_run,
            "seed": options.seed,
            "model": options.model.to_dict(),
            "trials": trained.found.summary(),
            "seconds": round(fitted.seconds, 1),
            "events_per_second": round(trained.data.targets * fitted.epochs_run / fitted.seconds),
            "total_seconds": round(time.monotonic() - started, 1),
            "peak_rss_mb": round(peak_rss_mb),
            "windows": trained.data.windows,  # at the full window, as `targets`
            "targets": trained.data.targets,
        },
        "choice": trained.validated.choice,
        "refit": trained.served.refit,
        "metrics": trained.tested.result,
        "smoke": _smoke_sample(trained.served.model, trained.spec, history, trained.tested.points),
    }


def run(options: TrainOptions) -> dict[str, Any]:
    """Train, evaluate, publish; returns the new version's manifest."""
    started = time.monotonic()
    history = load_history(options.events, options.profiles, options.replay)
    first, last = history.time_range()
    log(
        f"loaded {len(history):,} events of {len(history.customer_ids):,} customers from {options.events} "
        f"({_iso(first)} .. {_iso(last)})"
    )
    rng = np.random.default_rng(options.seed)  # the refit's draws
    split = split_history(history, options.split, options.fractions, options.horizon_days, options.seed)
    if len(split.train) == 0 or not split.test_events.any():
        raise ConfigError(f"{options.events}: too little data for a {options.split} split {options.fractions}")
    data = prepare_training_data(split, options.level, options.window, options.seed)

    trials = options.trials or trials_for(data.targets, epochs_for(data.windows, 128, options.epochs), data.val_targets)
    search_started = time.monotonic()
    found = search(
        data.trial_fitter(options.epochs, options.patience),
        options.model,
        data.spec.window,
        trials,
        options.seed,
        options.budget_s * SEARCH_SHARE,
        options.fixed,
    )
    options = replace(options, model=found.config)
    spec, chosen_train, val = data.at(found.window)
    epochs = epochs_for(len(chosen_train[0]["tokens"]), found.config.batch_size, options.epochs)

    validated = _validate(split, spec, found.best, val, data.prior.table, options)
    tested = _test(split, spec, found.best.serve_model, validated)
    seconds_left = options.budget_s - (time.monotonic() - search_started)
    served = _serve(split, spec, options, found.best, validated, seconds_left, rng)
    return _publish(Trained(options, split, data, found, spec, epochs, validated, tested, served), started)


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
