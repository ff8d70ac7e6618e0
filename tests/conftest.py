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


DEFAULT_STACK_PORTS = set(range(9092, 9098)) | set(range(6379, 6385)) | set(range(16379, 16385))


def port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_runs(*runs: tuple[int, int]) -> list[int]:
    """For each (count, above): the first of `count` consecutive free ports, and with `above`
    the same ports that much higher free too (a Redis node's cluster bus). All of them apart,
    off the default stack's ports and below the ephemeral range, so that no client connection
    takes one before the stack binds it."""
    import random

    rng = random.Random()
    for _ in range(200):
        bases = [rng.randrange(10_000, 22_000) for _ in runs]
        ports = [base + offset + i for base, (count, above) in zip(bases, runs, strict=True)
                 for offset in {0, above} for i in range(count)]
        if len(set(ports)) == len(ports) and not DEFAULT_STACK_PORTS & set(ports) and all(map(port_free, ports)):
            return bases
    raise AssertionError("no free ports for the stack")


def read_env_file(path: Path) -> dict[str, str]:
    """The NAME=value lines of an env file the stack wrote (secure.env, cluster.env)."""
    env = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    return env


class ClusterStack:
    """`deploy/stack up --cluster` in its own run directory and ports: 3 Kafka nodes and a
    Redis Cluster of 3 masters with a replica each. `env`: the scorer settings it wrote."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.kafka_base, self.redis_base = free_port_runs((6, 0), (6, 10_000))
        self.stack_env = {k: v for k, v in os.environ.items() if k != "SEQSCORE_STACK_KAFKA_HEAP"} | {
            "SEQSCORE_STACK_DIR": str(run_dir), "SEQSCORE_STACK_KAFKA_PORT": str(self.kafka_base),
            "SEQSCORE_STACK_REDIS_PORT": str(self.redis_base)}
        self.env: dict[str, str] = {}
        self.seen_pids: set[int] = set()  # every pid the stack's pid files named
        self.first_up = subprocess.CompletedProcess[str]([], 1, "", "")  # what the first `up` printed
        self.up_seconds = 0.0

    @property
    def kafka_ports(self) -> list[int]:
        return [self.kafka_base + 2 * i for i in range(3)]

    @property
    def redis_ports(self) -> list[int]:
        return [self.redis_base + j for j in range(6)]

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in self.kafka_ports)

    def stack(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(REPO / "deploy" / "stack"), *args], capture_output=True, text=True,
                              timeout=timeout, env=self.stack_env)

    def up(self, component: str = "") -> subprocess.CompletedProcess[str]:
        """`up --cluster` (everything not running, or one component); the settings it wrote."""
        result = self.stack("up", "--cluster", *([component] if component else []))
        assert result.returncode == 0, f"deploy/stack up --cluster {component}: {result.stderr[-3000:]}"
        self.env = read_env_file(self.run_dir / "cluster.env")
        self.pids()
        return result

    def pid(self, name: str) -> int:
        pid = int((self.run_dir / f"{name}.pid").read_text())
        self.seen_pids.add(pid)
        return pid

    def pids(self) -> dict[str, int]:
        names = [f"kafka-{i}" for i in range(1, 4)] + [f"redis-{j}" for j in range(1, 7)]
        return {name: self.pid(name) for name in names if (self.run_dir / f"{name}.pid").exists()}

    def kill(self, node: str) -> None:
        """SIGKILL one node (`kafka-2`, `redis-4`), as a crash would."""
        import signal

        os.kill(self.pid(node), signal.SIGKILL)

    def kill_redis_master(self, partitions: int) -> int:
        """SIGKILL the Redis master that owns the most events partitions' slots; returns once
        its replica serves them. Returns the killed node's port."""
        import redis
        from redis.cluster import RedisCluster

        from consumer.bench.harness import wait_for
        from consumer.settings import cluster_seed_urls
        from state.partitioned import partition_prefix

        client = RedisCluster.from_url(cluster_seed_urls(self.env["SEQSCORE_REDIS_URL"])[0])
        try:
            owners = [client.get_node_from_key(partition_prefix("x", p)).port for p in range(partitions)]
        finally:
            client.close()
        port = max(set(owners), key=owners.count)
        self.kill(f"redis-{port - self.redis_base + 1}")

        def promoted() -> bool:
            for other in self.redis_ports:
                if other == port:
                    continue
                try:
                    return bool(redis.Redis(port=other, socket_timeout=1).cluster("info").get("cluster_state") == "ok")
                except redis.RedisError:
                    continue
            return False

        wait_for(promoted, timeout=60, interval=0.2, what="a replica promoted in the killed master's place")
        return port

    def stop(self) -> None:
        """`down`, and SIGKILL for any process it left that still names the run directory."""
        import signal

        self.stack("down")
        self.pids()
        for pid in self.seen_pids:
            try:
                if str(self.run_dir) in Path(f"/proc/{pid}/cmdline").read_text():
                    os.kill(pid, signal.SIGKILL)
            except (FileNotFoundError, ProcessLookupError):
                pass


@pytest.fixture(scope="session")
def cluster_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterStack]:
    cluster = ClusterStack(tmp_path_factory.mktemp("cluster-stack"))
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_cluster(request: pytest.FixtureRequest) -> str:
    """The `redis+cluster://` URL of a Redis Cluster: SEQSCORE_TEST_REDIS_CLUSTER's, or the
    cluster stack's (started for the session)."""
    named = os.environ.get("SEQSCORE_TEST_REDIS_CLUSTER")
    if named:
        return named
    cluster: ClusterStack = request.getfixturevalue("cluster_stack")
    return cluster.env["SEQSCORE_REDIS_URL"]
