"""Creates the project's topics idempotently (run by `seqscore topics` and before `serve` subscribes)."""

from __future__ import annotations

import logging

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

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


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> list[str]:
    """Create every missing project topic; return the names created now."""
    admin = AdminClient(settings.kafka_config())
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except KafkaException as exc:
        raise KafkaUnavailable(f"Kafka at {settings.kafka_bootstrap} did not answer: {exc}") from exc
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
