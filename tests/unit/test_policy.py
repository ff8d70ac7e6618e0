from __future__ import annotations

import numpy as np

from consumer.policy import AlertPolicy, decide

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
