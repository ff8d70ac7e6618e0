"""Churn alert decisions: hysteresis and cooldown, in event time so a replay decides the same.

A customer not in alert whose risk reaches the alert threshold gets an `alert`, unless their
last transition lies within the cooldown; a customer in alert whose risk falls below the
(lower) recovery threshold gets a `recovery`. Between the two thresholds nothing happens, so
risk hovering near one threshold never flaps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

ALERT_POLICY = "churn-hysteresis"


@dataclass(frozen=True)
class AlertPolicy:
    alert_threshold: float
    recovery_threshold: float
    cooldown_seconds: int

    @property
    def name(self) -> str:
        return (
            f"{ALERT_POLICY}(alert>={self.alert_threshold:.3f},recover<{self.recovery_threshold:.3f},"
            f"cooldown={self.cooldown_seconds}s)"
        )


@dataclass
class Decisions:
    event: NDArray[np.int64]  # index of the triggering event
    kind: list[str]  # "alert" | "recovery"
    customers: NDArray[np.int64]  # customers whose alert state changed
    alerted: NDArray[np.bool_]  # their new state
    alert_ts: NDArray[np.int64]  # their last transition time


def decide(
    policy: AlertPolicy,
    customer: NDArray[np.int64],
    risk: NDArray[np.float32],
    ts: NDArray[np.int64],
    alerted: NDArray[np.bool_],
    alert_ts: NDArray[np.int64],
) -> Decisions:
    """Decide transitions for scored events in order; `alerted`/`alert_ts` are per customer."""
    state_on = alerted.copy()
    state_ts = alert_ts.copy()
    crossing = (risk >= policy.alert_threshold) | (risk < policy.recovery_threshold)
    events, kinds = [], []
    changed: dict[int, None] = {}
    # only customers already in alert, or reaching the threshold in this batch, can transition
    hot = state_on.copy()
    hot[customer[risk >= policy.alert_threshold]] = True
    for i in np.flatnonzero(crossing & hot[customer]):
        c = int(customer[i])
        if not state_on[c] and risk[i] >= policy.alert_threshold:
            if state_ts[c] and ts[i] - state_ts[c] < policy.cooldown_seconds:
                continue
            state_on[c], state_ts[c] = True, ts[i]
            events.append(int(i))
            kinds.append("alert")
            changed[c] = None
        elif state_on[c] and risk[i] < policy.recovery_threshold:
            state_on[c], state_ts[c] = False, ts[i]
            events.append(int(i))
            kinds.append("recovery")
            changed[c] = None
    customers = np.array(list(changed), dtype=np.int64)
    return Decisions(np.array(events, dtype=np.int64), kinds, customers, state_on[customers], state_ts[customers])
