"""Creates the project's topics idempotently (run by `seqscore topics` and before `serve` subscribes)."""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from consumer.serve.emit import PRODUCER_MAX_MESSAGE_BYTES
from consumer.settings import Settings
from state.errors import KafkaUnavailable

log = logging.getLogger(__name__)


def topic_specs(settings: Settings) -> list[NewTopic]:
    t = settings.topics
    rf = t.replication_factor
    return [
        NewTopic(t.events, num_partitions=t.events_partitions, replication_factor=rf),
        NewTopic(t.dlq, num_partitions=t.events_partitions, replication_factor=rf),
        NewTopic(t.next_actions, num_partitions=t.output_partitions, replication_factor=rf),
        NewTopic(t.churn_alerts, num_partitions=t.output_partitions, replication_factor=rf),
        NewTopic(
            t.profiles, num_partitions=t.events_partitions, replication_factor=rf, config={"cleanup.policy": "compact"}
        ),
    ]


# Errors that no retry cures: wrong SASL user or password, a certificate that does not verify.
REFUSALS = (KafkaError._AUTHENTICATION, KafkaError._SSL, KafkaError.SASL_AUTHENTICATION_FAILED)


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> list[str]:
    """Create every missing project topic; return the names created now. Wrong credentials or
    TLS settings are one clear error at once (this is the first Kafka call of `serve`)."""
    admin, existing = _admin_and_topics(settings, timeout_s)
    missing = [spec for spec in topic_specs(settings) if spec.topic not in existing]
    if not missing:
        return []
    created = []
    for name, future in admin.create_topics(missing, request_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # another instance won the race
                raise KafkaUnavailable(f"creating topic {name} failed: {exc}") from exc
    log.info("created topics: %s", ", ".join(created))
    return created


def dead_letter_limit(settings: Settings, timeout_s: float = 10.0) -> int:
    """The most a dead letter may take: the DLQ topic's max.message.bytes (which counts the
    whole record batch) and the producer's message.max.bytes, the smaller. A broker that does
    not say leaves the producer's limit."""
    producer_limit = int(settings.kafka.get("message.max.bytes", PRODUCER_MAX_MESSAGE_BYTES))
    admin = AdminClient(settings.kafka_config(log_level=2))
    resource = ConfigResource(ConfigResource.Type.TOPIC, settings.topics.dlq)
    try:
        entries = admin.describe_configs([resource], request_timeout=timeout_s)[resource].result(timeout=timeout_s)
        topic_limit = int(entries["max.message.bytes"].value)
    except (KafkaException, KeyError, ValueError, TypeError) as exc:
        log.warning("the DLQ topic's max.message.bytes is unknown (%s): dead letters are cut to %d bytes",
                    exc, producer_limit)
        return producer_limit
    return min(producer_limit, topic_limit)


def topic_names(settings: Settings, timeout_s: float = 30.0) -> set[str]:
    """The broker's topics: a check that Kafka answers with these settings, as `serve` makes it."""
    return _admin_and_topics(settings, timeout_s)[1]


def _admin_and_topics(settings: Settings, timeout_s: float) -> tuple[AdminClient, set[str]]:
    errors: list[KafkaError] = []
    # the client's own log lines would repeat each failed attempt; errors come back through
    # error_cb and are raised below, one line, with what librdkafka said
    admin = AdminClient(settings.kafka_config(error_cb=errors.append, log_level=2))
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return admin, set(admin.list_topics(timeout=max(0.1, min(2.0, deadline - time.monotonic()))).topics)
        except KafkaException as exc:
            admin.poll(0)  # serves error_cb
            refused = next((e for e in errors if e.code() in REFUSALS), None)
            if refused is not None:
                raise KafkaUnavailable(
                    f"Kafka at {settings.kafka_bootstrap} refused the connection: {refused.str()} "
                    "(check SEQSCORE_KAFKA__SECURITY_PROTOCOL, __SASL_USERNAME, __SASL_PASSWORD, __SSL_CA_LOCATION)"
                ) from None
            if time.monotonic() >= deadline:
                last = f" (last error: {errors[-1].str()})" if errors else ""
                raise KafkaUnavailable(
                    f"Kafka at {settings.kafka_bootstrap} did not answer within {timeout_s:g}s: {exc}{last}"
                ) from exc
