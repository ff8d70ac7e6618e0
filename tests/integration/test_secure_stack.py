"""The stack in secure mode (`deploy/stack up --secure`: Kafka SASL_SSL with SCRAM-SHA-512,
Redis TLS-only with an ACL user) and the real scorer against it, end to end, configured only
through the env file the stack writes. Its own ports and run directory: the default stack
(9092/9093/6379) is never touched. Stopped at the end, also when a test fails."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import redis
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient

from consumer.bench.harness import free_port, predictions_by_event, read_topic, running, wait_for
from consumer.bench.loadgen import StreamPlan, event_values, stream
from consumer.settings import load_settings
from state.store import StateStore
from tests.conftest import REPO, names_of, read_env_file
from training.simulate import simulate

pytestmark = pytest.mark.slow

STACK = str(REPO / "deploy" / "stack")
TOOLS = {"java": "openjdk-17-jre-headless", "redis-server": "redis-server", "redis-cli": "redis-tools",
         "openssl": "openssl"}


@dataclass
class SecureStack:
    run_dir: Path
    stack_env: dict[str, str]  # deploy/stack's own variables: this stack's ports and directory
    redis_port: int
    up: subprocess.CompletedProcess[str]  # what `deploy/stack up --secure` printed
    env: dict[str, str]  # the SEQSCORE_* settings of its secure.env

    def passwords(self) -> list[str]:
        found = [p.read_text().strip() for p in sorted((self.run_dir / "secrets").iterdir())]
        assert len(found) == 3 and all(len(p) >= 32 for p in found)
        return found

    def stack(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([STACK, *args], capture_output=True, text=True, timeout=240, env=self.stack_env)


@pytest.fixture(scope="module")
def secure_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureStack]:
    missing = [f"{tool} ({package})" for tool, package in TOOLS.items() if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"the secure stack needs {', '.join(missing)}: run deploy/install-deps (as root) to install them")
    run_dir = tmp_path_factory.mktemp("secure-stack")
    ports = {"SEQSCORE_STACK_KAFKA_PORT": free_port(), "SEQSCORE_STACK_CONTROLLER_PORT": free_port(),
             "SEQSCORE_STACK_REDIS_PORT": free_port()}
    assert not {9092, 9093, 6379} & set(ports.values()), "never the default stack's ports"
    stack_env = dict(os.environ) | {k: str(v) for k, v in ports.items()} | {"SEQSCORE_STACK_DIR": str(run_dir)}
    stack = SecureStack(run_dir, stack_env, ports["SEQSCORE_STACK_REDIS_PORT"],
                        subprocess.CompletedProcess([], 1, "", ""), {})
    try:
        stack.up = stack.stack("up", "--secure")
        assert stack.up.returncode == 0, (
            f"deploy/stack up --secure failed (deploy/install-deps installs what it needs):\n{stack.up.stderr}"
        )
        stack.env = read_env_file(run_dir / "secure.env")
        yield stack
    finally:
        stack.stack("down")


@pytest.fixture
def scorer_env(secure_stack: SecureStack, unique: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The stack's env file plus this test's topics and key prefix, also in os.environ."""
    env = dict(secure_stack.env)
    env |= names_of(unique, group=f"secure-{unique}", prefix=f"s{unique}")
    for key in [k for k in os.environ if k.startswith("SEQSCORE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SEQSCORE_")} | {"TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "consumer.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=base | env)


def test_up_secure_says_where_the_settings_are_and_never_prints_a_password(secure_stack: SecureStack) -> None:
    up, run_dir = secure_stack.up, secure_stack.run_dir
    printed = up.stdout + up.stderr
    for secret in secure_stack.passwords():
        assert secret not in printed
    assert f"{run_dir}/secure.env" in up.stdout and "SEQSCORE_KAFKA__SASL_PASSWORD=<" in up.stdout
    assert "SEQSCORE_KAFKA__SECURITY_PROTOCOL=SASL_SSL" in up.stdout and "rediss://seqscore:<password>@" in up.stdout
    for private in [run_dir / "secure.env", run_dir / "kafka" / "server.properties", run_dir / "tls" / "server.key",
                    *(run_dir / "secrets").iterdir()]:
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    assert not (run_dir / "tls" / "ca.key").exists(), "the CA key is not kept"
    redis_conf = (run_dir / "redis" / "redis.conf").read_text()
    assert "user default off" in redis_conf and "port 0" in redis_conf
    assert all(secret not in redis_conf for secret in secure_stack.passwords()), "Redis keeps only the hash"

    status = secure_stack.stack("status")
    assert status.returncode == 0 and "mode   secure" in status.stdout and "kafka  running" in status.stdout
    plain = secure_stack.stack("up")  # this directory is secure: a plaintext start is refused
    assert plain.returncode != 0 and "--secure" in plain.stderr and plain.stderr.count("\n") == 1


