"""Decision policies, in event time so a replay decides the same.

Churn alerts: a customer not in alert whose risk reaches the alert threshold gets an `alert`,
unless their last transition lies within the cooldown; a customer in alert whose risk falls
below the (lower) recovery threshold gets a `recovery`. Between the two thresholds nothing
happens, so risk hovering near one threshold never flaps.

Next actions: every scored event gets one, unless a gate holds it back: a top-1 probability
below the minimum, a frequency cap (one per customer per interval), or a customer in alert
within the quiet period after the alert (marketing acts on the alert, not on both).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

ALERT_POLICY = "churn-hysteresis"
NEXT_ACTION_POLICY = "top-k"
SUPPRESS_REASONS = ("min_probability", "frequency_cap", "after_alert")


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
    row_alerted: NDArray[np.bool_]  # per scored row: the customer's alert state after it
    row_alert_ts: NDArray[np.int64]  # per scored row: the customer's last transition after it


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
    row_alerted = state_on[customer]
    row_alert_ts = state_ts[customer]
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
        else:
            continue
        # the new state holds for this customer's rows from here up to their next transition
        later = np.flatnonzero(customer[i:] == c) + i
        row_alerted[later], row_alert_ts[later] = state_on[c], state_ts[c]
    customers = np.array(list(changed), dtype=np.int64)
    return Decisions(
        np.array(events, dtype=np.int64),
        kinds,
        customers,
        state_on[customers],
        state_ts[customers],
        row_alerted,
        row_alert_ts,
    )


@dataclass(frozen=True)
class NextActionPolicy:
    top_k: int
    min_probability: float = 0.0
    min_interval_seconds: int = 0
    quiet_after_alert_seconds: int = 0

    @property
    def name(self) -> str:
        gates = [f"k={self.top_k}"]
        if self.min_probability > 0:
            gates.append(f"min_p={self.min_probability:g}")
        if self.min_interval_seconds > 0:
            gates.append(f"cap=1/{self.min_interval_seconds}s")
        if self.quiet_after_alert_seconds > 0:
            gates.append(f"quiet_after_alert={self.quiet_after_alert_seconds}s")
        return f"{NEXT_ACTION_POLICY}({','.join(gates)})"


@dataclass
class Gated:
    emit: NDArray[np.bool_]  # per row: the next action goes out
    reason: NDArray[np.int64]  # per row: index into SUPPRESS_REASONS, -1 when emitted
    nba_ts: NDArray[np.int64]  # per customer: last next-action time after the batch


def gate_next_actions(
    policy: NextActionPolicy,
    customer: NDArray[np.int64],
    ts: NDArray[np.int64],
    top_probability: NDArray[np.float32],
    row_alerted: NDArray[np.bool_],
    row_alert_ts: NDArray[np.int64],
    nba_ts: NDArray[np.int64],
) -> Gated:
    """Which scored rows (in stream order) get a next action; `nba_ts` per customer."""
    reason = np.full(len(ts), -1, dtype=np.int64)
    reason[top_probability < policy.min_probability] = SUPPRESS_REASONS.index("min_probability")
    if policy.quiet_after_alert_seconds > 0:
        quiet = row_alerted & (ts - row_alert_ts < policy.quiet_after_alert_seconds) & (reason < 0)
        reason[quiet] = SUPPRESS_REASONS.index("after_alert")
    last = nba_ts.copy()
    open_rows = np.flatnonzero(reason < 0)
    if policy.min_interval_seconds > 0:
        capped = SUPPRESS_REASONS.index("frequency_cap")
        for i in open_rows.tolist():  # per customer in order: each emission starts a new interval
            c = int(customer[i])
            if last[c] and ts[i] - last[c] < policy.min_interval_seconds:
                reason[i] = capped
            else:
                last[c] = ts[i]
    elif len(open_rows):
        np.maximum.at(last, customer[open_rows], ts[open_rows])
    return Gated(reason < 0, reason, last)
