"""Event-time clocks of the events partitions, which drive silence scoring (silence.py).

A partition's clock moves with its events, and on its own while the partition is idle, so
that silences keep coming due as wall time passes. When one move would find more due
customers than one state call takes (a page), the partition's events wait while its clock
moves by pages up to them (`Paging`; see apply_batch.lua, "Paging")."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

import numpy as np
from confluent_kafka import Message

from consumer.serve.retry import RedisRetry
from state.backend import Store
from state.store import AppliedBatch, EventBatch, PendingWrite

log = logging.getLogger(__name__)


class PartitionClocks:
    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.clock: dict[int, int] = {}  # events partition -> its event-time clock
        self.by_events: dict[int, tuple[int, float]] = {}  # -> (clock, monotonic time) at its last event

    def forget(self, partition: int) -> None:
        self.clock.pop(partition, None)
        self.by_events.pop(partition, None)

    def moved(self, applied: AppliedBatch, events: EventBatch) -> None:
        """Remember each partition's clock, and when events last moved it (idle advance)."""
        now = time.monotonic()
        with_events = set(np.unique(events.partition).tolist())
        for partition, c1 in zip(applied.clocks["partition"].tolist(), applied.clocks["c1"].tolist(), strict=True):
            self.clock[partition] = c1
            if partition in with_events:
                self.by_events[partition] = (c1, now)

    def idle_moves(self, assigned: set[tuple[str, int]], idle_after: float) -> dict[int, int]:
        """Clock moves for assigned partitions that had no events for `idle_after_seconds`: the
        clock advances by the idle time beyond that, never past the wall clock."""
        now, wall = time.monotonic(), int(time.time())
        moves = {}
        for topic, partition in assigned:
            if topic != self.topic or partition not in self.by_events:
                continue
            clock, moved_at = self.by_events[partition]
            target = min(clock + int(now - moved_at - idle_after), wall)
            if target > self.clock.get(partition, 0):
                moves[partition] = target
        return moves


class Paging:
    """Partitions whose events wait while their clock moves by pages: from which offset each
    is read again."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.held_back: dict[int, int] = {}  # events partition -> first offset read again

    def read_in_pages(
        self,
        store: Store,
        with_redis: RedisRetry,
        read: tuple[AppliedBatch, EventBatch, list[str]],
        clocks: dict[int, int] | None,
    ) -> tuple[EventBatch, list[str], AppliedBatch, PendingWrite]:
        """More silences came due on some partitions than one read takes (a clock jump after a
        long quiet spell). Their events wait: read again later from the first one held back,
        while the clock moves by pages up to them (or, when the jump lies among the events
        themselves, the later half waits, as often as needed)."""
        applied, events, event_ids = read
        moves: dict[int, int] = dict(clocks or {})
        stuck: set[int] = set()
        write: PendingWrite | None = None
        while unsplit := [p for p in applied.deferred.tolist() if p not in stuck]:
            c0 = dict(zip(applied.clocks["partition"].tolist(), applied.clocks["c0"].tolist(), strict=True))
            keep = np.ones(len(events), dtype=bool)
            for partition in unsplit:
                rows = np.flatnonzero(events.partition == partition)
                first_ts = int(events.ts[rows].min())
                if first_ts - 1 > c0.get(partition, 0):
                    held = rows
                    moves[partition] = first_ts - 1
                elif len(rows) > 1:
                    held = rows[len(rows) // 2 :]
                else:  # one event one second past the clock: the script takes that second whole
                    stuck.add(partition)
                    log.error("partition %d: deferred on a move of one second; silences past %d may be missed",
                              partition, store.max_due)
                    continue
                keep[held] = False
                log.info("partition %d: more silences due than one read takes; %d events wait while its clock "
                         "moves by pages", partition, len(held))
                offset = int(events.offset[held].min())
                self.held_back[partition] = min(offset, self.held_back.get(partition, offset))
            kept = np.flatnonzero(keep)
            events, event_ids = events.take(kept), [event_ids[i] for i in kept.tolist()]
            applied, write = with_redis(functools.partial(store.preview, events, None, moves))
        assert write is not None, "called for a read with deferred partitions"
        return events, event_ids, applied, write

    def hold_back(
        self,
        messages: list[Message],
        invalid: list[tuple[Message, str, str]],
        seek_back: Callable[[dict[tuple[str, int], int]], None],
    ) -> tuple[list[Message], list[tuple[Message, str, str]]]:
        """The records of partitions whose events were held back (`read_in_pages`) from the first
        held one on: neither committed nor dead-lettered now; read again from there."""
        topic, held = self.topic, self.held_back
        self.held_back = {}

        def later(m: Message) -> bool:
            partition, offset = m.partition(), m.offset()
            return (m.topic() == topic and partition in held and offset is not None
                    and offset >= held[partition])

        seek_back({(topic, p): offset for p, offset in held.items()})
        return [m for m in messages if not later(m)], [d for d in invalid if not later(d[0])]
