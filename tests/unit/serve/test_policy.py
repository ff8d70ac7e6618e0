from __future__ import annotations

import numpy as np

from consumer.serve.policy import SUPPRESS_REASONS, AlertPolicy, NextActionPolicy, decide, gate_next_actions

POLICY = AlertPolicy(alert_threshold=0.7, recovery_threshold=0.5, cooldown_seconds=100)


def run(risks: list[float], ts: list[int] | None = None, alerted: bool = False, alert_ts: int = 0) -> list[str]:
    n = len(risks)
    out = decide(
        POLICY,
        np.zeros(n, dtype=np.int64),
        np.array(risks, dtype=np.float32),
        np.array(ts or [1000 * (i + 1) for i in range(n)], dtype=np.int64),
        np.array([alerted]),
        np.array([alert_ts], dtype=np.int64),
    )
    return out.kind


def test_alert_only_on_the_upward_crossing() -> None:
    assert run([0.2, 0.8, 0.9, 0.95]) == ["alert"]


def test_hysteresis_band_never_flaps() -> None:
    assert run([0.8, 0.6, 0.72, 0.55, 0.75]) == ["alert"]


def test_recovery_below_the_lower_threshold_then_realert() -> None:
    assert run([0.8, 0.4, 0.8]) == ["alert", "recovery", "alert"]


def test_cooldown_holds_back_a_quick_realert() -> None:
    assert run([0.8, 0.4, 0.8], ts=[1000, 1010, 1050]) == ["alert", "recovery"]


def test_state_carries_across_batches() -> None:
    assert run([0.9], alerted=True, alert_ts=10) == []
    assert run([0.3], alerted=True, alert_ts=10) == ["recovery"]


def test_customers_are_independent() -> None:
    out = decide(
        POLICY,
        np.array([0, 1, 0, 1]),
        np.array([0.8, 0.1, 0.9, 0.75], dtype=np.float32),
        np.array([1, 2, 3, 4]),
        np.zeros(2, dtype=bool),
        np.zeros(2, dtype=np.int64),
    )
    assert out.event.tolist() == [0, 3] and out.kind == ["alert", "alert"]
    assert sorted(out.customers.tolist()) == [0, 1] and out.alerted.all()


def gate(policy: NextActionPolicy, top_p: list[float], ts: list[int], alerted: list[bool] | None = None,
         alert_ts: list[int] | None = None, customer: list[int] | None = None) -> list[str]:
    n = len(ts)
    out = gate_next_actions(
        policy,
        np.array(customer or [0] * n),
        np.array(ts, dtype=np.int64),
        np.array(top_p, dtype=np.float32),
        np.array(alerted or [False] * n),
        np.array(alert_ts or [0] * n, dtype=np.int64),
        np.zeros(2, dtype=np.int64),
    )
    return ["sent" if r < 0 else SUPPRESS_REASONS[r] for r in out.reason]


def test_next_actions_below_the_minimum_probability_are_held_back() -> None:
    policy = NextActionPolicy(3, min_probability=0.4)
    assert gate(policy, [0.5, 0.3, 0.4], [1, 2, 3]) == ["sent", "min_probability", "sent"]
    assert "min_p=0.4" in policy.name


def test_frequency_cap_allows_one_per_interval_per_customer() -> None:
    policy = NextActionPolicy(3, min_interval_seconds=100)
    sent = gate(policy, [0.9] * 5, [1000, 1050, 1099, 1100, 1120], customer=[0, 0, 0, 0, 1])
    assert sent == ["sent", "frequency_cap", "frequency_cap", "sent", "sent"]
    assert policy.name == "top-k(k=3,cap=1/100s)"


def test_no_next_actions_in_the_quiet_period_after_an_alert() -> None:
    policy = NextActionPolicy(3, quiet_after_alert_seconds=1000)
    sent = gate(policy, [0.9] * 3, [100, 900, 1200], alerted=[True, True, True], alert_ts=[100] * 3)
    assert sent == ["after_alert", "after_alert", "sent"]


def test_decisions_report_each_rows_alert_state() -> None:
    out = decide(POLICY, np.zeros(3, dtype=np.int64), np.array([0.8, 0.6, 0.4], dtype=np.float32),
                 np.array([10, 20, 30]), np.array([False]), np.array([0], dtype=np.int64))
    assert out.row_alerted.tolist() == [True, True, False] and out.row_alert_ts.tolist() == [10, 10, 30]
