"""`--promote auto` refuses a model below the best baseline it reports (no servers, no training)."""

from __future__ import annotations

from training.promotion import below_baselines


def result(accuracy: float, auc: float) -> dict[str, object]:
    return {
        "next_action": {
            "accuracy": accuracy,
            "baselines": {
                "markov": {"accuracy": 0.40},
                "ngram": {"accuracy": 0.45},
                "most_frequent": {"accuracy": None},
            },
        },
        "churn": {"roc_auc": auc, "baselines": {"recency": {"roc_auc": 0.70}, "bgnbd": {"roc_auc": float("nan")}}},
    }


def test_a_model_at_or_above_every_baseline_passes() -> None:
    assert below_baselines(result(0.45, 0.70)) == ""


def test_each_head_below_its_best_baseline_is_named() -> None:
    assert below_baselines(result(0.44, 0.71)) == "next-action accuracy 0.4400 < ngram 0.4500"
    assert below_baselines(result(0.50, 0.69)) == "churn roc_auc 0.6900 < recency 0.7000"


def test_a_head_without_labels_is_not_judged() -> None:
    assert below_baselines(result(0.50, float("nan"))) == ""
