"""The training budget's arithmetic: epochs and trials sized to the data, the refit within the
wall-clock cap (no servers, no training)."""

from __future__ import annotations

from training.fitting import MAX_EPOCHS, MIN_EPOCHS, Fitted, epochs_for
from training.search import MAX_TRIALS, trials_for
from training.train import epochs_within


def test_epochs_follow_the_optimizer_steps_and_stay_under_the_cap() -> None:
    assert epochs_for(100, 128, None) == MAX_EPOCHS  # one step per epoch: as many epochs as allowed
    assert epochs_for(10_000_000, 128, None) == MIN_EPOCHS
    assert epochs_for(100, 128, 3) == 3  # --epochs is a cap


def test_trials_shrink_with_the_data_and_with_a_small_validation_set() -> None:
    assert trials_for(1_000, 15, 50_000) == MAX_TRIALS
    assert trials_for(1_000_000, 15, 50_000) == 1
    assert trials_for(1_000, 15, 1_500) == 2  # one more per 1,000 validation targets


def fitted(seconds: float, epochs: int, best: int) -> Fitted:
    losses = [1.0 - 0.01 * min(e, best - 1) for e in range(epochs)]
    return Fitted(None, None, {"loss": losses, "val_loss": losses}, seconds)


def test_the_refit_keeps_the_best_epochs_when_the_budget_holds_them() -> None:
    assert epochs_within(fitted(100.0, 10, 8), seconds_left=1_000.0, growth=1.5) == 8


def test_the_refit_shortens_or_stops_when_the_budget_runs_out() -> None:
    assert epochs_within(fitted(100.0, 10, 8), seconds_left=90.0, growth=1.5) == 6  # 15 s an epoch
    assert epochs_within(fitted(100.0, 10, 8), seconds_left=40.0, growth=1.5) == 0  # 2 < half of 8


def test_alert_thresholds_follow_the_rule_they_were_asked_for() -> None:
    import numpy as np

    from training.alerts import ThresholdRule, choose_threshold

    rng = np.random.default_rng(0)
    label = (rng.random(2000) < 0.2).astype(float)
    risk = np.clip(label * 0.3 + rng.random(2000) * 0.7, 0, 1)
    customer, ts = rng.integers(0, 500, 2000), rng.integers(0, 30, 2000) * 86_400
    _, budget = choose_threshold(ThresholdRule("budget", 0.05), label, risk, customer, ts)
    assert abs(budget["alerted_share_per_day"] - 0.05) < 0.005
    _, precise = choose_threshold(ThresholdRule("precision", 0.6), label, risk, customer, ts)
    assert precise["precision"] >= 0.6 and precise["recall"] > 0
