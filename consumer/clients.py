"""The Redis clients of seqscore, built in one place: each use has its own timeouts."""

from __future__ import annotations

from typing import Any, Literal

import redis

from consumer.settings import Settings

RedisUse = Literal["serve", "page", "command"]
REDIS_TIMEOUTS: dict[RedisUse, dict[str, Any]] = {
    # the scoring loop: a short timeout, because an outage pauses consumption until Redis is back
    "serve": {"socket_timeout": 5, "socket_connect_timeout": 5, "health_check_interval": 30},
    # /segments and `seqscore segments`: one scan of every window may take a while
    "page": {"socket_timeout": 30},
    # operator commands (rebuild, erase, DLQ replay)
    "command": {"socket_timeout": 10, "socket_connect_timeout": 5},
}


def redis_client(settings: Settings, use: RedisUse) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, **REDIS_TIMEOUTS[use])
