"""`seqscore serve` end to end on the real Kafka and Redis: predictions, dead letters,
metrics, readiness, shutdown, two instances, model refresh, profiles and erasure.
(Crashes and outages: tests/faults/.)"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import redis
from confluent_kafka import Consumer, Producer, TopicPartition

from consumer.bench.harness import predictions_by_event, read_topic, running, wait_for
from consumer.bench.loadgen import MALFORMED_KINDS, StreamPlan, corrupt, event_values, stream
from consumer.settings import Settings, load_settings
from state.events import ChurnAlertMessage
from state.store import STORED_HEADER_BYTES, StateStore
from tests.registry_copies import copy_version, poisoned_version
from training.simulate import simulate

pytestmark = pytest.mark.slow


def produce_malformed(bootstrap: str, topic: str, template: bytes) -> dict[str, bytes]:
    """One record per malformed kind, with an original header each; returns kind -> value."""
    producer = Producer({"bootstrap.servers": bootstrap})
    sent = {}
    for kind in MALFORMED_KINDS:
        value = corrupt(template, kind)
        producer.produce(topic, key=b"bad-" + kind.encode(), value=value, headers=[("origin", b"test")])
        sent[kind] = value
    assert producer.flush(30) == 0
    return sent


def committed_equals_end(bootstrap: str, group: str, topic: str) -> bool:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        tps = [TopicPartition(topic, p) for p in partitions]
        committed = consumer.committed(tps, timeout=10)
        for tp in committed:
            _, high = consumer.get_watermark_offsets(tp, timeout=10)
            if high > 0 and tp.offset != high:
                return False
        return True
    finally:
        consumer.close()


def test_scorer_serves_predictions_dead_letters_metrics_and_shuts_down(
    test_env: dict[str, str], tiny_registry: Path, tmp_path: Path
) -> None:
    settings = load_settings()
    history = simulate(60, seed=31)
    with running(test_env, tiny_registry, tmp_path / "serve.log") as scorer:
        scorer.wait_ready()
        report = stream(history, settings.topics.events, settings.kafka_config(),
                        StreamPlan(duplicates=0.03, seed=3), progress=False)
        _, template = next(event_values(history))
        malformed = produce_malformed(settings.kafka_bootstrap, settings.topics.events, template)

        outputs = read_topic(settings.kafka_bootstrap, settings.topics.next_actions, history.n_events)
        by_event = predictions_by_event(outputs)
        assert set(by_event) == set(history.event_ids()), "every valid event has a prediction"
        assert all(len(v) == 1 for v in by_event.values()), "exactly one each; duplicates are ignored"
        sample = next(iter(by_event.values()))[0]
        assert sample["model_version"] and sample["schema_version"] == 1 and len(sample["actions"]) == 3
        assert 0 <= sample["churn_risk"] <= 1 and len(sample["prediction_id"]) == 32

        dlq = read_topic(settings.kafka_bootstrap, settings.topics.dlq, len(malformed))
        assert len(dlq) == len(malformed)
        for msg in dlq:
            headers = dict(msg.headers())
            kind = msg.key().decode().removeprefix("bad-")
            assert msg.value() == malformed[kind] or (msg.value() is None and malformed[kind] == b""), kind
            assert headers["origin"] == b"test"
            assert headers["seqscore.reason"].decode() and headers["seqscore.detail"]
            assert headers["seqscore.topic"].decode() == settings.topics.events
            assert int(headers["seqscore.offset"]) >= 0 and int(headers["seqscore.partition"]) >= 0

        alerts_sent = int(scorer.metric("seqscore_churn_alerts_total"))
        alerts = read_topic(settings.kafka_bootstrap, settings.topics.churn_alerts, alerts_sent)
        assert alerts_sent > 0 and len(alerts) == alerts_sent
        for msg in alerts:
            alert = ChurnAlertMessage.model_validate_json(msg.value())
            assert alert.model_version == sample["model_version"]
            # a silence alert has no triggering event
            assert alert.event_id in by_event if alert.trigger == "event" else alert.event_id is None

        assert scorer.get("/healthz")[0] == 200
        status, body = scorer.get("/metrics")
        assert status == 200
        assert scorer.metric("seqscore_predictions_total") == history.n_events
        assert scorer.metric("seqscore_events_invalid_total") == len(malformed)
        assert scorer.metric("seqscore_state_events_total", 'status="duplicate"') == report.duplicates
        metrics_file = tmp_path / "metrics.txt"
        metrics_file.write_bytes(body)
        check = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr

        assert scorer.stop(signal.SIGTERM) == 0
    log = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in log, log[-3000:]
    assert committed_equals_end(settings.kafka_bootstrap, settings.group_id, settings.topics.events)


def test_two_instances_share_the_partitions(test_env: dict[str, str], tiny_registry: Path, tmp_path: Path) -> None:
    settings = load_settings()
    history = simulate(80, seed=32)
    with running(test_env, tiny_registry, tmp_path / "a.log") as a, \
            running(test_env, tiny_registry, tmp_path / "b.log") as b:
        a.wait_ready()
        b.wait_ready()
        wait_for(lambda: a.metric("seqscore_assigned_partitions") + b.metric("seqscore_assigned_partitions") == 4
                 and a.metric("seqscore_assigned_partitions") > 0 and b.metric("seqscore_assigned_partitions") > 0,
                 timeout=60, what="both instances assigned")
        stream(history, settings.topics.events, settings.kafka_config(), StreamPlan(seed=4), progress=False)
        outputs = read_topic(settings.kafka_bootstrap, settings.topics.next_actions, history.n_events)
        by_event = predictions_by_event(outputs)
        assert set(by_event) == set(history.event_ids())
        assert a.metric("seqscore_predictions_total") > 0 and b.metric("seqscore_predictions_total") > 0
        assert a.metric("seqscore_predictions_total") + b.metric("seqscore_predictions_total") == history.n_events


def own_registry(tiny_registry: Path, tmp_path: Path) -> tuple[Path, str]:
    """A copy of the tiny registry this test may change, and its CURRENT version."""
    registry = tmp_path / "models"
    shutil.copytree(tiny_registry, registry, symlinks=True)
    return registry, (registry / "CURRENT").resolve().name


def send_events(settings: Settings, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for value in values:
        producer.produce(settings.topics.events, key=orjson.loads(value)["customer_id"], value=value)
    assert producer.flush(30) == 0


def test_new_model_version_is_swapped_in_and_a_broken_one_refused(
    test_env: dict[str, str], tiny_registry: Path, tmp_path: Path
) -> None:
    registry, current = own_registry(tiny_registry, tmp_path)
    settings = load_settings()
    env = test_env | {"SEQSCORE_MODEL__POLL_SECONDS": "0.5"}
    values = [v for _, v in event_values(simulate(20, seed=34))]

    with running(env, registry, tmp_path / "serve.log") as scorer:
        scorer.wait_ready()
        # a broken version: refused, the old one keeps serving
        broken = copy_version(registry / current, registry / "99990101T000000Z")
        (broken / "model.keras").write_bytes(b"not a model")
        subprocess.run(["ln", "-sfn", broken.name, str(registry / "CURRENT")], check=True)
        wait_for(lambda: scorer.metric("seqscore_model_reloads_total", 'result="refused"') >= 1, timeout=60,
                 what="broken model refused")
        send_events(settings, values[:10])
        first = read_topic(settings.kafka_bootstrap, settings.topics.next_actions, 10)
        assert {json.loads(m.value())["model_version"] for m in first} == {current}

        # a good new version: swapped in between batches, named in outputs and metrics
        fresh = copy_version(registry / current, registry / "99990102T000000Z")
        subprocess.run(["ln", "-sfn", fresh.name, str(registry / "CURRENT")], check=True)
        wait_for(lambda: scorer.metric("seqscore_model_info", f'version="{fresh.name}"') == 1, timeout=60,
                 what="new model serving")
        send_events(settings, values[10:20])
        later = read_topic(settings.kafka_bootstrap, settings.topics.next_actions, 20)
        versions = [json.loads(m.value())["model_version"] for m in later]
        assert versions.count(fresh.name) == 10
        assert scorer.get("/readyz")[0] == 200


def test_a_version_answering_nan_is_refused_while_serving_and_the_old_one_keeps_serving(
    test_env: dict[str, str], tiny_registry: Path, tmp_path: Path
) -> None:
    from training.registry import Registry

    registry, current = own_registry(tiny_registry, tmp_path)
    settings = load_settings()
    values = [v for _, v in event_values(simulate(10, seed=36))][:10]

    with running(test_env | {"SEQSCORE_MODEL__POLL_SECONDS": "0.5"}, registry, tmp_path / "serve.log") as scorer:
        scorer.wait_ready()
        # loads in Keras safe mode and warms up without an error: only its outputs give it away
        nan = poisoned_version(registry / current, registry / "99990103T000000Z")
        Registry(registry).promote(nan.name, reason="test: NaN weights")
        wait_for(lambda: scorer.metric("seqscore_model_reloads_total", 'result="refused"') >= 1, timeout=60,
                 what="NaN model refused")
        log = (tmp_path / "serve.log").read_text()
        assert f"model {nan.name} refused, keeping the serving model" in log and "non-finite output" in log
        send_events(settings, values)
        outputs = read_topic(settings.kafka_bootstrap, settings.topics.next_actions, len(values))
        assert len(outputs) == len(values)
        assert {json.loads(m.value())["model_version"] for m in outputs} == {current}
        assert scorer.metric("seqscore_model_info", f'version="{current}"') == 1
        assert scorer.metric("seqscore_model_info", f'version="{nan.name}"') == 0
        assert scorer.get("/readyz")[0] == 200


def test_profiles_are_joined_and_erasure_removes_everything(
    test_env: dict[str, str], tiny_registry: Path, tmp_path: Path
) -> None:
    settings = load_settings()
    client = redis.Redis.from_url(settings.redis_url)
    prefix = settings.state.key_prefix
    history = simulate(5, seed=35)
    values = [v for _, v in event_values(history)]
    customers = sorted({orjson.loads(v)["customer_id"] for v in values})
    keep, forget, tombstoned = customers[0], customers[1], customers[2]
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for customer in (keep, forget, tombstoned):
        profile = {"customer_id": customer, "gender": "F", "age_group": "25-34"}
        producer.produce(settings.topics.profiles, key=customer, value=orjson.dumps(profile))
    assert producer.flush(30) == 0

    with running(test_env, tiny_registry, tmp_path / "serve.log") as scorer:
        scorer.wait_ready()
        wait_for(lambda: scorer.metric("seqscore_profile_updates_total", 'kind="updated"') >= 3, timeout=60,
                 what="profiles applied")
        assert client.get(f"{prefix}:{{c:{keep}}}:p") == bytes([0, 1])
        for value in values:
            producer.produce(settings.topics.events, key=orjson.loads(value)["customer_id"], value=value)
        assert producer.flush(30) == 0
        read_topic(settings.kafka_bootstrap, settings.topics.next_actions, len(values))
        assert client.exists(f"{prefix}:{{c:{forget}}}:w", f"{prefix}:{{c:{tombstoned}}}:w") == 2

        # the CLI: removes the keys at once and publishes a tombstone
        erase = subprocess.run([sys.executable, "-m", "consumer.cli", "erase", "--customer", forget],
                               env=scorer.env, capture_output=True, text=True, timeout=120)
        assert erase.returncode == 0, erase.stderr
        assert "2 Redis keys" in erase.stdout
        # a tombstone produced by another system: the scorer erases
        producer.produce(settings.topics.profiles, key=tombstoned, value=None)
        assert producer.flush(30) == 0
        wait_for(lambda: scorer.metric("seqscore_profile_updates_total", 'kind="erased"') >= 2, timeout=60,
                 what="tombstones applied")
        store = StateStore(client, prefix, 50, 0, 3600)
        for customer in (forget, tombstoned):
            # what is left is a tombstone: no records, no prediction, no profile (tests/integration/test_erasure.py)
            assert client.exists(f"{prefix}:{{c:{customer}}}:p") == 0
            assert (store.raw_value(customer) or b"")[STORED_HEADER_BYTES:] == b""
        assert store.erased([forget, tombstoned, keep]) == {forget, tombstoned}
        assert client.exists(f"{prefix}:{{c:{keep}}}:w", f"{prefix}:{{c:{keep}}}:p") == 2
        tombstones = [m for m in read_topic(settings.kafka_bootstrap, settings.topics.profiles, 5)
                      if m.value() is None]
        assert sorted(m.key().decode() for m in tombstones) == sorted([forget, tombstoned])


def test_wrong_redis_credentials_stop_serve_at_once_with_one_line_without_the_password(
    test_env: dict[str, str], tiny_registry: Path, tmp_path: Path
) -> None:
    env = os.environ | test_env | {"SEQSCORE_REGISTRY": str(tiny_registry), "TF_CPP_MIN_LOG_LEVEL": "3",
                                   "SEQSCORE_REDIS_URL": "redis://nobody:hunter2-secret@127.0.0.1:6379/0"}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "consumer.cli", "serve"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1 and time.monotonic() - started < 60
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("seqscore serve: Redis at") and "refused the credentials" in last, done.stderr[-2000:]
    assert "hunter2-secret" not in done.stderr + done.stdout
