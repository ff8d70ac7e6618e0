"""Which predictor gets served: the network, or the simple model it builds on when the
network does not beat it on validation (never worse than the baselines it reports).

Next action: the network against its own n-gram prior, at the validation targets. Churn:
the network's risk against recency (days since the last event), over the two ways serving
scores: every customer at validation as-of dates, and customers at their events (where the
silence is zero for everyone, so recency ranks no one: ROC AUC 0.5). A losing network part
is switched off in the served model itself (training/fitting.py), so serving needs no
second code path.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from state.encoding import FeatureSpec
from training.evaluate import ScoringSet, predict
from training.fitting import Arrays, Fitted, log, next_accuracy_on, serve_ngram_alone, serve_recency_alone
from training.history import History
from training.metrics import roc_auc

CHANCE = 0.5  # recency's ROC AUC at events: every customer's silence is zero there


def choose_served(
    fitted: Fitted,
    val: Arrays,
    prior_table: NDArray[np.float32],
    spec: FeatureSpec,
    history: History,
    val_as_of: ScoringSet,
    val_events: ScoringSet,
) -> dict[str, Any]:
    """Decide, apply, and describe the choice (for the manifest and the report)."""
    network, ngram = next_accuracy_on(fitted, val, prior_table)
    next_served = "network" if not network < ngram else "ngram"
    if next_served == "ngram":
        serve_ngram_alone(fitted)
        log(f"next action: serving the n-gram (validation accuracy {ngram:.4f}; the network had {network:.4f})")
    else:
        log(f"next action: serving the network (validation accuracy {network:.4f}; n-gram {ngram:.4f})")
    known = val_as_of.churn_known
    label = val_as_of.churn_label[known]
    _, risk = predict(fitted.serve_model, spec, history, val_as_of.subset(known))
    silence = (val_as_of.score_ts - history.ts[val_as_of.ends])[known].astype(np.float64)
    model_auc, recency_auc = roc_auc(label, risk), roc_auc(label, silence)
    at_events = val_events.subset(val_events.churn_known)
    _, event_risk = predict(fitted.serve_model, spec, history, at_events)
    event_auc = roc_auc(at_events.churn_label, event_risk)
    network_score, recency_score = np.nanmean([model_auc, event_auc]), np.nanmean([recency_auc, CHANCE])
    churn_served = "recency" if network_score < recency_score else "network"
    if churn_served == "recency":
        serve_recency_alone(fitted)
    log(
        f"churn: serving the {churn_served} ranking (validation ROC AUC as of dates: network {model_auc:.4f}, "
        f"recency {recency_auc:.4f}, {int(known.sum()):,} points; at events: network {event_auc:.4f})"
    )
    return {
        "next_action": {
            "served": next_served,
            "validation_accuracy": {"network": round(network, 4), "ngram": round(ngram, 4)},
            "margin": round(network - ngram, 4),
        },
        "churn": {
            "served": churn_served,
            "validation_as_of_roc_auc": {"network": round(model_auc, 4), "recency": round(recency_auc, 4)},
            "validation_at_events_roc_auc": {"network": round(event_auc, 4), "recency": CHANCE},
            "margin": round(float(network_score - recency_score), 4),
            "validation_points": int(known.sum()),
        },
    }
