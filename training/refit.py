"""The served model's refit: the chosen recipe fitted again on every event, within what is
left of the wall-clock cap, its alert threshold moved to keep the split's alert rate."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from state.encoding import DAY, FeatureSpec
from training import fitting
from training.arrays import AS_OF_DATES, training_arrays
from training.history import History
from training.labels import as_of_dates
from training.prior import prepare as prepare_prior
from training.split import Period

if TYPE_CHECKING:  # train.py imports this module
    from training.train import TrainOptions


def refit_on_everything(
    history: History,
    spec: FeatureSpec,
    options: TrainOptions,
    epochs: int,
    choice: dict[str, Any],
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
    final = fitting.fit(
        spec, options.model, arrays, None, prior.table, prior.serving, epochs, options.seed, label="refit "
    )
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
