"""The stack in cluster mode (`deploy/stack up --cluster`): 3 Kafka nodes in KRaft with
replication factor 3 and min.insync.replicas 2, a Redis Cluster of 3 masters with a replica
each. One Kafka node and one Redis master are killed: acks=all writes go on, the Redis replica
takes over, and `up --cluster` brings the killed processes back. Its own ports and run
directory: the default stack (9092/9093/6379) is never touched. Stopped at the end, also when
a test fails."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, PartitionMetadata
from redis.cluster import ClusterNode, RedisCluster

from consumer.bench.harness import wait_for
from tests.conftest import ClusterStack, read_env_file

pytestmark = pytest.mark.slow

TOOLS = {"java": "openjdk-17-jre-headless", "redis-server": "redis-server", "redis-cli": "redis-tools"}
TOPIC = "cluster-check"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterStack]:
    missing = [f"{tool} ({package})" for tool, package in TOOLS.items() if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"the cluster stack needs {', '.join(missing)}: run deploy/install-deps (as root) to install them")
    stack = ClusterStack(tmp_path_factory.mktemp("cluster-stack"))
    try:
        started = time.monotonic()
        stack.first_up = stack.stack("up", "--cluster")
        stack.up_seconds = time.monotonic() - started
        assert stack.first_up.returncode == 0, f"deploy/stack up --cluster failed:\n{stack.first_up.stderr[-4000:]}"
        stack.pids()
        yield stack
    finally:
        stack.stop()


def alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except FileNotFoundError:
        return False


def node(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, decode_responses=True)


def cluster_client(cluster: ClusterStack) -> RedisCluster:
    return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in cluster.redis_ports[:3]],
                        decode_responses=True, socket_timeout=5)


def status_lines(stack: ClusterStack) -> tuple[int, dict[str, str]]:
    result = stack.stack("status", timeout=60)
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    return result.returncode, lines


def test_up_cluster_lists_every_process_and_writes_the_settings(cluster: ClusterStack) -> None:
    print(f"up --cluster, cold: {cluster.up_seconds:.1f}s")
    rc, lines = status_lines(cluster)
    assert rc == 0, lines
    assert lines["mode"] == f"mode   cluster: settings {cluster.run_dir}/cluster.env"
    pids = cluster.pids()
    for i, port in enumerate(cluster.kafka_ports, start=1):
        line = lines[f"kafka-{i}"]
        assert line.startswith(f"kafka-{i}  running  pid {pids[f'kafka-{i}']}  127.0.0.1:{port} "), line
        assert f"(controller 127.0.0.1:{port + 1})" in line
    roles = []
    for j, port in enumerate(cluster.redis_ports, start=1):
        line = lines[f"redis-{j}"]
        assert line.startswith(f"redis-{j}  running  pid {pids[f'redis-{j}']}  127.0.0.1:{port}  "), line
        roles.append("master" if "  master  " in line else "replica" if "  replica of 127.0.0.1:" in line else line)
    assert sorted(roles) == ["master"] * 3 + ["replica"] * 3
    assert len(lines) == 10, "a mode line, 3 Kafka nodes and 6 Redis nodes"

    env_file = cluster.run_dir / "cluster.env"
    redis_seeds = ",".join(f"127.0.0.1:{p}" for p in cluster.redis_ports[:3])
    assert read_env_file(env_file) == {
        "SEQSCORE_KAFKA_BOOTSTRAP": cluster.bootstrap,
        "SEQSCORE_KAFKA__ACKS": "all",
        "SEQSCORE_TOPICS__REPLICATION_FACTOR": "3",
        "SEQSCORE_REDIS_URL": f"redis+cluster://{redis_seeds}/0",
    }
    assert f"set -a; . {env_file}; set +a" in cluster.first_up.stdout
    assert f"SEQSCORE_KAFKA_BOOTSTRAP={cluster.bootstrap}" in cluster.first_up.stdout

    ids = {(cluster.run_dir / f"kafka-{i}" / "data" / "meta.properties").read_text().split("cluster.id=")[1].split()[0]
           for i in range(1, 4)}
    assert ids == {(cluster.run_dir / "kafka-cluster.id").read_text().strip()}, "one cluster id for all three"
    assert "cluster-enabled yes" in (cluster.run_dir / "redis-2" / "redis.conf").read_text()

    # a cluster directory refuses the other modes, each in one line
    for args in (["up"], ["up", "--secure"], ["up", "--cluster", "--secure"]):
        refused = cluster.stack(*args, timeout=60)
        assert refused.returncode != 0 and refused.stderr.count("\n") == 1, (args, refused.stderr)
    assert "not supported yet" in cluster.stack("up", "--secure", "--cluster", timeout=60).stderr
    again = cluster.stack("up", "--cluster", timeout=60)
    assert again.returncode == 0 and again.stderr.count("already running") == 9, again.stderr
    for node in ("kafka-2", "redis-3"):
        logs = cluster.stack("logs", node, timeout=30)
        assert logs.returncode == 0 and logs.stdout.strip(), node


def produce(bootstrap: str, topic: str, values: list[bytes], timeout: float = 60, quiet: bool = False) -> None:
    """acks=all writes; quiet: without librdkafka's log of a killed node's refused connections."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                         "message.timeout.ms": int(timeout * 1000), "log_level": 0 if quiet else 6})
    errors: list[KafkaError] = []

    def delivered(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            errors.append(err)

    for value in values:
        producer.produce(topic, key=value, value=value, on_delivery=delivered)
    assert producer.flush(timeout + 10) == 0
    assert errors == []


def consume(bootstrap: str, topic: str, expected: int, timeout: float = 60, quiet: bool = False) -> list[bytes]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{time.monotonic_ns()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "log_level": 0 if quiet else 6})
    consumer.subscribe([topic])
    got: list[bytes] = []

    def more() -> bool:
        for msg in consumer.consume(500, 0.2):
            assert msg.error() is None, msg.error()
            got.append(msg.value() or b"")
        return len(got) >= expected

    try:
        wait_for(more, timeout=timeout, interval=0, what=f"{expected} records on {topic}")
    finally:
        consumer.close()
    return got


