"""One network fitted on prepared arrays: Adam with per-epoch decay, early stopping on the
validation loss (best weights restored), progress per epoch on stderr, reproducible by seed."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from state.encoding import FeatureSpec
from training.model import ModelConfig, build_models
from training.ngram import NgramTables

Arrays = tuple[dict[str, Any], ...]
STEPS_PER_FIT = 2_000  # optimizer steps a fit may take when no --epochs cap is given
MIN_EPOCHS, MAX_EPOCHS = 4, 15  # the residual on the n-gram starts near its optimum: few epochs suffice


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def epochs_for(n_windows: int, batch_size: int, cap: int | None) -> int:
    """Epochs enough for about STEPS_PER_FIT optimizer steps (early stopping ends most fits
    sooner), within MIN_EPOCHS..MAX_EPOCHS, never above `cap` (--epochs)."""
    steps_per_epoch = max(1, -(-n_windows // batch_size))
    epochs = int(np.clip(round(STEPS_PER_FIT / steps_per_epoch), MIN_EPOCHS, MAX_EPOCHS))
    return min(epochs, cap) if cap else epochs


@dataclass
class Fitted:
    train_model: Any
    serve_model: Any
    curves: dict[str, list[float]]
    seconds: float

    @property
    def epochs_run(self) -> int:
        return len(self.curves.get("loss", []))

    @property
    def best_epochs(self) -> int:
        """Epochs up to the best validation loss (the weights early stopping kept)."""
        losses = self.curves.get("val_loss", [])
        return int(np.argmin(losses)) + 1 if losses else self.epochs_run

    @property
    def best_val_loss(self) -> float:
        losses = self.curves.get("val_loss", [])
        return float(min(losses)) if losses else float("inf")


def fit(
    spec: FeatureSpec,
    config: ModelConfig,
    train: Arrays,
    val: Arrays | None,
    prior_table: NDArray[np.float32],
    serving_ngram: NgramTables,
    epochs: int,
    seed: int,
    patience: int = 3,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    label: str = "",
) -> Fitted:
    """Train a fresh network, for `epochs` or until the validation loss stops improving (no
    `val`: all `epochs`). `prior_table` is the training graph's n-gram table (the rows of
    `train`/`val`'s `prior_row`); `serving_ngram` goes into the served graph. `on_epoch` may
    raise to stop the fit (a search pruning a trial)."""
    import keras
    import tensorflow as tf

    from training.layers import NgramPrior

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    train_model, serve_model = build_models(spec, config, NgramPrior.sizes_of(serving_ngram), len(prior_table))
    train_model.get_layer("prior_table").set_weights([prior_table])
    serve_model.get_layer("ngram").load(serving_ngram)
    _compile(train_model, config, len(train[0]["tokens"]))
    callbacks: list[Any] = [_progress(label, epochs, float(train[2]["next"].sum()), on_epoch)]
    if val is not None:
        callbacks.append(
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
        )
    started = time.monotonic()
    fitted = train_model.fit(
        train[0],
        train[1],
        sample_weight=train[2],
        validation_data=val,
        epochs=epochs,
        batch_size=config.batch_size,
        shuffle=True,
        verbose=0,
        callbacks=callbacks,
    )
    curves = {k: [float(v) for v in vs] for k, vs in fitted.history.items()}
    return Fitted(train_model, serve_model, curves, time.monotonic() - started)


def _compile(train_model: Any, config: ModelConfig, n_windows: int) -> None:
    """Adam with the learning rate decayed by `config.lr_decay` each epoch; the churn loss weighted."""
    import keras

    steps_per_epoch = max(1, int(np.ceil(n_windows / config.batch_size)))
    schedule = keras.optimizers.schedules.ExponentialDecay(config.learning_rate, steps_per_epoch, config.lr_decay)
    train_model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss={"next": "sparse_categorical_crossentropy", "churn": "binary_crossentropy"},
        loss_weights={"next": 1.0, "churn": config.churn_loss_weight},
        weighted_metrics={"next": ["sparse_categorical_accuracy"]},
    )


def _progress(
    label: str, epochs: int, n_targets: float, on_epoch: Callable[[int, dict[str, float]], None] | None
) -> Any:
    """A callback that logs each epoch on stderr, then hands its logs to `on_epoch`."""
    import keras

    class Progress(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.started = time.monotonic()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            logs = logs or {}
            took = time.monotonic() - self.started
            log(
                f"  {label}epoch {epoch + 1}/{epochs}: loss {logs.get('loss', float('nan')):.4f} "
                f"val_loss {logs.get('val_loss', float('nan')):.4f} next acc "
                f"{logs.get('next_sparse_categorical_accuracy', float('nan')):.4f} / val "
                f"{logs.get('val_next_sparse_categorical_accuracy', float('nan')):.4f}  "
                f"{took:.0f}s ({n_targets / max(took, 1e-9):,.0f} events/s)"
            )
            if on_epoch is not None:
                on_epoch(epoch, {k: float(v) for k, v in logs.items()})

    return Progress()


def next_accuracy_on(fitted: Fitted, arrays: Arrays, prior_table: NDArray[np.float32]) -> tuple[float, float]:
    """(network, n-gram alone) next-action accuracy over the weighted positions of `arrays`."""
    inputs, targets, weights = arrays
    rows = weights["next"] > 0
    if not rows.any():
        return float("nan"), float("nan")
    proba = np.asarray(fitted.train_model.predict(inputs, batch_size=512, verbose=0)["next"])
    target = targets["next"][rows]
    network = float((proba[rows].argmax(axis=-1) == target).mean())
    ngram = float((prior_table[inputs["prior_row"][rows]].argmax(axis=-1) == target).mean())
    return network, ngram


def serve_ngram_alone(fitted: Fitted) -> None:
    """Zero the network's next-action logits: the served ranking becomes the n-gram's."""
    layer = fitted.serve_model.get_layer("next_logits")
    layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])


def serve_recency_alone(fitted: Fitted) -> None:
    """Zero what the churn head reads from the history: its risk then ranks by silence alone."""
    layer = fitted.serve_model.get_layer("churn")
    kernel, bias = layer.get_weights()
    layer.set_weights([np.zeros_like(kernel), bias])
