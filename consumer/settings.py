"""One settings tree, read once at start-up from SEQSCORE_* variables and an optional file.

Top-level names are the operators' contract (SEQSCORE_KAFKA_BOOTSTRAP, SEQSCORE_REDIS_URL,
...). Nested groups use `__` (SEQSCORE_BATCH__MAX_BATCH); SEQSCORE_KAFKA__<option> is
reserved for librdkafka passthrough, `_` in the option meaning `.`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from state.errors import ConfigError
from state.events import DEFAULT_MAX_EVENT_BYTES
from training.defaults import DEFAULT_WINDOW

CONFIG_FILE_ENV = "SEQSCORE_CONFIG"
# A librdkafka option whose name holds one of these is a secret: sasl.password,
# ssl.key.password, ssl.keystore.password, ssl.key.pem, sasl.oauthbearer.client.secret, ...
_SECRET_WORDS = ("password", "secret", "token", "key", "jaas", "credential")
MASK = "***"
# user:password@ in any URL (redis://, rediss://, ...), and secret-named query parameters
# (redis-py passes ?password=, ?ssl_password= on to the connection)
_URL_PASSWORD = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]*@")
_QUERY_SECRET = re.compile(r"(?i)([?&][a-z_]*(?:password|secret|token)=)[^&#\s]*")
_MIN_REDACTED_CHARS = 4  # shorter "secrets" would blank out ordinary words in messages


def is_secret_name(name: str) -> bool:
    """Whether a setting or librdkafka option of this name holds a secret."""
    return any(word in name.lower() for word in _SECRET_WORDS)


def mask_url(text: str) -> str:
    """`text` with every URL password and secret query parameter replaced by '***'."""
    return _QUERY_SECRET.sub(rf"\1{MASK}", _URL_PASSWORD.sub(rf"\1{MASK}@", text))


# The scorer's consumer, tuned on the bench machine; each can be set as SEQSCORE_KAFKA__<option>.
SCORING_CONSUMER_TUNING: dict[str, str] = {
    # a killed member's partitions move after 10 s, not librdkafka's 45 s
    "session.timeout.ms": "10000",
    # a member learns of a rebalance at its next heartbeat, and a cooperative one takes two:
    # at librdkafka's 3 s a joining worker waited 6 s for its partitions
    "heartbeat.interval.ms": "1000",
    # a fetch answered as soon as any record is there (librdkafka's 1 byte) brings a few records,
    # and batches stay small; up to 10 ms for 64 KB makes fewer, bigger batches (fewer state
    # round trips and produce requests): p99 286-400 ms against 481-730 at 8,900 events/s
    "fetch.min.bytes": "65536",
    "fetch.wait.max.ms": "10",
}

class TopicSettings(BaseModel):
    events: str = "activity-events"
    dlq: str = "activity-events.dlq"
    next_actions: str = "next-actions"
    churn_alerts: str = "churn-alerts"
    profiles: str = "customer-profiles"
    events_partitions: int = Field(default=12, ge=1, le=10_000)
    output_partitions: int = Field(default=12, ge=1, le=10_000)
    replication_factor: int = Field(default=1, ge=1, le=16)

    def names(self) -> list[str]:
        return [self.events, self.dlq, self.next_actions, self.churn_alerts, self.profiles]


class BatchSettings(BaseModel):
    max_batch: int = Field(default=1024, ge=1, le=65_536)
    max_wait_ms: int = Field(default=50, ge=0, le=60_000, description="The longest a poll waits for min_batch records.")
    min_batch: int = Field(
        default=1,
        ge=1,
        le=65_536,
        description="Records a poll waits for (up to max_wait_ms) before it takes what is ready; "
        "raise it to trade latency for bigger batches at moderate rates.",
    )


def cluster_seed_urls(url: str) -> list[str]:
    """`redis+cluster://[user:password@]host:port[,host:port...][/db][?query]` (or rediss+):
    one plain URL per seed node, as redis-py's clients take them."""
    scheme, _, rest = url.partition("+cluster://")
    authority, slash, path = rest.partition("/")
    if not slash:
        authority, question, query = authority.partition("?")
        path = question + query
    else:
        path = "/" + path
    credentials, at, hosts = authority.rpartition("@")
    return [f"{scheme}://{credentials}{at}{host}{path}" for host in hosts.split(",")]