def test_scorer_serves_end_to_end_over_sasl_ssl_and_tls(
    secure_stack: SecureStack, scorer_env: dict[str, str], tiny_registry: Path, tmp_path: Path
) -> None:
    settings = load_settings()
    assert settings.kafka["security.protocol"] == "SASL_SSL" and settings.redis_url.startswith("rediss://")
    topics = cli("topics", env=scorer_env)
    assert topics.returncode == 0, topics.stderr
    history = simulate(40, seed=41)
    log = tmp_path / "serve.log"
    with running(scorer_env, tiny_registry, log) as scorer:
        scorer.wait_ready()
        report = stream(history, settings.topics.events, settings.kafka_config(), StreamPlan(seed=5), progress=False)
        assert report.sent == history.n_events
        # a profile through the profile follower's own consumer
        customer = str(history.customer_ids[history.event_customer[0]])
        producer = Producer(settings.kafka_config())
        producer.produce(settings.topics.profiles, key=customer.encode(),
                         value=orjson.dumps({"customer_id": customer, "gender": "F", "age_group": "25-34"}))
        assert producer.flush(30) == 0

        outputs = read_topic(settings.kafka_config(), settings.topics.next_actions, history.n_events, timeout=60)
        by_event = predictions_by_event(outputs)
        assert set(by_event) == set(history.event_ids()), "every event has its next action"

        client = redis.Redis.from_url(settings.redis_url, socket_timeout=10)
        prefix = settings.state.key_prefix
        customers = {key.decode() for key, _ in event_values(history)}
        windows = {k.decode() for k in client.scan_iter(f"{prefix}:{{c:*}}:w", count=1000)}
        assert windows == {f"{prefix}:{{c:{c}}}:w" for c in customers}, "state in Redis for every customer"
        wait_for(lambda: client.exists(f"{prefix}:{{c:{customer}}}:p"), timeout=30, what="the profile in Redis")

        # a CLI command over both: erase leaves only the tombstone window in Redis (see
        # docs/serving.md "Erasure") and sends the profile tombstone through Kafka
        erase = cli("erase", "--customer", customer, env=scorer_env)
        assert erase.returncode == 0, erase.stderr
        store = StateStore(client, prefix, settings.state.window, 3600, 3600)  # only reads the header
        assert store.erased([customer]) == {customer}
        assert not client.exists(f"{prefix}:{{c:{customer}}}:p")
        assert scorer.stop(signal.SIGTERM) == 0
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    for secret in secure_stack.passwords():
        assert secret not in text + topics.stdout + topics.stderr + erase.stdout + erase.stderr


def test_plaintext_clients_are_refused(secure_stack: SecureStack, scorer_env: dict[str, str]) -> None:
    settings = load_settings()
    quiet = {"log_level": 0}  # the refusals would fill the output with librdkafka's retries
    # Kafka: the configured client gets metadata; plaintext, and TLS without SASL, do not
    AdminClient(settings.kafka_config(**quiet)).list_topics(timeout=10)
    for config in ({"bootstrap.servers": settings.kafka_bootstrap},
                   {"bootstrap.servers": settings.kafka_bootstrap, "security.protocol": "SSL",
                    "ssl.ca.location": settings.kafka["ssl.ca.location"]}):
        with pytest.raises(KafkaException, match=r"transport failure|timed out"):
            AdminClient({**config, **quiet}).list_topics(timeout=3)
    # Redis: TLS only (no plaintext port), and no access without the ACL user
    assert redis.Redis.from_url(settings.redis_url, socket_timeout=5).ping()
    port = secure_stack.redis_port
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=5).ping()
    ca = settings.kafka["ssl.ca.location"]
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}", socket_timeout=5).ping()


def test_a_wrong_password_is_one_clear_line_without_it(
    secure_stack: SecureStack, scorer_env: dict[str, str], tiny_registry: Path
) -> None:
    wrong = "wrong-password-0123456789"
    real = secure_stack.passwords()

    kafka = cli("topics", env=scorer_env | {"SEQSCORE_KAFKA__SASL_PASSWORD": wrong}, timeout=60)
    assert kafka.returncode == 1
    assert kafka.stderr.count("\n") == 1 and "Traceback" not in kafka.stderr, kafka.stderr
    assert "refused the connection" in kafka.stderr and "SASL authentication" in kafka.stderr

    url = scorer_env["SEQSCORE_REDIS_URL"]
    bad_url = url.replace(url.split("@")[0].rsplit(":", 1)[1], wrong)
    assert bad_url != url
    red = cli("segments", env=scorer_env | {"SEQSCORE_REDIS_URL": bad_url, "SEQSCORE_REGISTRY": str(tiny_registry)})
    assert red.returncode == 1
    assert red.stderr.count("\n") == 1 and "Traceback" not in red.stderr, red.stderr
    assert "refused the credentials" in red.stderr and "rediss://seqscore:***@" in red.stderr

    # the scorer itself stops at its first Kafka call, with the same line last
    serve = cli("serve", env=scorer_env | {"SEQSCORE_KAFKA__SASL_PASSWORD": wrong,
                                           "SEQSCORE_REGISTRY": str(tiny_registry), "SEQSCORE_METRICS_PORT": "0"})
    assert serve.returncode == 1
    assert "refused the connection" in serve.stderr.strip().splitlines()[-1], serve.stderr[-2000:]
    for secret in [wrong, *real]:
        assert secret not in kafka.stderr + red.stderr + serve.stdout + serve.stderr
