from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from consumer.settings import load_settings
from state.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("SEQSCORE_"):
            monkeypatch.delenv(key)


def test_contract_defaults() -> None:
    s = load_settings()
    assert s.kafka_bootstrap == "127.0.0.1:9092"
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.registry == Path("models")
    assert s.group_id == "seqscore"
    assert s.metrics_port == 9464
    assert s.max_event_bytes == 65536
    assert s.topics.names() == [
        "activity-events",
        "activity-events.dlq",
        "next-actions",
        "churn-alerts",
        "customer-profiles",
    ]
    assert s.topics.events_partitions == 12


def test_top_level_and_nested_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQSCORE_KAFKA_BOOTSTRAP", "broker:29092")
    monkeypatch.setenv("SEQSCORE_METRICS_PORT", "9500")
    monkeypatch.setenv("SEQSCORE_BATCH__MAX_BATCH", "256")
    s = load_settings()
    assert (s.kafka_bootstrap, s.metrics_port, s.batch.max_batch) == ("broker:29092", 9500, 256)


def test_librdkafka_passthrough_maps_underscores_to_dots(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQSCORE_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("SEQSCORE_KAFKA__SASL_MECHANISMS", "SCRAM-SHA-512")
    config = load_settings().kafka_config()
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.mechanisms"] == "SCRAM-SHA-512"
    assert config["bootstrap.servers"] == "127.0.0.1:9092"


def test_invalid_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQSCORE_BATCH__MAX_WAIT_MS", "soon")
    with pytest.raises(ConfigError, match="SEQSCORE_BATCH__MAX_WAIT_MS"):
        load_settings()


def test_unknown_redis_scheme_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQSCORE_REDIS_URL", "http://localhost")
    with pytest.raises(ConfigError, match="SEQSCORE_REDIS_URL"):
        load_settings()


def test_config_file_below_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "seqscore.toml"
    path.write_text('group_id = "from-file"\nmetrics_port = 9999\n[batch]\nmax_batch = 64\n')
    monkeypatch.setenv("SEQSCORE_CONFIG", str(path))
    monkeypatch.setenv("SEQSCORE_METRICS_PORT", "9000")
    s = load_settings()
    assert (s.group_id, s.metrics_port, s.batch.max_batch) == ("from-file", 9000, 64)


def test_missing_config_file_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQSCORE_CONFIG", "/nonexistent/seqscore.toml")
    with pytest.raises(ConfigError, match="SEQSCORE_CONFIG"):
        load_settings()


def test_secrets_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQSCORE_REDIS_URL", "rediss://scorer:s3cret@redis:6380/0")
    monkeypatch.setenv("SEQSCORE_KAFKA__SASL_PASSWORD", "hunter2")
    text = str(load_settings().masked())
    assert "s3cret" not in text and "hunter2" not in text
    assert "rediss://scorer:***@redis:6380/0" in text


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "consumer.cli", *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_cli_bad_setting_is_one_line_exit_2() -> None:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("SEQSCORE_")} | {"SEQSCORE_METRICS_PORT": "-1"}
    result = run_cli("config", env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "SEQSCORE_METRICS_PORT" in lines[0] and "Traceback" not in result.stderr


def test_cli_bad_argument_is_one_line_exit_2() -> None:
    result = run_cli("simulate", "--customers", "-5", "--out", "x.csv")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--customers" in result.stderr


def test_cli_config_prints_masked_json() -> None:
    import json
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("SEQSCORE_")}
    env["SEQSCORE_KAFKA__SASL_PASSWORD"] = "hunter2"
    result = run_cli("config", env=env)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["kafka"]["sasl.password"] == "***"
