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


def _free_run(count: int, above: int = 0) -> int:
    """The first of `count` consecutive free ports (and, with `above`, the same ports `above`
    higher: a Redis node's cluster bus), from a random start."""
    import random
    import socket

    def free(port: int) -> bool:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
        return True

    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20_000, 40_000)
        if all(free(base + i) and (not above or free(base + above + i)) for i in range(count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports found")


class ClusterStack:
    """`deploy/stack up --cluster` in its own run directory and ports: 3 Kafka nodes and a
    Redis Cluster of 3 masters with a replica each. `env`: the scorer settings it wrote."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.kafka_port = _free_run(6)
        self.redis_port = _free_run(6, above=10_000)
        self.stack_env = os.environ | {"SEQSCORE_STACK_DIR": str(run_dir),
                                       "SEQSCORE_STACK_KAFKA_PORT": str(self.kafka_port),
                                       "SEQSCORE_STACK_REDIS_PORT": str(self.redis_port)}
        self.env: dict[str, str] = {}

    def stack(self, *args: str) -> str:
        result = subprocess.run([str(REPO / "deploy" / "stack"), *args], env=self.stack_env, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, f"deploy/stack {' '.join(args)}: {result.stderr[-3000:]}"
        return result.stdout

    def up(self, component: str = "") -> None:
        self.stack("up", "--cluster", *([component] if component else []))
        lines = (self.run_dir / "cluster.env").read_text().splitlines()
        self.env = dict(line.split("=", 1) for line in lines if line.startswith("SEQSCORE_"))

    def kill(self, node: str) -> None:
        """SIGKILL one node (`kafka-2`, `redis-4`), as a crash would."""
        import signal

        os.kill(int((self.run_dir / f"{node}.pid").read_text()), signal.SIGKILL)

    def kill_redis_master(self, partitions: int) -> int:
        """SIGKILL the Redis master that owns the most events partitions' slots; returns once
        its replica serves them. Returns the killed node's port."""
        from redis.cluster import RedisCluster

        from consumer.bench.harness import wait_for
        from consumer.settings import cluster_seed_urls
        from state.partitioned import partition_prefix

        seeds = cluster_seed_urls(self.env["SEQSCORE_REDIS_URL"])
        client = RedisCluster.from_url(seeds[0])
        try:
            owners = [client.get_node_from_key(partition_prefix("x", p)).port for p in range(partitions)]
        finally:
            client.close()
        port = max(set(owners), key=owners.count)
        self.kill(f"redis-{port - self.redis_port + 1}")

        def promoted() -> bool:
            import redis

            for other in range(self.redis_port, self.redis_port + 6):
                if other == port:
                    continue
                try:
                    info = redis.Redis(port=other, socket_timeout=1).cluster("info")
                except redis.RedisError:
                    continue
                return bool(info.get("cluster_state") == "ok")
            return False

        wait_for(promoted, timeout=60, interval=0.2, what="a replica promoted in the killed master's place")
        return port


@pytest.fixture(scope="session")
def cluster_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterStack]:
    cluster = ClusterStack(tmp_path_factory.mktemp("cluster-stack"))
    try:
        cluster.up()
        yield cluster
    finally:
        subprocess.run([str(REPO / "deploy" / "stack"), "wipe"], env=cluster.stack_env, capture_output=True,
                       timeout=300)


@pytest.fixture(scope="session")
def redis_cluster(request: pytest.FixtureRequest) -> str:
    """The `redis+cluster://` URL of a Redis Cluster: SEQSCORE_TEST_REDIS_CLUSTER's, or the
    cluster stack's (started for the session)."""
    named = os.environ.get("SEQSCORE_TEST_REDIS_CLUSTER")
    if named:
        return named
    cluster: ClusterStack = request.getfixturevalue("cluster_stack")
    return cluster.env["SEQSCORE_REDIS_URL"]
