"""What seqscore stores in Redis, in one place: the key names, the binary layouts of the
windows and of the state scripts' packed arguments and replies, and the arguments of
apply_batch.lua by name. The Lua side of each layout is described in the header of
scripts/apply_batch.lua; tests/unit/state/test_layout.py checks that the two agree.

Key layout (each customer's keys share the hash tag `{c:ID}`, so they live in one Redis
Cluster slot):

    {prefix}:{c:ID}:w   packed window: 44-byte header (alert state, the latest prediction)
                        + 16-byte records (see scripts/apply_batch.lua)
    {prefix}:{c:ID}:p   profile: 2 bytes (gender index, age-group index; 255 = unknown)
    {prefix}:quiet:P    sorted set: customers of events partition P by last event time,
                        while younger than the last silence mark
    {prefix}:clock      hash: events partition -> its event-time clock (epoch seconds)
    {prefix}:version    hash: events partition -> a counter every write of its state moves
    {prefix}:tag-key    the secret key of the event tags (event_tag), made by the first writer
    {prefix}:owner      hash: events partition -> the owner generation of its last claim
    {prefix}:undo:P     hash: what the last exactly-once write on partition P replaced
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class Keys:
    """The Redis key names under one key prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.clock = f"{prefix}:clock"
        self.version = f"{prefix}:version"
        self.owner = f"{prefix}:owner"
        self.tag_key = f"{prefix}:tag-key"
        self.windows = f"{prefix}:{{c:*}}:w"  # a SCAN pattern of every window
        # on a Redis Cluster each events partition has its own prefix (state/partitioned.py)
        self.partitioned_windows = f"{prefix}:{{p*}}:{{c:*}}:w"
        self.undo_prefix = f"{prefix}:undo:"

    def window(self, customer_id: str) -> str:
        return f"{self.prefix}:{{c:{customer_id}}}:w"

    def profile(self, customer_id: str) -> str:
        return f"{self.prefix}:{{c:{customer_id}}}:p"

    def quiet(self, partition: int) -> str:
        return f"{self.prefix}:quiet:{partition}"

    def undo(self, partition: int) -> str:
        return f"{self.undo_prefix}{partition}"

    def customer_of_window(self, key: str | bytes) -> str:
        name = key.decode("utf-8") if isinstance(key, bytes) else key
        return name[name.index(":{c:", len(self.prefix)) + len(":{c:") : -len("}:w")]


HEADER_DTYPE = np.dtype(  # as the script returns it
    [
        ("offset", "<f8"),
        ("partition", "<u4"),
        ("n_records", "<u4"),
        ("first_ts", "<u4"),
        ("alert_ts", "<u4"),
        ("flags", "<u4"),
        ("count", "<u4"),
        ("nba_ts", "<u4"),
        ("pred_code", "<u4"),
        ("pred_risk", "<f4"),
        ("pred_ts", "<u4"),
    ]
)
STORED_HEADER_DTYPE = np.dtype(  # as the window value starts
    [
        ("offset", "<f8"),
        ("partition", "<u4"),
        ("count", "<u4"),
        ("first_ts", "<u4"),
        ("alert_ts", "<u4"),
        ("flags", "<u4"),
        ("nba_ts", "<u4"),
        ("pred_code", "<u4"),
        ("pred_risk", "<f4"),
        ("pred_ts", "<u4"),
    ]
)
RECORD_DTYPE = np.dtype([("ts", "<u4"), ("coarse", "<u4"), ("fine", "<u4"), ("tag", "<u4")])
EVENT_DTYPE = np.dtype([("status", "<u2"), ("position", "<u2")])
MOVED_FLAG = 256  # in an event's status word: see apply_batch.lua
BEHIND_FLAG = 512  # likewise: applied although its window had passed its offset
STORED_HEADER_BYTES = STORED_HEADER_DTYPE.itemsize
EVENT_ARG_DTYPE = np.dtype(
    [("customer", "<u4"), ("partition", "<u4"), ("offset", "<f8"), ("ts", "<u4"), ("coarse", "<u4"),
     ("fine", "<u4"), ("tag", "<u4")]
)
UPDATE_ARG_DTYPE = np.dtype(
    [("customer", "<u4"), ("flags", "<u4"), ("alert_ts", "<u4"), ("nba_ts", "<u4"), ("pred_code", "<u4"),
     ("pred_risk", "<f4"), ("pred_ts", "<u4")]
)
DUE_DTYPE = np.dtype([("customer", "<u4"), ("partition", "<u4"), ("last_ts", "<u4"), ("mark", "<u4")])
CLOCK_DTYPE = np.dtype([("partition", "<u4"), ("c0", "<u4"), ("c1", "<u4"), ("version", "<f8")])
PRECOMPUTED_DTYPE = np.dtype([("length", "<u4"), ("last_ts", "<u4"), ("partition", "<u4")])
VERSION_ARG_DTYPE = np.dtype([("partition", "<u4"), ("version", "<f8")])
FLAG_ALERTED = 1
FLAG_ERASED = 2  # a tombstone window: see erase()

APPLIED, REPLAY, DUPLICATE, LATE_INSERTED, TOO_LATE = range(5)
MAX_DUE = 20_000  # customers one clock move finds due at one mark on one partition
FENCED = -1  # a write's reply when another member claimed its partitions since (apply_batch.lua, "Owners")
STATUS_NAMES = ("applied", "replay", "duplicate", "late_inserted", "too_late")


TAG_KEY_BYTES = 16
LEGACY_TAG_KEY = b"crc32"  # state written before tags were keyed: see StateStore.tag_key


@dataclass
class ApplyArgs:
    """ARGV of apply_batch.lua, by name and in its order (the script's header says what each
    holds)."""

    capacity: int
    lateness_s: int
    ttl_s: int
    n_events: int
    mode: str  # 'r' reads, 'w' writes, 'rw' both
    n_updates: int
    events: bytes  # EVENT_ARG_DTYPE rows
    updates: bytes  # UPDATE_ARG_DTYPE rows
    prefix: str
    marks: bytes  # silence marks, '<I' seconds, ascending
    clocks: bytes  # '<II' (partition, clock at least)
    undo: bytes  # b'1' and the writer's claims ('<II' partition, generation), or b''
    n_own: int  # customers with events (the due ones follow)
    max_due: int  # a page
    precomputed: tuple[bytes, bytes, bytes] | None = None  # 'w' only: the windows a read computed

    def argv(self) -> list[int | str | bytes]:
        head: list[int | str | bytes] = [
            self.capacity, self.lateness_s, self.ttl_s, self.n_events, self.mode, self.n_updates, self.events,
            self.updates, self.prefix, self.marks, self.clocks, self.undo, self.n_own, self.max_due,
        ]
        return head + list(self.precomputed) if self.precomputed is not None else head