def partition(cluster: ClusterStack, topic: str) -> PartitionMetadata:
    meta = AdminClient({"bootstrap.servers": cluster.bootstrap, "log_level": 0}).list_topics(topic, timeout=10)
    return meta.topics[topic].partitions[0]


def slot_master(cluster: ClusterStack, port: int, slot: int) -> int:
    """The port of the master serving this slot, as the node on `port` sees it."""
    slots = node(port).execute_command("CLUSTER", "SLOTS")
    return next(int(entry[2][1]) for entry in slots if entry[0] <= slot <= entry[1])


def test_kafka_takes_acks_all_writes_on_three_replicas(cluster: ClusterStack) -> None:
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    admin.create_topics([NewTopic(TOPIC, 1, replication_factor=3)])[TOPIC].result(timeout=30)
    resource = ConfigResource(ConfigResource.Type.TOPIC, TOPIC)
    configs = admin.describe_configs([resource])[resource].result(timeout=10)
    assert configs["min.insync.replicas"].value == "2"
    wait_for(lambda: len(partition(cluster, TOPIC).isrs) == 3, timeout=30, what="3 in-sync replicas")
    assert sorted(partition(cluster, TOPIC).replicas) == [1, 2, 3]
    produce(cluster.bootstrap, TOPIC, [b"before-0", b"before-1"])
    assert consume(cluster.bootstrap, TOPIC, 2) == [b"before-0", b"before-1"]