class StateSettings(BaseModel):
    key_prefix: str = Field(default="seqscore", min_length=1, max_length=64)
    window: int = Field(default=DEFAULT_WINDOW, ge=1, le=1024, description="Raw events kept per customer.")
    retention_days: int = Field(default=400, ge=1, le=36_500)
    lateness_seconds: int = Field(default=7 * 86_400, ge=0)
    max_future_seconds: int = Field(
        default=86_400,
        ge=0,
        description="An event dated more than this after its Kafka record's timestamp (or the wall clock, "
        "if earlier) is dead-lettered as ts_out_of_range: one device with a wrong clock must not move its "
        "partition's event-time clock, which fires every silence up to that date.",
    )
    confirm_replicas: int = Field(
        default=1,
        ge=0,
        le=5,
        description="Redis Cluster only: every state write waits (WAIT) for this many replicas before the batch's "
        "offsets are committed, so that a failover does not lose state whose events are committed. A master "
        "with fewer replicas connected writes unconfirmed, counted in seqscore_state_unconfirmed_writes_total.",
    )
    confirm_timeout_ms: int = Field(default=1000, ge=1, le=60_000, description="How long a write waits for them.")


class ModelSettings(BaseModel):
    jit_compile: bool = Field(default=False, description="XLA-compile the inference function.")
    threads: int = Field(
        default=1,
        ge=0,
        le=1024,
        description="TensorFlow's intra- and inter-op threads for inference; 0: its default, one per core. "
        "One is as fast on serving batches and leaves the other cores to Kafka and Redis; scale out by "
        "partitions and instances.",
    )
    poll_seconds: float = Field(default=2.0, gt=0, le=3600, description="How often CURRENT is checked.")


class OutputSettings(BaseModel):
    top_k: int = Field(default=3, ge=1, le=64)
    steps: int = Field(default=0, ge=0, le=16, description="Multi-step forecast length; 0 = off.")
    churn_alert_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    churn_recovery_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    churn_cooldown_seconds: int = Field(default=7 * 86_400, ge=0)
    next_action_min_probability: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Emit a next action only when its top-1 probability reaches this."
    )
    next_action_min_interval_seconds: int = Field(
        default=0, ge=0, description="Frequency cap: at most one next action per customer per interval (event time)."
    )
    next_action_quiet_after_alert_seconds: int = Field(
        default=0, ge=0, description="No next actions for a customer in alert, this long after the alert."
    )


class SilenceSettings(BaseModel):
    enabled: bool = Field(default=True, description="Score customers whose silence crosses a mark.")
    marks_days: list[int] | None = Field(
        default=None, description="Days of silence at which to score; default: training's marks within the horizon."
    )
    idle_after_seconds: float = Field(
        default=60.0, gt=0, description="A partition without events this long advances its clock by wall time."
    )
    max_due: int = Field(
        default=20_000,
        ge=1,
        le=1_000_000,
        description="The most silent customers one state call hands out per partition and mark; more come in "
        "pages (a clock jump after a long quiet spell), at the cost of more calls.",
    )

    @field_validator("marks_days")
    @classmethod
    def _marks_in_range(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or any(not 1 <= d <= 3650 for d in value)):
            raise ValueError("must be a non-empty list of days between 1 and 3650")
        return value


