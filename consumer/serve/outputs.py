"""What a scored batch sends, decided without I/O: next-actions through their gates, churn
alerts from the alert policy, and the header fields (alert state, next-action cap, latest
prediction) that the batch's state write stores with the windows. The loop produces them.

Events and due silences are decided in stream order: a silence comes just before the event
at which the stream reached its mark, so that a customer's alert state moves as it would
have in real time."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from consumer.serve.emit import churn_alert_value, next_action_values
from consumer.serve.policy import (
    SUPPRESS_REASONS,
    AlertPolicy,
    Decisions,
    Gated,
    NextActionPolicy,
    decide,
    gate_next_actions,
)
from consumer.serve.silence import Silences
from state.store import FLAG_ALERTED, TOO_LATE, UPDATE_ARG_DTYPE, AppliedBatch, EventBatch


@dataclass
class Scored:
    """A batch after inference: its events' rows (`emit`, indexes into `events`) and the due
    silences, with one probability row and one risk each, events first."""

    applied: AppliedBatch
    events: EventBatch
    event_ids: list[str]
    emit: NDArray[np.int64]
    quiet: Silences
    proba: NDArray[np.float32]
    risk: NDArray[np.float32]
    forecast: NDArray[np.int64] | None  # per emitted event: the next steps, when asked for


@dataclass(frozen=True)
class Policies:
    """How the serving model's scores become messages."""

    alerts: AlertPolicy
    next_actions: NextActionPolicy
    vocabulary: tuple[str, ...]
    class_codes: NDArray[np.uint32]  # activity code of each model class, as the state stores it
    model_version: str
    top_k: int


@dataclass
class Outputs:
    next_action_keys: list[str] = field(default_factory=list)
    next_action_values: list[bytes] = field(default_factory=list)
    alert_keys: list[str] = field(default_factory=list)
    alert_values: list[bytes] = field(default_factory=list)
    alerts_by: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, trigger) -> count
    suppressed: dict[str, int] = field(default_factory=dict)  # next actions held back, by reason
    updates: NDArray[np.void] | None = None  # UPDATE_ARG_DTYPE rows for the state write


def decide_outputs(scored: Scored, policies: Policies) -> Outputs:
    applied, events, emit, quiet = scored.applied, scored.events, scored.emit, scored.quiet
    n_events = len(emit)
    customer = np.concatenate([applied.customer_index[emit], quiet.customer])
    ts = np.concatenate([events.ts[emit], quiet.as_of])
    order = np.argsort(np.concatenate([2 * emit + 1, 2 * quiet.before_event]), kind="stable")
    headers = applied.headers
    decisions = decide(
        policies.alerts,
        customer[order],
        scored.risk[order],
        ts[order],
        (headers["flags"] & FLAG_ALERTED).astype(bool),
        headers["alert_ts"].astype(np.int64),
    )
    is_event = order < n_events
    gated = gate_next_actions(
        policies.next_actions,
        customer[order][is_event],
        ts[order][is_event],
        scored.proba[order[is_event]].max(axis=1, initial=0.0),
        decisions.row_alerted[is_event],
        decisions.row_alert_ts[is_event],
        headers["nba_ts"].astype(np.int64),
    )
    send = np.zeros(n_events, dtype=bool)
    send[order[is_event]] = gated.emit
    out = Outputs()
    held = np.bincount(gated.reason + 1, minlength=len(SUPPRESS_REASONS) + 1)[1:]
    out.suppressed = {reason: int(n) for reason, n in zip(SUPPRESS_REASONS, held, strict=True) if n}
    _next_actions(scored, policies, send, out)
    _alerts(scored, policies, customer, ts, order, decisions, out)
    if len(customer):
        ordered = (customer[order], scored.proba[order], scored.risk[order], ts[order])
        out.updates = header_updates(applied, *ordered, decisions, gated, policies.class_codes)
    return out


def _next_actions(scored: Scored, policies: Policies, send: NDArray[np.bool_], out: Outputs) -> None:
    events, n_events = scored.events, len(scored.emit)
    rows = scored.emit[send]
    out.next_action_keys = [events.customer_ids[i] for i in rows]
    out.next_action_values = next_action_values(
        [scored.event_ids[i] for i in rows],
        out.next_action_keys,
        events.ts[rows],
        scored.proba[:n_events][send],
        scored.risk[:n_events][send],
        policies.vocabulary,
        policies.model_version,
        policies.top_k,
        scored.forecast[send] if scored.forecast is not None else None,
        scored.applied.status[rows] == TOO_LATE,
        policies.next_actions.name,
    )


def _alerts(
    scored: Scored,
    policies: Policies,
    customer: NDArray[np.int64],
    ts: NDArray[np.int64],
    order: NDArray[np.int64],
    decisions: Decisions,
    out: Outputs,
) -> None:
    threshold = {"alert": policies.alerts.alert_threshold, "recovery": policies.alerts.recovery_threshold}
    n_events, customers = len(scored.emit), scored.applied.customers
    for position, kind in zip(decisions.event, decisions.kind, strict=True):
        row = int(order[position])
        c = int(customer[row])
        trigger = "event" if row < n_events else "silence"
        out.alert_values.append(churn_alert_value(
            kind,
            trigger,
            scored.event_ids[int(scored.emit[row])] if row < n_events else None,
            customers[c],
            policies.model_version,
            float(scored.risk[row]),
            threshold[kind],
            int(ts[row]),
            policies.alerts.name,
        ))
        out.alert_keys.append(customers[c])
        out.alerts_by[kind, trigger] += 1


def header_updates(
    applied: AppliedBatch,
    customer: NDArray[np.int64],
    proba: NDArray[Any],
    risk: NDArray[Any],
    ts: NDArray[np.int64],
    decisions: Decisions,
    gated: Gated,
    class_codes: NDArray[np.uint32],
) -> NDArray[np.void]:
    """Header fields of every scored customer after the batch; rows in stream order. Stored
    with the window after the outputs are acknowledged: a crash in between sends them again
    (the same prediction_id), never loses them."""
    headers = applied.headers
    alerted = (headers["flags"] & FLAG_ALERTED).astype(bool)
    alert_ts = headers["alert_ts"].astype(np.int64)
    alerted[decisions.customers] = decisions.alerted
    alert_ts[decisions.customers] = decisions.alert_ts
    reversed_customers = customer[::-1]
    scored, last_from_end = np.unique(reversed_customers, return_index=True)
    last = len(customer) - 1 - last_from_end
    updates = np.zeros(len(scored), UPDATE_ARG_DTYPE)
    updates["customer"] = scored
    updates["flags"] = (headers["flags"][scored] & ~np.uint32(FLAG_ALERTED)) | alerted[scored]
    updates["alert_ts"] = alert_ts[scored]
    updates["nba_ts"] = gated.nba_ts[scored]
    updates["pred_code"] = class_codes[proba[last].argmax(axis=1)]
    updates["pred_risk"] = risk[last]
    updates["pred_ts"] = ts[last]
    return updates
