"""Whether a new version replaces the current model: not below a baseline, and not worse
than the current model on the same held-out data (unless --promote says otherwise)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from state.encoding import FeatureSpec
from state.errors import ConfigError
from training.evaluate import ScoringSet, evaluate_points
from training.history import History
from training.registry import Registry, load_model

if TYPE_CHECKING:  # train.py imports this module
    from training.train import TrainOptions


def decide_promotion(
    options: TrainOptions,
    registry: Registry,
    result: dict[str, Any],
    history: History,
    test_points_for: Callable[[FeatureSpec], ScoringSet],
    folds: list[dict[str, Any]],
) -> tuple[bool, str]:
    """(promote?, why): by --promote, else not below a baseline and not worse than the current
    model on the same test data."""
    if options.promote == "never":
        return False, "--promote never"
    if options.promote == "always":
        return True, "--promote always"
    below = below_baselines(result)
    refused = f"worse than a baseline on the test data: {below}" if below else ""
    current = registry.current()
    if current is None:
        return (False, refused) if below else (True, "no current model; not worse than any baseline")
    try:
        model, manifest = load_model(registry.path(current))
    except ConfigError as exc:  # a model this version cannot serve is no bar to replacing it
        reason = f"the current model {current} cannot be evaluated ({exc})"
        return (False, f"{refused}; {reason}") if below else (True, f"{reason}; not worse than any baseline")
    spec = FeatureSpec.from_dict(manifest["features"])
    points = test_points_for(spec)
    threshold = manifest["churn"]["alert_threshold"]
    theirs = evaluate_points(model, spec, history, points, threshold, folds, options.horizon_days)
    ours_acc, theirs_acc = result["next_action"]["accuracy"], theirs["next_action"]["accuracy"]
    ours_auc, theirs_auc = result["churn"]["roc_auc"], theirs["churn"]["roc_auc"]
    verdict = (
        f"next-action accuracy {ours_acc:.4f} vs current {current} {theirs_acc:.4f}, "
        f"churn ROC AUC {ours_auc:.4f} vs {theirs_auc:.4f} on the same test data"
    )
    if below:
        return False, f"{refused}; {verdict}"
    if ours_acc >= theirs_acc and not ours_auc < theirs_auc:  # a NaN AUC (no churn labels) is no worse
        return True, f"not worse: {verdict}"
    return False, f"worse: {verdict}"


def below_baselines(result: dict[str, Any]) -> str:
    """Where the model is below the best baseline it reports ('' when nowhere)."""
    found = []
    for head, metric in (("next_action", "accuracy"), ("churn", "roc_auc")):
        ours = result[head][metric]
        scored = {k: v[metric] for k, v in result[head]["baselines"].items() if _finite(v[metric])}
        if not scored or not _finite(ours):
            continue
        best = max(scored, key=lambda k: scored[k])
        if ours < scored[best]:
            found.append(f"{head.replace('_', '-')} {metric} {ours:.4f} < {best} {scored[best]:.4f}")
    return "; ".join(found)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and bool(np.isfinite(value))
