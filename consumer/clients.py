"""The Redis clients of seqscore, built in one place: each use has its own timeouts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import urlsplit

import redis
from redis.cluster import ClusterNode, RedisCluster

from consumer.serve import silence
from consumer.settings import Settings, cluster_seed_urls
from state.backend import Store
from state.partitioned import PartitionedStore
from state.store import StateStore

RedisUse = Literal["serve", "page", "command"]
REDIS_TIMEOUTS: dict[RedisUse, dict[str, Any]] = {
    # the scoring loop: a short timeout, because an outage pauses consumption until Redis is back
    "serve": {"socket_timeout": 5, "socket_connect_timeout": 5, "health_check_interval": 30},
    # /segments and `seqscore segments`: one scan of every window may take a while
    "page": {"socket_timeout": 30},
    # operator commands (rebuild, erase, DLQ replay)
    "command": {"socket_timeout": 10, "socket_connect_timeout": 5},
}


def is_cluster(settings: Settings) -> bool:
    """A `redis+cluster://` (or `rediss+cluster://`) URL selects Redis Cluster."""
    return "+cluster://" in settings.redis_url


def redis_client(settings: Settings, use: RedisUse) -> Any:
    """A redis.Redis, or a RedisCluster for a cluster URL (its seed nodes: the URL's hosts)."""
    if not is_cluster(settings):
        return redis.Redis.from_url(settings.redis_url, **REDIS_TIMEOUTS[use])
    seeds = cluster_seed_urls(settings.redis_url)
    startup = [ClusterNode(*_host_port(url)) for url in seeds]
    return RedisCluster.from_url(seeds[0], startup_nodes=startup, **REDIS_TIMEOUTS[use])


def _host_port(url: str) -> tuple[str, int]:
    parsed = urlsplit(url)
    return parsed.hostname or "127.0.0.1", parsed.port or 6379


def state_store(
    settings: Settings,
    use: RedisUse,
    model_window: int | None,
    horizon_days: float | None,
    *,
    serving: bool = False,
    on_unconfirmed: Callable[[int], None] | None = None,
) -> Store:
    """The state as `seqscore serve` keeps it for a model with this window and churn horizon
    (None: no model yet): max(SEQSCORE_STATE__WINDOW, the model's window) events per customer
    (a longer model window needs a rebuild), silences tracked at the marks of its horizon.
    `serving`: the scoring loop's own store, which keeps undo records under exactly-once and
    pages the silences that fall due at once. A cluster URL gives a PartitionedStore;
    `on_unconfirmed` counts its writes that no replica confirmed."""
    state = settings.state
    marks: tuple[int, ...] = ()
    if settings.silence.enabled and horizon_days is not None:
        marks = silence.marks_for(settings.silence.marks_days, horizon_days)
    extra: dict[str, Any] = {"keeps_undo": settings.exactly_once, "max_due": settings.silence.max_due}
    capacity = max(state.window, model_window or 0)
    common = (state.key_prefix, capacity, state.lateness_seconds, state.retention_days * 86_400, marks)
    if is_cluster(settings):
        return PartitionedStore(redis_client(settings, use), *common, **(extra if serving else {}),
                                partitions=settings.topics.events_partitions, replicas=state.confirm_replicas,
                                replica_timeout_ms=state.confirm_timeout_ms, on_unconfirmed=on_unconfirmed)
    return StateStore(redis_client(settings, use), *common, **(extra if serving else {}))
