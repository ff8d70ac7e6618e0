"""What a scored batch sends, decided without Kafka or Redis (consumer/serve/outputs.py)."""

from __future__ import annotations

import numpy as np
import orjson

from consumer.serve.outputs import Policies, Scored, decide_outputs
from consumer.serve.policy import AlertPolicy, NextActionPolicy
from consumer.serve.silence import Silences
from state.encoding import activity_codes
from state.store import (
    APPLIED,
    CLOCK_DTYPE,
    DUE_DTYPE,
    FLAG_ALERTED,
    HEADER_DTYPE,
    RECORD_DTYPE,
    AppliedBatch,
    EventBatch,
)

T0 = 1_700_000_000
VOCABULARY = ("A", "B", "C")


def scored_batch(risk: list[float], silence_risk: float, alerted_b: bool = False) -> Scored:
    """Three events (a, b, a) and one silence of b, due just before the second event."""
    events = EventBatch(["a", "b", "a"], np.zeros(3, np.int64), np.arange(3, dtype=np.int64),
                        np.array([T0, T0 + 10, T0 + 20], np.int64), np.zeros(3, np.uint32),
                        np.zeros(3, np.uint32), np.arange(3, dtype=np.uint32))
    headers = np.zeros(2, HEADER_DTYPE)
    if alerted_b:
        headers["flags"][1], headers["alert_ts"][1] = FLAG_ALERTED, T0 - 100
    applied = AppliedBatch(
        customers=["a", "b"], customer_index=np.array([0, 1, 0]), headers=headers,
        records=np.zeros(0, RECORD_DTYPE), record_start=np.zeros(2, np.int64), gender=np.full(2, -1),
        age_group=np.full(2, -1), status=np.full(3, APPLIED), position=np.array([1, 1, 2]),
        due=np.zeros(0, DUE_DTYPE), clocks=np.zeros(0, CLOCK_DTYPE), moved=np.zeros(3, bool),
        deferred=np.zeros(0, np.int64), behind_state=np.zeros(3, bool),
    )
    quiet = Silences(customer=np.array([1]), as_of=np.array([T0 + 5]), mark=np.array([86_400]),
                     before_event=np.array([1]), raw=None)  # type: ignore[arg-type]
    proba = np.tile(np.array([[0.6, 0.3, 0.1]], np.float32), (4, 1))
    return Scored(applied, events, ["e0", "e1", "e2"], np.arange(3), quiet, proba,
                  np.array([*risk, silence_risk], np.float32), None)


POLICIES = Policies(AlertPolicy(0.5, 0.3, 0), NextActionPolicy(2), VOCABULARY, activity_codes(list(VOCABULARY)),
                    "v1", 2)


def test_every_event_gets_a_next_action_and_crossings_get_alerts_in_stream_order() -> None:
    out = decide_outputs(scored_batch([0.1, 0.1, 0.9], silence_risk=0.8), POLICIES)
    assert out.next_action_keys == ["a", "b", "a"]
    sent = [orjson.loads(v) for v in out.next_action_values]
    assert [m["event_id"] for m in sent] == ["e0", "e1", "e2"]
    assert [a["activity"] for a in sent[0]["actions"]] == ["A", "B"]
    alerts = [orjson.loads(v) for v in out.alert_values]
    # b's silence (before e1) alerts, then e1 with a low risk recovers b; e2 alerts a
    assert [(m["customer_id"], m["kind"], m["trigger"]) for m in alerts] == [
        ("b", "alert", "silence"), ("b", "recovery", "event"), ("a", "alert", "event")]
    assert out.alerts_by == {("alert", "silence"): 1, ("recovery", "event"): 1, ("alert", "event"): 1}


def test_the_state_write_gets_each_customers_header_after_its_last_row() -> None:
    out = decide_outputs(scored_batch([0.1, 0.1, 0.9], silence_risk=0.2, alerted_b=True), POLICIES)
    assert out.updates is not None
    rows = {int(r["customer"]): r for r in out.updates}
    assert set(rows) == {0, 1}
    assert rows[0]["flags"] & FLAG_ALERTED and rows[0]["alert_ts"] == T0 + 20, "a alerted at e2"
    assert not rows[1]["flags"] & FLAG_ALERTED and rows[1]["alert_ts"] == T0 + 5, "b recovered at its silence"
    assert rows[0]["pred_ts"] == T0 + 20 and abs(rows[0]["pred_risk"] - 0.9) < 1e-6
    assert rows[1]["pred_ts"] == T0 + 10, "b's last row is its event, after the silence"
    assert rows[0]["pred_code"] == activity_codes(["A"])[0]


def test_a_gate_holds_next_actions_back_and_counts_them() -> None:
    gated = Policies(POLICIES.alerts, NextActionPolicy(2, min_probability=0.9), VOCABULARY, POLICIES.class_codes,
                     "v1", 2)
    out = decide_outputs(scored_batch([0.1, 0.1, 0.1], silence_risk=0.1), gated)
    assert out.next_action_values == [] and sum(out.suppressed.values()) == 3
    assert out.updates is not None and len(out.updates) == 2, "held back, the customers are still scored"
