from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not found (fix: apt-get install -y prometheus, or run deploy/install-deps)"
    return path


def test_prometheus_config_is_valid() -> None:
    result = subprocess.run(
        [promtool(), "check", "config", str(REPO / "deploy/prometheus/prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_are_valid_and_fire_on_the_series_they_watch() -> None:
    prometheus = REPO / "deploy/prometheus"
    check = subprocess.run([promtool(), "check", "rules", "alerts.yml"], cwd=prometheus,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and "8 rules found" in check.stdout, check.stdout + check.stderr
    test = subprocess.run([promtool(), "test", "rules", "alerts_test.yml"], cwd=prometheus,
                          capture_output=True, text=True, timeout=60)
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout + test.stderr


def test_grafana_dashboard_queries_only_metrics_the_scorer_exports() -> None:
    import json
    import re

    from consumer.metrics import Metrics

    exported = {metric.name for metric in Metrics().registry.collect()}
    dashboard = json.loads((REPO / "deploy/grafana/seqscore.json").read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels) and all("gridPos" in p for p in panels)
    used = set()
    for target in (t for p in panels for t in p["targets"]):
        for name in re.findall(r"seqscore_[a-z_]+", target["expr"]):
            used.add(re.sub(r"_(bucket|sum|count|total)$", "", name))
    assert used, "the dashboard queries something"
    assert used <= exported, f"not exported by the scorer: {sorted(used - exported)}"
    wanted = {"seqscore_events", "seqscore_consumer_lag_seconds", "seqscore_event_to_output_seconds",
              "seqscore_batch_size", "seqscore_stage_seconds", "seqscore_churn_alerts", "seqscore_model_info"}
    assert wanted <= used, f"missing panels for {sorted(wanted - used)}"