class Settings(BaseSettings):
    """Effective configuration; see `seqscore config`."""

    model_config = SettingsConfigDict(
        env_prefix="SEQSCORE_",
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="forbid",
    )

    kafka_bootstrap: str = Field(default="127.0.0.1:9092", min_length=1)
    redis_url: str = Field(default="redis://127.0.0.1:6379/0")
    registry: Path = Path("./models")
    group_id: str = Field(default="seqscore", min_length=1)
    processing_guarantee: Literal["at_least_once", "exactly_once"] = Field(
        default="at_least_once",
        description="exactly_once: outputs, dead letters and consumed offsets in one Kafka transaction per batch.",
    )
    instance_id: str | None = Field(
        default=None,
        min_length=1,
        description="Stable across restarts of one instance (exactly_once: its transactional id); "
        "default host:metrics_port.",
    )
    transaction_timeout_ms: int = Field(
        default=60_000,
        ge=1_000,
        le=900_000,
        description="exactly_once: how long a transaction may stay open. A member that dies mid-batch holds its "
        "partitions (and read_committed readers) this long unless its instance restarts under the same id; "
        "outputs wait this long for a broker before the batch is sent again.",
    )
    workers: int = Field(
        default=1,
        ge=0,
        le=64,
        description="Scoring loops of this instance, each a process with its own consumer in the group "
        "(0: one per usable core, at most one per events partition).",
    )
    metrics_port: int = Field(default=9464, ge=0, le=65_535)
    metrics_host: str = "127.0.0.1"
    segments_token: str | None = Field(
        default=None,
        min_length=16,
        description="When set, /segments and /segments.csv (every customer's risk and last activities) "
        "answer only requests with `Authorization: Bearer TOKEN` or Basic auth with TOKEN as the password. "
        "Set it whenever SEQSCORE_METRICS_HOST is not 127.0.0.1.",
    )
    max_event_bytes: int = Field(default=DEFAULT_MAX_EVENT_BYTES, ge=256, le=1_048_576)
    kafka: dict[str, str] = Field(default_factory=dict, description="librdkafka passthrough options.")
    topics: TopicSettings = Field(default_factory=TopicSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    state: StateSettings = Field(default_factory=StateSettings)
    outputs: OutputSettings = Field(default_factory=OutputSettings)
    silence: SilenceSettings = Field(default_factory=SilenceSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        from redis.connection import parse_url

        if not re.match(r"^(redis|rediss|unix|redis\+cluster|rediss\+cluster)://", value):
            raise ValueError("must start with redis://, rediss://, unix://, redis+cluster:// or rediss+cluster://")
        try:
            for url in cluster_seed_urls(value) if "+cluster://" in value else [value]:
                parse_url(url)  # what redis-py's from_url does, so that no command fails later
        except ValueError:
            # redis-py's message quotes a piece of the URL, which may be part of the password
            raise ValueError(
                "is not a valid Redis URL (percent-encode '/', '?', '#' and '@' in the user and password)"
            ) from None
        return value

    @field_validator("segments_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: Any) -> Any:
        return None if value == "" else value  # compose passes an unset variable as ""

    @field_validator("kafka", mode="before")
    @classmethod
    def _librdkafka_names(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k).lower().replace("_", "."): str(v) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> Settings:
        alert, recovery = self.outputs.churn_alert_threshold, self.outputs.churn_recovery_threshold
        if alert is not None and recovery is not None and recovery > alert:
            raise ValueError("outputs.churn_recovery_threshold must not exceed outputs.churn_alert_threshold")
        return self

    @model_validator(mode="after")
    def _workers_have_partitions(self) -> Settings:
        if self.workers > self.topics.events_partitions:
            raise ValueError(
                f"SEQSCORE_WORKERS ({self.workers}) must not exceed SEQSCORE_TOPICS__EVENTS_PARTITIONS "
                f"({self.topics.events_partitions}): a worker without a partition would never be ready"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = os.environ.get(CONFIG_FILE_ENV)
        if path:
            if path.endswith(".json"):
                sources.append(JsonConfigSettingsSource(settings_cls, json_file=path))
            else:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @property
    def exactly_once(self) -> bool:
        return self.processing_guarantee == "exactly_once"

    def transactional_id(self) -> str:
        import socket

        return f"{self.group_id}-{self.instance_id or f'{socket.gethostname()}:{self.metrics_port}'}"

    def kafka_config(self, **extra: Any) -> dict[str, Any]:
        """librdkafka configuration: bootstrap + passthrough + the caller's own keys."""
        return {"bootstrap.servers": self.kafka_bootstrap, **self.kafka, **extra}

    def scoring_consumer_config(self) -> dict[str, Any]:
        """The scorer's consumer: what the guarantees need (fixed), then the tuned values,
        which `SEQSCORE_KAFKA__<option>` overrides (see docs/performance.md for the runs)."""
        return self.kafka_config(
            **{
                **SCORING_CONSUMER_TUNING,
                **{k: v for k, v in self.kafka.items() if k in SCORING_CONSUMER_TUNING},
                "group.id": self.group_id,
                # exactly-once: offsets are committed in each batch's transaction instead
                "enable.auto.commit": not self.exactly_once,
                "isolation.level": "read_committed",
                "auto.commit.interval.ms": 1000,
                "enable.auto.offset.store": False,  # stored by the loop once a batch's state is
                "auto.offset.reset": "earliest",
                "partition.assignment.strategy": "cooperative-sticky",
                "enable.partition.eof": False,
            }
        )

    def masked(self) -> dict[str, Any]:
        """The settings as plain data with every secret replaced by '***'."""
        data = self.model_dump(mode="json")
        data["redis_url"] = mask_url(data["redis_url"])
        for name, value in data.items():
            if is_secret_name(name) and value is not None:
                data[name] = MASK
        data["kafka"] = {k: (MASK if is_secret_name(k) else v) for k, v in data["kafka"].items()}
        return data

    def secret_values(self) -> list[str]:
        """Every secret these settings hold (librdkafka secrets, the Redis URL's password and
        secret query parameters), raw and URL-decoded, for scrubbing messages."""
        found = [v for k, v in self.kafka.items() if is_secret_name(k)]
        found += [self.segments_token] if self.segments_token else []
        found += [m.group(0)[len(m.group(1)) : -1] for m in _URL_PASSWORD.finditer(self.redis_url)]
        found += [m.group(0)[len(m.group(1)) :] for m in _QUERY_SECRET.finditer(self.redis_url)]
        found += [unquote(v) for v in found]
        return sorted({v for v in found if len(v) >= _MIN_REDACTED_CHARS}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        """`text` (an error, a log line) with URL passwords and every secret of these settings masked."""
        text = mask_url(text)
        for value in self.secret_values():
            text = text.replace(value, MASK)
        return text

    def __repr_args__(self) -> Any:
        # repr() (logs, tracebacks, pytest's assertion output) never shows a secret
        masked = self.masked()
        for name, value in super().__repr_args__():
            hidden = name is not None and (name in ("redis_url", "kafka") or is_secret_name(name))
            yield name, (masked[name] if hidden and name is not None else value)


def _setting_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if not isinstance(p, int)]
    if not parts:
        return "settings"
    head, rest = parts[0].upper(), [p.upper() for p in parts[1:]]
    return "SEQSCORE_" + "__".join([head, *rest])


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the settings; raise ConfigError naming the one bad setting."""
    path = os.environ.get(CONFIG_FILE_ENV)
    if path and not Path(path).is_file():
        raise ConfigError(f"{CONFIG_FILE_ENV}: no such config file: {path}")
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        name = _setting_name(first["loc"])
        shown = first.get("input")
        if isinstance(shown, dict):
            got = ""
        elif is_secret_name(name) or name == "SEQSCORE_REDIS_URL":
            # a URL the validator could not parse cannot be masked piece by piece either
            got = f" (got {MASK})"
        else:
            got = f" (got {mask_url(repr(shown))})"
        raise ConfigError(f"invalid setting {name}: {first['msg']}{got}") from None
    except ValueError as exc:  # a config file that does not parse
        raise ConfigError(f"{CONFIG_FILE_ENV}={path}: {exc}") from exc
