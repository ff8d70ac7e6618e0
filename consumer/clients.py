"""The Redis clients of seqscore, built in one place: each use has its own timeouts."""

from __future__ import annotations

from typing import Any, Literal

import redis

from consumer.serve import silence
from consumer.settings import Settings
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


def redis_client(settings: Settings, use: RedisUse) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, **REDIS_TIMEOUTS[use])


def state_store(
    settings: Settings,
    use: RedisUse,
    model_window: int | None,
    horizon_days: float | None,
    *,
    serving: bool = False,
) -> StateStore:
    """The state as `seqscore serve` keeps it for a model with this window and churn horizon
    (None: no model yet): max(SEQSCORE_STATE__WINDOW, the model's window) events per customer
    (a longer model window needs a rebuild), silences tracked at the marks of its horizon.
    `serving`: the scoring loop's own store, which keeps undo records under exactly-once and
    pages the silences that fall due at once."""
    state = settings.state
    marks: tuple[int, ...] = ()
    if settings.silence.enabled and horizon_days is not None:
        marks = silence.marks_for(settings.silence.marks_days, horizon_days)
    extra: dict[str, Any] = {"keeps_undo": settings.exactly_once, "max_due": settings.silence.max_due}
    return StateStore(
        redis_client(settings, use),
        state.key_prefix,
        max(state.window, model_window or 0),
        state.lateness_seconds,
        state.retention_days * 86_400,
        marks,
        **(extra if serving else {}),
    )
