"""The encode and infer stages: the windows of the batch's new events and of the silences
its clock moves made due, encoded with the serving model's manifest and scored in ONE
inference call."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from numpy.typing import NDArray

from consumer.serve import silence
from consumer.serve.metrics import Metrics
from consumer.serve.outputs import Scored
from consumer.serve.scoring import ModelRunner
from state.encoding import encode
from state.store import APPLIED, LATE_INSERTED, TOO_LATE, AppliedBatch, EventBatch

log = logging.getLogger(__name__)


def finite_rows(proba: NDArray[np.floating[Any]], risk: NDArray[np.floating[Any]]) -> NDArray[np.bool_]:
    """Per row, whether every probability and the risk are finite (an empty batch included)."""
    risk_finite = np.isfinite(risk).reshape(len(risk), -1) if len(risk) else np.zeros((0, 1), bool)
    return np.asarray(np.isfinite(proba).all(axis=1) & risk_finite.all(axis=1))


def score_batch(
    runner: ModelRunner,
    applied: AppliedBatch,
    events: EventBatch,
    event_ids: list[str],
    silence_marks: tuple[int, ...],
    forecast_steps: int,
    metrics: Metrics,
) -> Scored:
    """Encode the windows of the events to emit and of the due silences; one inference call."""
    timers = metrics.stage_timers
    t = time.perf_counter()
    raw, has_window = applied.windows(events, runner.spec.window, runner.spec.level)
    # a replay was stored, so its outputs were acknowledged: it is not emitted again
    emit = np.flatnonzero(np.isin(applied.status, (APPLIED, LATE_INSERTED, TOO_LATE)) & has_window)
    inputs = {k: v[emit] for k, v in encode(raw, runner.spec).items()}
    quiet = silence.fired(applied, events, silence_marks, raw, runner.spec.level)
    if len(quiet):
        metrics.silence_scored.inc(len(quiet))
        quiet_inputs = encode(quiet.raw, runner.spec)
        inputs = {k: np.concatenate([v, quiet_inputs[k]]) for k, v in inputs.items()}
    timers["encode"].observe(time.perf_counter() - t)

    t = time.perf_counter()
    proba, risk = runner.infer(inputs)  # events and silences in one call
    finite = finite_rows(proba, risk)
    if not finite.all():
        emit, quiet, inputs, proba, risk = without_non_finite(runner.version, metrics, finite, emit, quiet, inputs,
                                                              proba, risk)
    n_events = len(emit)
    event_inputs = {k: v[:n_events] for k, v in inputs.items()} if len(quiet) else inputs
    forecast = runner.forecast(event_inputs, proba[:n_events], forecast_steps) if forecast_steps else None
    timers["infer"].observe(time.perf_counter() - t)
    return Scored(applied, events, event_ids, emit, quiet, proba, risk, forecast)


def without_non_finite(
    model_version: str,
    metrics: Metrics,
    finite: NDArray[np.bool_],
    emit: NDArray[np.int64],
    quiet: silence.Silences,
    inputs: dict[str, NDArray[Any]],
    proba: NDArray[np.float32],
    risk: NDArray[np.float32],
) -> tuple[NDArray[np.int64], silence.Silences, dict[str, NDArray[Any]], NDArray[np.float32], NDArray[np.float32]]:
    """A model that passed its smoke test may still answer NaN on some input: those rows get
    no output and no alert decision (JSON would carry `null`), and are counted."""
    n_events = len(emit)
    metrics.non_finite.inc(int((~finite).sum()))
    log.error("model %s answered NaN or infinity for %d of %d rows: no output for them",
              model_version, int((~finite).sum()), len(finite))
    quiet = silence.take_rows(quiet, np.flatnonzero(finite[n_events:]))
    emit = emit[finite[:n_events]]
    return emit, quiet, {k: v[finite] for k, v in inputs.items()}, proba[finite], risk[finite]
