"""Secrets in the settings are never printed: `seqscore config`, invalid-setting errors, Redis
errors of any command, and repr() all mask them (no servers; a wrong password against the
real secure stack: tests/integration/test_secure_stack.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from consumer.settings import load_settings, mask_url

KAFKA_SECRETS = {
    "SEQSCORE_KAFKA__SASL_PASSWORD": "kafka-sasl-pw-1",
    "SEQSCORE_KAFKA__SSL_KEY_PASSWORD": "ssl-key-pw-2",
    "SEQSCORE_KAFKA__SSL_KEYSTORE_PASSWORD": "keystore-pw-3",
    "SEQSCORE_KAFKA__SASL_OAUTHBEARER_CLIENT_SECRET": "oauth-secret-4",
    "SEQSCORE_KAFKA__SSL_KEY_PEM": "-----BEGIN PRIVATE KEY-----abc",
}
REDIS_PASSWORD = "redis-pw/with+odd@chars"
REDIS_URL = "rediss://scorer:redis-pw%2Fwith%2Bodd%40chars@127.0.0.1:{port}/0?ssl_password=keyfile-pw-5"
PLAIN_REDIS_URL = "redis://scorer:redis-pw%2Fwith%2Bodd%40chars@127.0.0.1:{port}/0"
ALL_SECRETS = [*KAFKA_SECRETS.values(), REDIS_PASSWORD, "redis-pw%2Fwith%2Bodd%40chars", "keyfile-pw-5"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("SEQSCORE_"):
            monkeypatch.delenv(key)


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SEQSCORE_")}
    return subprocess.run([sys.executable, "-m", "consumer.cli", *args], capture_output=True, text=True,
                          timeout=60, env=base | env)


def assert_no_secret(text: str) -> None:
    for secret in ALL_SECRETS:
        assert secret not in text, f"{secret!r} printed in: {text}"


def test_config_masks_every_secret_option_and_the_redis_password() -> None:
    result = cli("config", env=KAFKA_SECRETS | {"SEQSCORE_REDIS_URL": REDIS_URL.format(port=6380),
                                                 "SEQSCORE_KAFKA__SASL_USERNAME": "scorer"})
    assert result.returncode == 0, result.stderr
    assert_no_secret(result.stdout + result.stderr)
    data = json.loads(result.stdout)
    for option in ("sasl.password", "ssl.key.password", "ssl.keystore.password", "sasl.oauthbearer.client.secret",
                   "ssl.key.pem"):
        assert data["kafka"][option] == "***", option
    assert data["kafka"]["sasl.username"] == "scorer"
    assert data["redis_url"] == "rediss://scorer:***@127.0.0.1:6380/0?ssl_password=***"


def test_repr_and_redact_never_show_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in KAFKA_SECRETS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SEQSCORE_REDIS_URL", REDIS_URL.format(port=6380))
    settings = load_settings()
    assert_no_secret(repr(settings) + str(settings))
    message = f"failed with {settings.kafka_config()} at {settings.redis_url}; password was {REDIS_PASSWORD}"
    assert_no_secret(settings.redact(message))
    assert "127.0.0.1:6380" in settings.redact(message)
    assert mask_url("see redis://:pw@h:1/0 and rediss://u:pw@h/0") == "see redis://:***@h:1/0 and rediss://u:***@h/0"


def test_an_invalid_setting_holding_a_password_is_reported_without_it() -> None:
    result = cli("config", env={"SEQSCORE_REDIS_URL": "http://scorer:topsecret-99@127.0.0.1:6379/0"})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "SEQSCORE_REDIS_URL" in result.stderr
    assert "topsecret-99" not in result.stderr


@pytest.mark.parametrize("url", [
    "seqscore:hunter2-77@redis:6379/0",  # no scheme
    "redis//seqscore:hunter2-77@redis:6379/0",
    "http:/seqscore:hunter2-77@redis:6379/0",
    "redis://seqscore:hunter2-77/x@redis:6379/0",  # unencoded / ? # in the password
    "redis://seqscore:hunter2-77?x@redis:6379/0",
    "redis://seqscore:hunter2-77#x@redis:6379/0",
    "redis://:hunter2-77/x@redis:6379/0",
])
@pytest.mark.parametrize("command", [("config",), ("segments",)])
def test_a_malformed_redis_url_is_one_line_without_any_part_of_the_password(url: str, command: tuple[str]) -> None:
    result = cli(*command, env={"SEQSCORE_REDIS_URL": url})
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "SEQSCORE_REDIS_URL" in result.stderr, result.stderr
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_the_segments_token_is_masked_and_a_short_one_refused_without_echo() -> None:
    shown = cli("config", env={"SEQSCORE_SEGMENTS_TOKEN": "tok-0123456789-abcdef"})
    assert shown.returncode == 0, shown.stderr
    assert "tok-0123456789" not in shown.stdout and json.loads(shown.stdout)["segments_token"] == "***"
    short = cli("config", env={"SEQSCORE_SEGMENTS_TOKEN": "tok-short"})
    assert short.returncode == 2 and "SEQSCORE_SEGMENTS_TOKEN" in short.stderr and "tok-short" not in short.stderr


@pytest.fixture
def refusing_redis() -> Iterator[int]:
    """A TCP stub that answers every command as Redis does a wrong password (WRONGPASS); the
    real server's answer is checked in tests/integration/test_secure_stack.py."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                while conn.recv(65536):
                    conn.sendall(b"-WRONGPASS invalid username-password pair or user is disabled.\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(5)
    server.close()


def test_a_wrong_redis_password_is_one_line_without_the_password(refusing_redis: int, tmp_path: object) -> None:
    url = PLAIN_REDIS_URL.format(port=refusing_redis)
    result = cli("segments", env={"SEQSCORE_REDIS_URL": url, "SEQSCORE_REGISTRY": str(tmp_path)})
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert "refused the credentials" in result.stderr and "SEQSCORE_REDIS_URL" in result.stderr
    assert f"redis://scorer:***@127.0.0.1:{refusing_redis}/0" in result.stderr
    assert_no_secret(result.stdout + result.stderr)


def test_an_unreachable_redis_is_one_line_without_the_password(tmp_path: object) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = PLAIN_REDIS_URL.format(port=port)
    result = cli("erase", "--customer", "c1", env={"SEQSCORE_REDIS_URL": url})
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and f"127.0.0.1:{port}" in result.stderr, result.stderr
    assert_no_secret(result.stdout + result.stderr)