def test_redis_cluster_serves_every_slot_range(cluster: ClusterStack) -> None:
    client = cluster_client(cluster)
    keys = {f"key-{n}": str(n) for n in range(200)}
    for key, value in keys.items():
        client.set(key, value)
    assert {key: client.get(key) for key in keys} == keys
    masters = {client.keyslot(k) // 5462 for k in keys}  # the slot ranges of the 3 masters
    assert masters == {0, 1, 2}, "the keys reach all three masters"
    info = client.cluster_info(target_nodes=RedisCluster.RANDOM)
    assert info["cluster_state"] == "ok" and int(info["cluster_size"]) == 3 and int(info["cluster_known_nodes"]) == 6
    for port in cluster.redis_ports:
        role = node(port).execute_command("ROLE")
        if role[0] == "master":
            assert len(role[2]) == 1, f"the master on {port} has one replica"
            node(port).wait(1, 5000)  # the replica has every write before anything is killed
    client.close()


def test_a_killed_kafka_node_and_redis_master_are_survived_and_restarted(cluster: ClusterStack) -> None:
    # Kafka: the partition's leader dies; 2 in-sync replicas remain, enough for acks=all
    leader = partition(cluster, TOPIC).leader
    kafka_node = f"kafka-{leader}"
    os.kill(cluster.pid(kafka_node), signal.SIGKILL)
    # Redis: the master of key-0's slot dies; its replica takes over its slots
    client = cluster_client(cluster)
    slot = client.keyslot("key-0")
    client.close()
    master_port = slot_master(cluster, cluster.redis_ports[0], slot)
    redis_node = f"redis-{master_port - cluster.redis_base + 1}"
    os.kill(cluster.pid(redis_node), signal.SIGKILL)
    killed = time.monotonic()

    survivor = next(p for p in cluster.redis_ports if p != master_port)

    def failed_over() -> bool:
        return (node(survivor).cluster("INFO")["cluster_state"] == "ok"
                and slot_master(cluster, survivor, slot) != master_port)

    wait_for(failed_over, timeout=60, interval=0.2, what="the Redis replica promoted")
    redis_seconds = time.monotonic() - killed
    client = cluster_client(cluster)
    keys = {f"key-{n}": str(n) for n in range(200)}
    assert {key: client.get(key) for key in keys} == keys, "the promoted replica serves the killed master's keys"
    client.set("key-0", "after")
    assert client.get("key-0") == "after"
    client.close()

    produce(cluster.bootstrap, TOPIC, [b"after-0", b"after-1"], timeout=90, quiet=True)
    kafka_seconds = time.monotonic() - killed

    def shrunk() -> bool:
        meta = partition(cluster, TOPIC)
        return meta.leader != leader and sorted(meta.isrs) == sorted({1, 2, 3} - {leader})

    wait_for(shrunk, timeout=30, what=f"a new leader and 2 in-sync replicas without {kafka_node}")
    assert consume(cluster.bootstrap, TOPIC, 4, quiet=True) == [b"before-0", b"before-1", b"after-0", b"after-1"]
    print(f"after SIGKILL: Redis failover done in {redis_seconds:.1f}s, first acks=all write in {kafka_seconds:.1f}s")

    rc, lines = status_lines(cluster)
    assert rc == 3 and f"{kafka_node}  stopped" in lines[kafka_node] and f"{redis_node}  stopped" in lines[redis_node]

    # restart: one node by name, then everything not running
    started = time.monotonic()
    up_kafka = cluster.stack("up", "--cluster", kafka_node)
    assert up_kafka.returncode == 0, up_kafka.stderr[-3000:]
    up_all = cluster.stack("up", "--cluster")
    assert up_all.returncode == 0, up_all.stderr[-3000:]
    print(f"restart of {kafka_node} and {redis_node}: {time.monotonic() - started:.1f}s")
    assert up_all.stderr.count("already running") == 8, up_all.stderr
    rc, lines = status_lines(cluster)
    assert rc == 0 and all("  running  pid " in lines[n] for n in cluster.pids()), lines
    assert "replica of 127.0.0.1:" in lines[redis_node], "the old master came back as a replica"
    wait_for(lambda: len(partition(cluster, TOPIC).isrs) == 3, timeout=60, what="the restarted node in sync")
    produce(cluster.bootstrap, TOPIC, [b"restarted"])
    assert consume(cluster.bootstrap, TOPIC, 5)[-1] == b"restarted"


def test_down_stops_every_process(cluster: ClusterStack) -> None:
    pids = cluster.pids()
    assert len(pids) == 9 and all(alive(pid) for pid in pids.values())
    one = cluster.stack("down", "redis-6", timeout=60)
    assert one.returncode == 0 and "redis-6 stopped" in one.stderr and not alive(pids["redis-6"])
    down = cluster.stack("down", timeout=120)
    assert down.returncode == 0, down.stderr
    assert [name for name, pid in pids.items() if alive(pid)] == []
    assert not list(cluster.run_dir.glob("*.pid"))
    rc, lines = status_lines(cluster)
    assert rc == 3 and sum("  stopped  127.0.0.1:" in line for line in lines.values()) == 9
