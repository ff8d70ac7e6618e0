"""Shared fixtures. Integration tests use the real Kafka and Redis of deploy/stack:
a session fixture reuses the stack named by SEQSCORE_TEST_KAFKA / SEQSCORE_TEST_REDIS
(default: the stack's own addresses), starting it when it is down, and fails (never
skips) when it cannot be reached. Each test gets its own topic names and key prefix."""

from __future__ import annotations

import os
import subprocess
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KAFKA = os.environ.get("SEQSCORE_TEST_KAFKA", "127.0.0.1:9092")
REDIS = os.environ.get("SEQSCORE_TEST_REDIS", "redis://127.0.0.1:6379/15")


def _kafka_answers() -> bool:
    from confluent_kafka.admin import AdminClient

    try:
        AdminClient({"bootstrap.servers": KAFKA}).list_topics(timeout=5)
        return True
    except Exception:
        return False


def _redis_answers() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(REDIS, socket_timeout=2).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def stack() -> Iterator[dict[str, str]]:
    """The real Kafka + Redis; started here (and stopped after) only when not running."""
    started = False
    if not (_kafka_answers() and _redis_answers()):
        subprocess.run([str(REPO / "deploy" / "stack"), "up"], check=True, timeout=300)
        started = True
    assert _kafka_answers(), f"Kafka at {KAFKA} does not answer (deploy/stack up; deploy/stack logs kafka)"
    assert _redis_answers(), f"Redis at {REDIS} does not answer (deploy/stack up; deploy/stack logs redis)"
    yield {"kafka": KAFKA, "redis": REDIS}
    if started:
        subprocess.run([str(REPO / "deploy" / "stack"), "down"], check=False, timeout=120)


@pytest.fixture
def unique() -> str:
    """A short id for this test's topics, group and Redis key prefix."""
    return uuid.uuid4().hex[:10]


def names_of(unique: str, group: str, prefix: str) -> dict[str, str]:
    """SEQSCORE_* names of one test's own group, key prefix and topics (4 partitions each)."""
    return {
        "SEQSCORE_GROUP_ID": group,
        "SEQSCORE_STATE__KEY_PREFIX": prefix,
        "SEQSCORE_TOPICS__EVENTS": f"activity-events-{unique}",
        "SEQSCORE_TOPICS__DLQ": f"activity-events-{unique}.dlq",
        "SEQSCORE_TOPICS__NEXT_ACTIONS": f"next-actions-{unique}",
        "SEQSCORE_TOPICS__CHURN_ALERTS": f"churn-alerts-{unique}",
        "SEQSCORE_TOPICS__PROFILES": f"customer-profiles-{unique}",
        "SEQSCORE_TOPICS__EVENTS_PARTITIONS": "4",
        "SEQSCORE_TOPICS__OUTPUT_PARTITIONS": "4",
    }


@pytest.fixture
def test_env(stack: dict[str, str], unique: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """SEQSCORE_* variables pointing at the stack with topic names and prefix of this test only;
    afterwards its topics are deleted, so that a stack reused run after run stays small."""
    env = {"SEQSCORE_KAFKA_BOOTSTRAP": stack["kafka"], "SEQSCORE_REDIS_URL": stack["redis"],
           **names_of(unique, group=f"seqscore-{unique}", prefix=f"t{unique}")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield env
    _delete_topics_named_with(stack["kafka"], unique)


def _delete_topics_named_with(bootstrap: str, unique: str) -> None:
    """Best effort: a topic left behind costs the broker metadata, not a test's result."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        names = sorted(t for t in admin.list_topics(timeout=10).topics if unique in t)
        for future in admin.delete_topics(names, operation_timeout=30).values() if names else ():
            future.result(timeout=60)
    except Exception as exc:  # reported, never failing the test it follows
        warnings.warn(f"test topics of {unique} not deleted: {exc}", stacklevel=1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.fspath) or "/faults/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


def _trained_registry(root: Path, customers: int, epochs: int, units: int, alerts: str = "budget") -> Path:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from training.alerts import ThresholdRule
    from training.history import history_table, write_table
    from training.model import ModelConfig
    from training.simulate import simulate
    from training.train import TrainOptions, run

    events = root / "history.parquet"
    write_table(history_table(simulate(customers, seed=77)), events)
    run(TrainOptions(events=str(events), registry=root / "models", window=12, epochs=epochs, seed=1, trials=1,
                     alerts=ThresholdRule() if alerts == "budget" else ThresholdRule("f1", 0.0), promote="always",
                     model=ModelConfig(units=units, dense_units=units)))
    return root / "models"


@pytest.fixture(scope="session")
def tiny_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with one small promoted model (window 12), trained once per session."""
    return _trained_registry(tmp_path_factory.mktemp("registry"), 500, 2, 16)


@pytest.fixture(scope="session")
def silence_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small model trained long enough (about 25 s) that its churn risk grows with silence; its
    alert threshold is the best-F1 one, low enough that silence alerts come before the horizon."""
    return _trained_registry(tmp_path_factory.mktemp("silence-registry"), 1500, 8, 32, alerts="f1")


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[str]:
    """A Redis Cluster (3 masters, one replica each): SEQSCORE_TEST_REDIS_CLUSTER names a running one."""
    yield os.environ["SEQSCORE_TEST_REDIS_CLUSTER"]
