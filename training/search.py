"""The recipe, chosen from the data and from validation: Optuna's TPE sampler over units,
layers, dropout, learning rate, batch size, embedding size and window, with a median pruner
that stops a trial whose validation loss is behind at the same epoch.

The budget is counted in trials and epochs scaled to the data (same `--seed`, same model);
wall-clock time (`--budget`) is a cap only, for slower machines. The first trial is the
default recipe, so one trial (`--trials 1`) trains what the defaults say. Flags the user
gave (--units, --layers, --batch-size) are fixed, not searched.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from training.fitting import Fitted, log
from training.model import ModelConfig

WINDOWS = (10, 20, 30, 50)
TRIAL_TARGETS = 1_000_000  # next-action targets x epochs that all trials together may train
MAX_TRIALS = 6
VAL_TARGETS_PER_TRIAL = 1_000


@dataclass
class Trial:
    number: int
    params: dict[str, Any]
    state: str  # complete | pruned
    val_loss: float
    epochs: int
    seconds: float


@dataclass
class SearchResult:
    best: Fitted
    config: ModelConfig
    window: int
    trials: list[Trial] = field(default_factory=list)

    def summary(self) -> list[dict[str, Any]]:
        return [
            {
                "number": t.number,
                "params": t.params,
                "state": t.state,
                "val_loss": round(t.val_loss, 5),
                "epochs": t.epochs,
                "seconds": round(t.seconds, 1),
            }
            for t in self.trials
        ]


def trials_for(targets: int, epochs: int, val_targets: int) -> int:
    """How many trials the data affords: TRIAL_TARGETS of training over all trials, and one more
    per VAL_TARGETS_PER_TRIAL validation targets (on a small validation set, recipes differ by
    noise: searching there fits the noise), 1..MAX_TRIALS."""
    by_cost = TRIAL_TARGETS // max(targets * epochs, 1)
    return max(1, min(MAX_TRIALS, by_cost, 1 + val_targets // VAL_TARGETS_PER_TRIAL))


FitTrial = Callable[[ModelConfig, int, int, Callable[[int, dict[str, float]], None]], Fitted]


def search(
    fit_trial: FitTrial,
    default: ModelConfig,
    max_window: int,
    trials: int,
    seed: int,
    budget_s: float,
    fixed: dict[str, Any],
) -> SearchResult:
    """Run up to `trials` trials within `budget_s` seconds; `fit_trial(config, window, seed,
    on_epoch)` trains one network and returns it. The best validation loss wins."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    windows = sorted({w for w in WINDOWS if w < max_window} | {max_window})
    study = optuna.create_study(
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(3, trials)),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=2),
    )
    first = {
        "units": default.units,
        "layers": default.layers,
        "dropout": default.dropout,
        "learning_rate": min(max(default.learning_rate, 3e-4), 5e-3),
        "batch_size": default.batch_size,
        "embedding_dim": default.embedding_dim,
        "window": max_window,
    }
    study.enqueue_trial({k: v for k, v in first.items() if k not in fixed})
    objective = _Objective(fit_trial, default, windows, trials, seed, fixed)
    study.optimize(objective, n_trials=trials, timeout=budget_s, catch=())
    return objective.result()


@dataclass
class _Objective:
    """Optuna's objective: fit the recipe a trial suggests, keeping every trial's record and
    the best fit."""

    fit_trial: FitTrial
    default: ModelConfig
    windows: list[int]
    trials: int
    seed: int
    fixed: dict[str, Any]
    done: list[Trial] = field(default_factory=list)
    kept: dict[str, Any] = field(default_factory=dict)  # the best trial so far: loss, fitted, config, window

    def __call__(self, trial: Any) -> float:
        import optuna

        params = _suggested(trial, self.default, self.windows, self.fixed)
        window = int(params.pop("window"))
        config = replace(self.default, **params)
        log(f"trial {trial.number + 1}/{self.trials}: window {window}, {_describe(config)}")

        def report(epoch: int, logs: dict[str, float]) -> None:
            trial.report(logs.get("val_loss", float("inf")), epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        started = time.monotonic()
        tried = params | {"window": window}
        try:
            fitted = self.fit_trial(config, window, self.seed + trial.number, report)
        except optuna.TrialPruned:
            self.done.append(Trial(trial.number, tried, "pruned", float("inf"), 0, time.monotonic() - started))
            log(f"trial {trial.number + 1}: pruned (validation loss behind the median)")
            raise
        loss = fitted.best_val_loss
        self.done.append(Trial(trial.number, tried, "complete", loss, fitted.epochs_run, time.monotonic() - started))
        if "loss" not in self.kept or loss < self.kept["loss"]:
            self.kept.update(loss=loss, fitted=fitted, config=config, window=window)
        return loss

    def result(self) -> SearchResult:
        kept = self.kept
        if "fitted" not in kept:
            raise RuntimeError("no trial completed")
        log(f"best trial: window {kept['window']}, {_describe(kept['config'])}, validation loss {kept['loss']:.5f}")
        return SearchResult(kept["fitted"], kept["config"], kept["window"], self.done)


def _suggested(trial: Any, default: ModelConfig, windows: list[int], fixed: dict[str, Any]) -> dict[str, Any]:
    """The trial's recipe: fixed values as given, the others suggested in this order (the
    sampler's draws follow it) from the choices plus the default's own value."""

    def choices(name: str, values: list[Any]) -> list[Any]:
        return sorted({*values, getattr(default, name)})

    suggest = {
        "units": lambda: trial.suggest_categorical("units", choices("units", [32, 64, 128])),
        "layers": lambda: trial.suggest_categorical("layers", choices("layers", [1, 2])),
        "dropout": lambda: trial.suggest_categorical("dropout", choices("dropout", [0.0, 0.1, 0.2, 0.3])),
        "learning_rate": lambda: trial.suggest_float("learning_rate", 3e-4, 5e-3, log=True),
        "batch_size": lambda: trial.suggest_categorical("batch_size", choices("batch_size", [64, 128, 256])),
        "embedding_dim": lambda: trial.suggest_categorical("embedding_dim", choices("embedding_dim", [16, 32])),
        "window": lambda: trial.suggest_categorical("window", windows),
    }
    return {name: fixed[name] if name in fixed else draw() for name, draw in suggest.items()}


def _describe(config: ModelConfig) -> str:
    return (
        f"{config.layers}x{config.units} units, embedding {config.embedding_dim}, dropout {config.dropout}, "
        f"learning rate {config.learning_rate:.2g}, batch {config.batch_size}"
    )
