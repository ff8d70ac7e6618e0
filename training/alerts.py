"""The churn alert threshold, chosen on validation the way a marketing team plans a campaign.

- `budget` (the default): at most a share of the customers scored on a day are alerted that
  day. A retention team has so many calls or offers a day; a threshold by F1 alone alerted
  most of a quiet customer base at once.
- `precision`: the lowest threshold whose alerts are right at least this often.
- `f1`: the threshold of best F1 (the earlier behaviour).

Each reports what to expect at the chosen threshold on validation: precision, recall and
the share of scored customers alerted per day.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from state.encoding import DAY
from training.metrics import best_f1_threshold, precision_recall

DEFAULT_BUDGET = 0.02
POLICIES = ("budget", "precision", "f1")


@dataclass(frozen=True)
class ThresholdRule:
    kind: str = "budget"
    value: float = DEFAULT_BUDGET  # budget: share per day; precision: the target; f1: unused

    def describe(self) -> str:
        if self.kind == "budget":
            return f"at most {self.value:.1%} of the customers scored on a day alerted that day"
        if self.kind == "precision":
            return f"alerts right at least {self.value:.0%} of the time"
        return "best F1"


def _pair_max(risk: NDArray[Any], customer: NDArray[Any], score_ts: NDArray[Any]) -> NDArray[np.float64]:
    """Each scored (customer, day)'s highest risk."""
    day = np.asarray(score_ts, dtype=np.int64) // int(DAY)
    pairs, inverse = np.unique(np.column_stack([customer, day]), axis=0, return_inverse=True)
    best = np.full(len(pairs), -np.inf)
    np.maximum.at(best, inverse.reshape(-1), np.asarray(risk, dtype=np.float64))
    return best


def choose_threshold(
    policy: ThresholdRule,
    label: NDArray[Any],
    risk: NDArray[Any],
    customer: NDArray[Any],
    score_ts: NDArray[Any],
) -> tuple[float, dict[str, Any]]:
    """(threshold, what to expect there) on labelled validation points."""
    pair_max = _pair_max(risk, customer, score_ts)  # each scored (customer, day)'s highest risk
    if policy.kind == "budget":
        threshold = float(np.quantile(pair_max, 1 - policy.value)) if len(pair_max) else 1.0
        # a tie at the quantile would alert more than the budget: step just above it
        if len(pair_max) and np.mean(pair_max >= threshold) > policy.value:
            threshold = float(np.nextafter(np.float32(threshold), np.float32(2)))
    elif policy.kind == "precision":
        precision, _recall, thresholds = precision_recall(label, risk)
        meets = np.flatnonzero(precision >= policy.value)  # highest threshold first: the last is the lowest
        threshold = float(thresholds[meets[-1]]) if len(meets) else float(thresholds[0]) if len(thresholds) else 1.0
    else:
        threshold, _ = best_f1_threshold(label, risk)
    alerted = risk >= threshold
    positives = max(int(np.sum(label)), 1)
    expected = {
        "policy": policy.kind,
        "value": policy.value,
        "precision": round(float(np.mean(label[alerted])), 4) if alerted.any() else None,
        "recall": round(float(np.sum(label[alerted]) / positives), 4),
        "alerted_share_per_day": round(float(np.mean(pair_max >= threshold)), 4) if len(pair_max) else float("nan"),
    }
    return threshold, expected
