"""The local stack and the project's Kafka plumbing, against the real broker and Redis."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, ConfigResource

from consumer.bench.harness import free_port, wait_for
from consumer.bench.loadgen import StreamPlan, stream
from consumer.serve.topics import ensure_topics
from consumer.settings import load_settings
from state.errors import InvalidEvent
from state.events import decode_event
from tests.conftest import REPO
from training.simulate import simulate

STACK = str(REPO / "deploy" / "stack")


def consume_all(bootstrap: str, topic: str, expected: int, timeout: float = 60.0) -> list[tuple[bytes, bytes]]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"check-{topic}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    got: list[tuple[bytes, bytes]] = []

    def more() -> bool:
        for msg in consumer.consume(500, 0.2):
            assert msg.error() is None, msg.error()
            got.append((msg.key(), msg.value()))
        return len(got) >= expected

    try:
        wait_for(more, timeout=timeout, interval=0, what=f"{expected} records on {topic}")
    finally:
        consumer.close()
    return got


def test_kafka_round_trips_a_message(stack: dict[str, str], unique: str) -> None:
    topic = f"roundtrip-{unique}"
    producer = Producer({"bootstrap.servers": stack["kafka"]})
    producer.produce(topic, key=b"k", value=b"hello")
    assert producer.flush(30) == 0
    assert consume_all(stack["kafka"], topic, 1) == [(b"k", b"hello")]


def test_redis_answers_with_aof_on(stack: dict[str, str]) -> None:
    client = redis.Redis.from_url(stack["redis"])
    assert client.ping()
    assert client.config_get("appendonly")["appendonly"] == "yes"


def test_topics_are_created_idempotently_with_compacted_profiles(test_env: dict[str, str]) -> None:
    settings = load_settings()
    first = ensure_topics(settings)
    assert sorted(first) == sorted(settings.topics.names())
    assert ensure_topics(settings) == []
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    meta = admin.list_topics(timeout=10)
    assert len(meta.topics[settings.topics.events].partitions) == 4
    resource = ConfigResource(ConfigResource.Type.TOPIC, settings.topics.profiles)
    configs = admin.describe_configs([resource])[resource].result(timeout=10)
    assert configs["cleanup.policy"].value == "compact"


def test_topics_command_prints_each_topic(test_env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "consumer.cli", "topics"],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ.copy(),
    )
    assert result.returncode == 0, result.stderr
    assert {line.split("\t")[0] for line in result.stdout.splitlines()} == set(load_settings().topics.names())


def test_simulated_stream_arrives_with_the_planned_faults(test_env: dict[str, str]) -> None:
    settings = load_settings()
    history = simulate(120, seed=11)
    plan = StreamPlan(malformed=0.05, duplicates=0.03, out_of_order=0.05, seed=11, rate=20_000)
    report = stream(history, settings.topics.events, settings.kafka_config(), plan, progress=False)
    assert report.sent == history.n_events + report.duplicates
    records = consume_all(settings.kafka_bootstrap, settings.topics.events, report.sent)
    assert len(records) == report.sent
    valid, reasons = 0, []
    customers = set(history.customer_ids)
    for key, value in records:
        try:
            event = decode_event(value)
            assert event.customer_id.encode() == key
            valid += 1
        except InvalidEvent as exc:
            reasons.append(exc.reason)
        assert key.decode() in customers
    assert valid == report.valid + report.duplicates
    assert len(reasons) == sum(report.malformed.values()) > 0


def test_up_twice_is_harmless(stack: dict[str, str]) -> None:
    result = subprocess.run([STACK, "up"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "already running" in result.stderr
    status = subprocess.run([STACK, "status"], capture_output=True, text=True, timeout=30)
    assert status.returncode == 0 and "kafka  running" in status.stdout and "redis  running" in status.stdout


def test_taken_port_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = os.environ | {"SEQSCORE_STACK_DIR": str(tmp_path), "SEQSCORE_STACK_REDIS_PORT": str(port)}
        result = subprocess.run([STACK, "up", "redis"], capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0
    assert f"port {port}" in result.stderr and "SEQSCORE_STACK_REDIS_PORT" in result.stderr


def test_missing_java_names_the_fix(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "sha256sum", "cut", "tr", "grep", "awk", "mkdir", "dirname", "cat", "sleep", "sed"):
        path = subprocess.run(["which", tool], capture_output=True, text=True).stdout.strip()
        if path:
            (bin_dir / tool).symlink_to(path)
    env = {
        "PATH": str(bin_dir),
        "SEQSCORE_STACK_DIR": str(tmp_path / "run"),
        "SEQSCORE_STACK_KAFKA_PORT": str(free_port()),
        "SEQSCORE_STACK_CONTROLLER_PORT": str(free_port()),
    }
    result = subprocess.run(["bash", STACK, "up", "kafka"], capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode != 0
    assert "java not found" in result.stderr and "apt-get install" in result.stderr


def test_down_stops_only_what_up_started(tmp_path: Path) -> None:
    env = os.environ | {"SEQSCORE_STACK_DIR": str(tmp_path), "SEQSCORE_STACK_REDIS_PORT": str(free_port())}
    subprocess.run([STACK, "up", "redis"], check=True, capture_output=True, timeout=60, env=env)
    pid = int((tmp_path / "redis.pid").read_text())
    assert Path(f"/proc/{pid}").exists()
    subprocess.run([STACK, "down", "redis"], check=True, capture_output=True, timeout=60, env=env)
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()

    # a pid file that points at a process this stack did not start is left alone
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / "redis.pid").write_text(str(bystander.pid))
        result = subprocess.run([STACK, "down", "redis"], capture_output=True, text=True, timeout=30, env=env)
        assert result.returncode == 0 and "not running" in result.stderr
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


@pytest.mark.parametrize("component", ["kafka", "redis"])
def test_logs_are_readable(stack: dict[str, str], component: str) -> None:
    result = subprocess.run([STACK, "logs", component], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.strip()
