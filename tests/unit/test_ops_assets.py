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
