"""The per-version report: report.md with the metrics and baselines, and PNG plots beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from training import metrics


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only backend (no display on servers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training(history: dict[str, list[float]], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("loss", "val_loss"):
        if key in history:
            axes[0].plot(range(1, len(history[key]) + 1), history[key], marker="o", label=key)
    axes[0].set(title="loss", xlabel="epoch")
    axes[0].legend()
    for key in ("next_sparse_categorical_accuracy", "val_next_sparse_categorical_accuracy"):
        if key in history:
            axes[1].plot(
                range(1, len(history[key]) + 1), history[key], marker="o", label=key.replace("_sparse_categorical", "")
            )
    axes[1].set(title="next-action accuracy (training targets)", xlabel="epoch")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(matrix: list[list[int]], names: list[str], path: Path) -> None:
    plt = pyplot()
    counts = np.array(matrix, dtype=np.float64)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.45 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=90 if len(names) > 10 else 0)
    ax.set_yticks(range(len(names)), names)
    ax.set(xlabel="predicted", ylabel="actual", title="next action: recall-normalised confusion")
    if len(names) <= 12:
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(
                    j,
                    i,
                    f"{rates[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if rates[i, j] > 0.5 else "black",
                )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_churn(label: np.ndarray, risk: np.ndarray, threshold: float, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    fpr, tpr = metrics.roc_curve(label, risk)
    axes[0].plot(fpr, tpr)
    axes[0].plot([0, 1], [0, 1], "--", color="grey")
    axes[0].set(
        title=f"ROC (AUC {metrics.roc_auc(label, risk):.3f})", xlabel="false positive rate", ylabel="true positive rate"
    )
    precision, recall, _ = metrics.precision_recall(label, risk)
    axes[1].plot(recall, precision)
    axes[1].set(title=f"precision-recall (AP {metrics.pr_auc(label, risk):.3f})", xlabel="recall", ylabel="precision")
    cal = metrics.calibration(label, risk)
    axes[2].plot(cal["predicted"], cal["observed"], marker="o")
    axes[2].plot([0, 1], [0, 1], "--", color="grey")
    axes[2].axvline(threshold, color="red", linestyle=":", label=f"alert threshold {threshold:.2f}")
    axes[2].set(title="calibration", xlabel="predicted churn risk", ylabel="observed churn rate")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _row(name: str, value: Any) -> str:
    return f"| {name} | {value if not isinstance(value, float) else f'{value:.4f}'} |"


def _served_lines(manifest: dict[str, Any]) -> list[str]:
    """What gets served and why: the choice against the simple models, the recipe, the alerts."""
    lines = ["## What is served", ""]
    choice = manifest.get("choice")
    if choice:
        na, ch = choice["next_action"], choice["churn"]
        lines.append(
            f"- Next action: the **{na['served']}** (validation accuracy network "
            f"{na['validation_accuracy']['network']:.4f}, n-gram {na['validation_accuracy']['ngram']:.4f}, "
            f"margin {na['margin']:+.4f})."
        )
        auc = ch["validation_as_of_roc_auc"]
        lines.append(
            f"- Churn: the **{ch['served']}** ranking (validation as-of ROC AUC network {auc['network']:.4f}, "
            f"recency {auc['recency']:.4f}, margin {ch['margin']:+.4f}, {ch['validation_points']:,} points)."
        )
    policy = manifest["churn"].get("alert_policy", {})
    if "precision" in policy:
        lines.append(
            f"- Alerts: threshold {manifest['churn']['alert_threshold']:.4f} by {policy['policy']} {policy['value']}; "
            f"on validation precision {policy['precision']}, recall {policy['recall']}, "
            f"{policy['alerted_share_per_day']:.1%} of the customers scored on a day alerted."
        )
    trials = manifest["training"].get("trials", [])
    if trials:
        lines += [
            "",
            "| trial | window | recipe | state | validation loss | epochs | seconds |",
            "|---|---|---|---|---|---|---|",
        ]
        for t in trials:
            p = t["params"]
            recipe = (
                f"{p['layers']}x{p['units']}, emb {p['embedding_dim']}, dropout {p['dropout']}, "
                f"lr {p['learning_rate']:.2g}, batch {p['batch_size']}"
            )
            lines.append(
                f"| {t['number'] + 1} | {p['window']} | {recipe} | {t['state']} | {t['val_loss']} | {t['epochs']} | "
                f"{t['seconds']} |"
            )
    refit = manifest.get("refit", {})
    if refit.get("skipped"):
        lines += ["", f"No refit on all events ({refit['skipped']}): the served model is the split's."]
    if refit.get("events"):
        lines += [
            "",
            f"The served model was refit on all {refit['events']:,} events ({refit['epochs']} epochs); "
            "the test figures above are those of the split's model.",
        ]
    return [*lines, ""]


def write_report(
    directory: Path,
    manifest: dict[str, Any],
    result: dict[str, Any],
    curves: dict[str, np.ndarray],
    training_history: dict[str, list[float]],
) -> None:
    """report.md + training.png, confusion.png, churn.png in the version directory."""
    names = list(manifest["features"]["vocabulary"])
    plot_training(training_history, directory / "training.png")
    plot_confusion(result["next_action"]["confusion"], names, directory / "confusion.png")
    if len(curves["churn_label"]):
        plot_churn(curves["churn_label"], curves["churn_risk"], result["churn"]["threshold"], directory / "churn.png")
    lines = [
        *_summary_lines(manifest),
        *_test_lines(result),
        *_served_lines(manifest),
        "![training curves](training.png)",
        "",
        "![confusion matrix](confusion.png)",
        "",
        "![churn: ROC, precision-recall, calibration](churn.png)",
        "",
    ]
    (directory / "report.md").write_text("\n".join(lines))


def _summary_lines(manifest: dict[str, Any]) -> list[str]:
    """The title, what the model was trained on, and what training took."""
    return [
        f"# Model {manifest['version']}",
        "",
        f"Trained on `{manifest['data']['source']}` ({manifest['data']['events']:,} events, "
        f"{manifest['data']['start']} .. {manifest['data']['end']}), split `{manifest['training']['split']}` "
        f"{manifest['training']['fractions']}, level `{manifest['features']['level']}`, window "
        f"{manifest['features']['window']}, churn horizon {manifest['churn']['horizon_days']} days.",
        f"Training: {manifest['training']['epochs_run']} epochs in {manifest['training']['seconds']:.0f} s "
        f"({manifest['training']['events_per_second']:,.0f} events/s), peak RSS "
        f"{manifest['training']['peak_rss_mb']:.0f} MB.",
        "",
    ]


def _test_lines(result: dict[str, Any]) -> list[str]:
    """Both heads against their baselines on the held-out split, then next action per class."""
    na, ch = result["next_action"], result["churn"]
    return [
        "## Held-out test split",
        "",
        "| next action | model | most frequent | Markov | n-gram (1-4) |",
        "|---|---|---|---|---|",
        f"| accuracy | {na['accuracy']:.4f} | {na['baselines']['most_frequent']['accuracy']:.4f} | "
        f"{na['baselines']['markov']['accuracy']:.4f} | {na['baselines']['ngram']['accuracy']:.4f} |",
        f"| top-3 accuracy | {na['top3_accuracy']:.4f} | {na['baselines']['most_frequent']['top3_accuracy']:.4f} | "
        f"{na['baselines']['markov']['top3_accuracy']:.4f} | {na['baselines']['ngram']['top3_accuracy']:.4f} |",
        "",
        f"Macro F1 {na['macro_f1']:.4f}, weighted F1 {na['weighted_f1']:.4f}, on {na['n_examples']:,} examples.",
        "",
        "| churn | model | recency | BG/NBD |",
        "|---|---|---|---|",
        f"| ROC AUC | {ch['roc_auc']:.4f} | {ch['baselines']['recency']['roc_auc']:.4f} | "
        f"{ch['baselines']['bgnbd']['roc_auc']:.4f} |",
        "",
        f"PR AUC {ch['pr_auc']:.4f}, Brier {ch['brier']:.4f}, alert threshold {ch['threshold']:.4f} "
        f"(best F1 on validation; F1 on test {ch['f1_at_threshold']:.4f}), positive rate "
        f"{ch['positive_rate']:.3f}, on {ch['n_examples']:,} examples.",
        "",
        "## Per class (next action)",
        "",
        "| activity | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
        *[
            f"| {k} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']:,} |"
            for k, v in na["per_class"].items()
        ],
        "",
    ]
