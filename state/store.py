"""Per-customer state in Redis: raw rolling windows, applied for a whole batch in one round trip.

What is stored, under which keys and in which binary layout: state/layout.py.

State is raw (event time, activity codes, an event_id tag), never model tokens, so a new
vocabulary or window needs no migration. One EVALSHA applies a batch idempotently: replayed
offsets change nothing, repeated event_ids are ignored, late events are inserted in event
time order. A write stores the windows its preview computed, unless something else wrote
the batch's partitions in between: then it applies the events again. The call spans many
slots, so it needs a single Redis (or one call per Cluster node, grouping customers by slot).
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import secrets
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, Generic, TypeVar

import numpy as np
import redis
from numpy.typing import NDArray
from redis.client import Pipeline

from state.encoding import RawWindows, window_index
from state.errors import Fenced, StateScriptError
from state.layout import (  # noqa: F401  (re-exported: the store's callers use these names)
    APPLIED,
    BEHIND_FLAG,
    CLOCK_DTYPE,
    DUE_DTYPE,
    DUPLICATE,
    EVENT_ARG_DTYPE,
    EVENT_DTYPE,
    FENCED,
    FLAG_ALERTED,
    FLAG_ERASED,
    HEADER_DTYPE,
    LATE_INSERTED,
    LEGACY_TAG_KEY,
    MAX_DUE,
    MOVED_FLAG,
    PRECOMPUTED_DTYPE,
    RECORD_DTYPE,
    REPLAY,
    STATUS_NAMES,
    STORED_HEADER_BYTES,
    STORED_HEADER_DTYPE,
    TAG_KEY_BYTES,
    TOO_LATE,
    UPDATE_ARG_DTYPE,
    VERSION_ARG_DTYPE,
    ApplyArgs,
    Keys,
)


def event_tag(event_id: str, key: bytes = b"") -> int:
    """A 32-bit tag of an event_id, stored with each record to tell a repeated event. Keyed
    (blake2b with the state's own secret key), so that nobody without the key can make two
    ids share a tag and have the second dropped as a repeat; CRC32 is linear and unkeyed."""
    data = event_id.encode("utf-8")
    if key == LEGACY_TAG_KEY:
        return zlib.crc32(data)
    return int.from_bytes(hashlib.blake2b(data, digest_size=4, key=key).digest(), "little")


@contextmanager
def script_errors() -> Iterator[None]:
    """A script that fails inside Redis raises StateScriptError, so that callers retrying Redis
    outages do not wait on a bug for ever."""
    try:
        yield
    except redis.exceptions.NoScriptError:
        raise  # a restarted Redis: loaded again by the caller
    except redis.ResponseError as exc:
        if "user_script" in str(exc) or "Error running script" in str(exc):
            raise StateScriptError(str(exc)) from exc
        raise


@dataclass
class EventBatch:
    """The valid events of one poll, as arrays (Kafka order within each partition)."""

    customer_ids: list[str]
    partition: NDArray[np.int64]
    offset: NDArray[np.int64]
    ts: NDArray[np.int64]
    coarse: NDArray[np.uint32]
    fine: NDArray[np.uint32]
    tag: NDArray[np.uint32]

    def __len__(self) -> int:
        return len(self.ts)

    @classmethod
    def empty(cls) -> EventBatch:
        """No events: a call that only moves partitions' clocks (silence)."""
        no_int, no_code = np.zeros(0, np.int64), np.zeros(0, np.uint32)
        return cls([], no_int, no_int, no_int, no_code, no_code, no_code)

    def take(self, rows: NDArray[np.int64]) -> EventBatch:
        """The events at `rows`, in that order."""
        return EventBatch([self.customer_ids[i] for i in rows.tolist()], self.partition[rows], self.offset[rows],
                          self.ts[rows], self.coarse[rows], self.fine[rows], self.tag[rows])


@dataclass
class AppliedBatch:
    """What the store returns for a batch: per distinct customer and per event."""

    customers: list[str]  # distinct, in first-seen order
    customer_index: NDArray[np.int64]  # per event
    headers: NDArray[np.void]  # per customer, HEADER_DTYPE
    records: NDArray[np.void]  # all customers' records concatenated, RECORD_DTYPE
    record_start: NDArray[np.int64]  # per customer: index of its first record
    gender: NDArray[np.int64]  # per customer, -1 unknown
    age_group: NDArray[np.int64]
    status: NDArray[np.int64]  # per event
    position: NDArray[np.int64]  # per event, 1-based record index (0 = trimmed away)
    due: NDArray[np.void]  # DUE_DTYPE, customer 0-based: silences that crossed a mark
    clocks: NDArray[np.void]  # CLOCK_DTYPE: each partition's clock move
    # per event: its customer's previous event came from another partition (a producer that
    # keys by something else, partitions added): members may then overwrite each other's state
    moved: NDArray[np.bool_]
    # partitions with events whose due silences did not fit in one page: read them again
    # without those events (see apply_batch.lua, "Paging")
    deferred: NDArray[np.int64]
    # per event: at an offset its customer's window had passed, and not in it, so new (a
    # re-created topic, offsets reset to a copy) and applied; a replay is found in its window
    behind_state: NDArray[np.bool_]

    @classmethod
    def from_reply(cls, customers: list[str], customer_index: NDArray[np.int64], reply: list[Any]) -> AppliedBatch:
        """Decode apply_batch.lua's reply (its layouts: state/layout.py)."""
        headers_raw, records_raw, profiles_raw, events_raw, due_raw, due_names, clocks_raw, deferred_raw = reply
        headers = np.frombuffer(headers_raw, dtype=HEADER_DTYPE)
        records = np.frombuffer(records_raw, dtype=RECORD_DTYPE)
        profiles = np.frombuffer(profiles_raw, dtype=np.uint8).reshape(-1, 2).astype(np.int64)
        events = np.frombuffer(events_raw, dtype=EVENT_DTYPE)
        due = np.frombuffer(due_raw, dtype=DUE_DTYPE).copy()
        due["customer"] -= 1
        record_start = np.concatenate([[0], np.cumsum(headers["n_records"].astype(np.int64))[:-1]])
        return cls(
            customers=customers + [name.decode("utf-8") for name in due_names],
            customer_index=customer_index,
            headers=headers,
            records=records,
            record_start=record_start.astype(np.int64),
            gender=np.where(profiles[:, 0] == 255, -1, profiles[:, 0]),
            age_group=np.where(profiles[:, 1] == 255, -1, profiles[:, 1]),
            status=(events["status"] & ~np.uint16(MOVED_FLAG | BEHIND_FLAG)).astype(np.int64),
            moved=(events["status"] & MOVED_FLAG) > 0,
            behind_state=(events["status"] & BEHIND_FLAG) > 0,
            position=events["position"].astype(np.int64),
            due=due,
            clocks=np.frombuffer(clocks_raw, dtype=CLOCK_DTYPE),
            deferred=np.unique(np.frombuffer(deferred_raw, dtype="<u4")).astype(np.int64),
        )

    def windows(
        self, batch: EventBatch, window: int, level: str, score_ts: NDArray[np.int64] | None = None
    ) -> tuple[RawWindows, NDArray[np.bool_]]:
        """Each event's window of history up to and including it, and which events have one.

        An event too late to be stored is scored on the records before it plus itself.
        """
        code_field = "coarse" if level == "coarse" else "fine"
        ci = self.customer_index
        ts_all = self.records["ts"].astype(np.int64)
        code_all = self.records[code_field].astype(np.uint32)
        n_records = self.headers["n_records"].astype(np.int64)[ci]
        position = self.position  # 0: a replay or duplicate whose record is no longer kept
        has_window = (position > 0) | (self.status == TOO_LATE)
        starts = self.record_start[ci]
        ends = starts + position - 1
        idx, real = window_index(np.where(self.status == TOO_LATE, ends + 1, ends), starts, window)
        total = self.headers["count"].astype(np.int64)[ci]
        count = np.where(
            self.status == TOO_LATE, total - n_records + self.position + 1, total - (n_records - self.position)
        )
        first_ts = self.headers["first_ts"].astype(np.int64)[ci]
        for customer in np.unique(ci[self.status == LATE_INSERTED]):
            self._as_applied(int(customer), batch, window, idx, real, count, first_ts)
        ts = np.where(real, ts_all[np.minimum(idx, len(ts_all) - 1)] if len(ts_all) else 0, 0)
        codes = np.where(real, code_all[np.minimum(idx, len(code_all) - 1)] if len(code_all) else 0, 0)
        late = np.flatnonzero(self.status == TOO_LATE)
        if len(late):  # the event itself takes the last slot, after the records at or before its time
            own_codes = batch.coarse if level == "coarse" else batch.fine
            ts[late, -1] = batch.ts[late]
            codes[late, -1] = own_codes[late]
        raw = RawWindows(
            ts=ts.astype(np.int64),
            codes=codes.astype(np.uint32),
            count=np.maximum(count, 1),
            first_ts=np.minimum(first_ts, ts[:, -1]),
            score_ts=batch.ts.copy() if score_ts is None else score_ts,
            gender=self.gender[ci],
            age_group=self.age_group[ci],
        )
        return raw, has_window


    def _as_applied(
        self,
        customer: int,
        batch: EventBatch,
        window: int,
        idx: NDArray[np.int64],
        real: NDArray[np.bool_],
        count: NDArray[np.int64],
        first_ts: NDArray[np.int64],
    ) -> None:
        """A late event inserted into `customer`'s records shifted the records of events applied
        before it in this batch. Give each applied event the window, count and first time it
        had when it was applied (stream order), as if the batch had been cut before each late
        event: then a replay scores exactly what the first pass did, whatever the batch cut.
        Rare (a late event after an earlier one of its customer in the same batch), so a loop."""
        events = np.flatnonzero((self.customer_index == customer) & np.isin(self.status, (APPLIED, LATE_INSERTED)))
        start = int(self.record_start[customer])
        inserted = (self.position[events] - 1).tolist()  # indexes into the customer's final records
        n_records = int(self.headers["n_records"][customer])
        in_batch = set(inserted)
        current = [r for r in range(n_records) if r not in in_batch]  # the records before the batch
        record_ts = self.records["ts"][start : start + n_records].astype(np.int64)
        header_first = int(self.headers["first_ts"][customer])
        batch_first = int(batch.ts[events].min())
        if header_first < batch_first:
            first = header_first
        else:  # every earlier event is among the records kept (a late event is newer than any trimmed one)
            first = int(record_ts[current].min()) if current else np.iinfo(np.int64).max
        seen = int(self.headers["count"][customer]) - len(events)
        for event, record in zip(events.tolist(), inserted, strict=True):
            at = bisect.bisect_left(current, record)
            current.insert(at, record)
            kept = current[max(0, at + 1 - window) : at + 1]
            idx[event] = 0
            real[event] = False
            idx[event, window - len(kept) :] = start + np.asarray(kept, dtype=np.int64)
            real[event, window - len(kept) :] = True
            seen += 1
            count[event] = seen
            first = min(first, int(batch.ts[event]))
            first_ts[event] = first


@dataclass
class PendingWrite:
    """A batch's state change, computed but not yet stored. The scorer stores it only after
    the batch's outputs are acknowledged: a crash before that replays the batch against
    unchanged state (same windows, same predictions), and a replay of a stored batch means
    its outputs were delivered, so it needs no window. Per-customer updates (alert state,
    next-action cap, the latest prediction) travel in the same atomic script call.

    With `read` (the preview's reply) the call also carries the windows computed from it, which
    Redis stores as they are when nothing else wrote the batch's partitions in between."""

    keys: list[str]
    args: ApplyArgs  # the script's arguments for this batch, mode 'w', no updates yet
    read: AppliedBatch | None = None
    capacity: int = 0
    updates: NDArray[np.void] | None = None

    def set_updates(self, updates: NDArray[np.void]) -> None:
        """Header fields per customer (UPDATE_ARG_DTYPE; `customer` = 0-based index in the
        batch's customer order, the due customers after the batch's own)."""
        packed = updates.astype(UPDATE_ARG_DTYPE, copy=True)
        packed["customer"] += 1
        self.args.n_updates = len(packed)
        self.args.updates = packed.tobytes()
        self.updates = packed

    def script_args(self) -> list[int | str | bytes]:
        if self.read is None:
            return self.args.argv()
        precomputed = precomputed_write(self.read, self.args.n_own, self.updates, self.capacity)
        return dataclasses.replace(self.args, precomputed=precomputed).argv()


def precomputed_write(
    read: AppliedBatch, n_own: int, updates: NDArray[np.void] | None, capacity: int
) -> tuple[bytes, bytes, bytes]:
    """What a 'w' call stores for the batch's own customers, from the preview's reply (see
    apply_batch.lua, "Precomputed write"): the new window values concatenated; per customer
    the value's length (0: unchanged), its last event time when it grew (for the quiet set)
    and its partition; and the version of each partition the reply was read at."""
    customer, status = read.customer_index, read.status
    changed = np.bincount(customer[status != REPLAY], minlength=n_own)[:n_own] > 0
    grew = np.bincount(customer[(status == APPLIED) | (status == LATE_INSERTED)], minlength=n_own)[:n_own] > 0
    heads = read.headers[:n_own]
    stored = np.zeros(n_own, STORED_HEADER_DTYPE)
    for name in STORED_HEADER_DTYPE.names or ():
        stored[name] = heads[name]
    if updates is not None:
        own = updates[updates["customer"] <= n_own]  # 1-based; beyond n_own: silence-scored
        rows = own["customer"].astype(np.int64) - 1
        for name in ("flags", "alert_ts", "nba_ts", "pred_code", "pred_risk", "pred_ts"):
            stored[name][rows] = own[name]
        changed[rows] = True
    n_records = heads["n_records"].astype(np.int64)
    kept = np.minimum(n_records, capacity)
    first_kept = read.record_start[:n_own] + n_records - kept
    meta = np.zeros(n_own, PRECOMPUTED_DTYPE)
    meta["partition"] = heads["partition"]
    last = first_kept + kept - 1
    has_last = grew & (kept > 0)
    meta["last_ts"][has_last] = read.records["ts"][last[has_last]]

    rows = np.flatnonzero(changed)
    k = kept[rows]
    sizes = STORED_HEADER_BYTES + RECORD_DTYPE.itemsize * k
    meta["length"][rows] = sizes
    starts = np.cumsum(sizes) - sizes
    values = np.empty(int(sizes.sum()), np.uint8)
    values[(starts[:, None] + np.arange(STORED_HEADER_BYTES)).ravel()] = stored[rows].view(np.uint8)
    within = np.arange(int(k.sum())) - np.repeat(np.cumsum(k) - k, k)  # each record's place in its window
    record_at = np.repeat(starts + STORED_HEADER_BYTES, k) + RECORD_DTYPE.itemsize * within
    values[(record_at[:, None] + np.arange(RECORD_DTYPE.itemsize)).ravel()] = (
        read.records[np.repeat(first_kept[rows], k) + within].view(np.uint8)
    )
    versions = np.zeros(len(read.clocks), VERSION_ARG_DTYPE)
    versions["partition"], versions["version"] = read.clocks["partition"], read.clocks["version"]
    return values.tobytes(), meta.tobytes(), versions.tobytes()


def packed_clock_moves(batch: EventBatch, clocks: dict[int, int] | None) -> bytes:
    """Per partition: the newest event time of the batch (or further, by `clocks`)."""
    moves = dict(clocks or {})
    if len(batch):
        order = np.argsort(batch.partition, kind="stable")
        by_partition = batch.partition[order]
        starts = np.flatnonzero(np.r_[True, by_partition[1:] != by_partition[:-1]])
        partitions, newest = by_partition[starts], np.maximum.reduceat(batch.ts[order], starts)
        for partition, ts in zip(partitions.tolist(), newest.tolist(), strict=True):
            moves[partition] = max(moves.get(partition, 0), ts)
    packed = np.array(sorted(moves.items()), dtype=np.uint32).reshape(-1, 2)
    return packed.astype("<u4").tobytes()


T = TypeVar("T")


@dataclass(frozen=True)
class ScriptCall(Generic[T]):
    """Commands to queue into one pipeline, and how to read their replies: the store runs one
    alone; a Redis Cluster store puts the calls of the partitions one node serves into one
    pipeline (state/partitioned.py)."""

    queue: Callable[[Pipeline], None]
    replies: int
    finish: Callable[[list[Any]], T]


class StateStore:
    """Redis-backed windows of the last `capacity` events per customer. No slack is needed for
    replays: a replayed event is either unstored (scored again from unchanged state) or
    stored, and then its outputs were delivered and it is not scored again."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        capacity: int,
        lateness_seconds: int,
        ttl_seconds: int,
        silence_marks: tuple[int, ...] = (),
        keeps_undo: bool = False,
        max_due: int = MAX_DUE,
    ) -> None:
        """`silence_marks`: seconds of silence at which a customer is scored again (empty: off).
        `keeps_undo`: every write keeps what it replaced, per partition, so that `rollback` can
        undo a write whose Kafka transaction never committed (exactly-once serving)."""
        self.client = client
        self.silence_marks = tuple(sorted(silence_marks))
        self._marks = np.array(self.silence_marks, dtype="<u4").tobytes()
        self.prefix = prefix
        self.keys = Keys(prefix)
        self.capacity = capacity
        self.lateness = lateness_seconds
        self.ttl = ttl_seconds
        self.keeps_undo = keeps_undo
        self.max_due = max_due
        # exactly-once: the owner generation this member claimed per partition (see claim)
        self.claims: dict[int, int] = {}
        scripts = resources.files("state").joinpath("scripts")
        self._apply = client.register_script(scripts.joinpath("apply_batch.lua").read_text())
        self._rollback = client.register_script(scripts.joinpath("rollback.lua").read_text())

    def window_key(self, customer_id: str) -> str:
        return self.keys.window(customer_id)

    def profile_key(self, customer_id: str) -> str:
        return self.keys.profile(customer_id)

    def apply(self, batch: EventBatch, clocks: dict[int, int] | None = None) -> AppliedBatch:
        """Apply and store the batch in one round trip; return every event's window position."""
        return self.run(self.apply_call(batch, clocks))

    def preview(
        self, batch: EventBatch, before: PendingWrite | None = None, clocks: dict[int, int] | None = None
    ) -> tuple[AppliedBatch, PendingWrite]:
        """In one round trip: store `before` (the previous batch, now acknowledged), then
        compute this batch's windows, and the silences its clock moves make due, without
        storing them. `clocks` moves partitions' clocks at least that far (a quiet partition,
        a sweep). Returns the windows and the write to store once this batch's outputs are
        acknowledged."""
        return self.run(self.preview_call(batch, before, clocks))

    def write(self, pending: PendingWrite) -> bool:
        """Store a previewed batch (idempotent: storing it twice changes nothing). True when the
        windows the preview computed were stored as they are, False when the events were
        applied again (another writer touched the partitions, or undo records are kept)."""
        return self.run(self.write_call(pending))

    def run(self, call: ScriptCall[T]) -> T:
        """One round trip for one call."""
        return call.finish(self._execute(call.queue))

    # -- the script calls, each to be queued into a pipeline (of this Redis or a Cluster node)
    def apply_call(self, batch: EventBatch, clocks: dict[int, int] | None = None) -> ScriptCall[AppliedBatch]:
        customers, customer_index, keys, args = self._script_call(batch, "rw", clocks)

        def finish(replies: list[Any]) -> AppliedBatch:
            if replies[0] == FENCED:
                raise Fenced(f"partitions {sorted(self.claims)}: claimed by another member since")
            return AppliedBatch.from_reply(customers, customer_index, replies[0])

        return ScriptCall(lambda pipe: pipe.evalsha(self._apply.sha, len(keys), *keys, *args.argv()), 1, finish)

    def preview_call(
        self, batch: EventBatch, before: PendingWrite | None = None, clocks: dict[int, int] | None = None
    ) -> ScriptCall[tuple[AppliedBatch, PendingWrite]]:
        customers, customer_index, keys, args = self._script_call(batch, "r", clocks)

        def queue(pipe: Pipeline) -> None:
            if before is not None:
                self._queue_write(pipe, before)
            pipe.evalsha(self._apply.sha, len(keys), *keys, *args.argv())

        def finish(replies: list[Any]) -> tuple[AppliedBatch, PendingWrite]:
            if before is not None and replies[0] == FENCED:
                raise Fenced(f"partitions {sorted(self.claims)}: claimed by another member since the batch was read")
            applied = AppliedBatch.from_reply(customers, customer_index, replies[-1])
            extra = applied.customers[len(customers) :]
            write_keys = keys + [key for c in extra for key in (self.window_key(c), self.profile_key(c))]
            # as far as the preview moved the clocks: a page of due silences can stop one short
            moved = dict(zip(applied.clocks["partition"].tolist(), applied.clocks["c1"].tolist(), strict=True))
            write_args = dataclasses.replace(args, mode="w", clocks=packed_clock_moves(EventBatch.empty(), moved))
            # with undo records the write reads what it replaces anyway: it applies the events
            read = None if self.keeps_undo else applied
            return applied, PendingWrite(write_keys, write_args, read, self.capacity)

        return ScriptCall(queue, 1 + (before is not None), finish)

    def write_call(self, pending: PendingWrite) -> ScriptCall[bool]:
        def finish(replies: list[Any]) -> bool:
            if replies[0] == FENCED:
                raise Fenced(f"partitions {sorted(self.claims)}: claimed by another member since the batch was read")
            return bool(replies[0] == 1)

        return ScriptCall(lambda pipe: self._queue_write(pipe, pending), 1, finish)

    def tag_key(self) -> bytes:
        """The key of this state's event tags: the same for every member and every restart, so
        kept in Redis beside the windows whose tags it made; 16 random bytes from the first
        member. State that older versions wrote (windows without a key) keeps CRC32 tags, or
        its replays would no longer be found; a rebuild into a new key prefix moves it on."""
        name = self.keys.tag_key
        key = self.client.get(name)
        if key is None:
            written = self.client.exists(self.keys.version, self.keys.clock)
            self.client.set(name, LEGACY_TAG_KEY if written else secrets.token_bytes(TAG_KEY_BYTES), nx=True)
            key = self.client.get(name)
        assert isinstance(key, bytes)
        return key

    def claim(self, partition: int) -> int:
        """Make this member the partition's owner (exactly-once), before it checks the undo
        record: a write of any former owner is refused from now on (apply_batch.lua, "Owners").
        Returns the new generation, which this member's writes carry."""
        generation = int(self.client.hincrby(self.keys.owner, str(partition), 1))
        self.claims[partition] = generation
        return generation

    def _queue_write(self, pipe: Pipeline, pending: PendingWrite) -> None:
        pipe.evalsha(self._apply.sha, len(pending.keys), *pending.keys, *pending.script_args())

    def _execute(self, queue: Callable[[Pipeline], None]) -> list[Any]:
        """One round trip; loads the scripts once if this Redis has not seen them (restart)."""
        for attempt in range(2):
            pipe = self.client.pipeline(transaction=False)
            queue(pipe)
            try:
                with script_errors():
                    return pipe.execute(raise_on_error=True)
            except redis.exceptions.NoScriptError:
                if attempt:
                    raise
                self.load_scripts()
        raise AssertionError("unreachable")

    def load_scripts(self) -> None:
        """Load the batch script into a Redis that has not seen it (a restart, a new node)."""
        self.client.script_load(self._apply.script)  # its sha is the script's own hash

    def _script_call(
        self, batch: EventBatch, mode: str, clocks: dict[int, int] | None = None
    ) -> tuple[list[str], NDArray[np.int64], list[str], ApplyArgs]:
        index: dict[str, int] = {}
        customer_index = np.fromiter(
            (index.setdefault(c, len(index)) for c in batch.customer_ids), dtype=np.int64, count=len(batch)
        )
        customers = list(index)
        keys = [key for c in customers for key in (self.window_key(c), self.profile_key(c))]
        packed = np.empty(len(batch), EVENT_ARG_DTYPE)
        packed["customer"] = customer_index + 1
        packed["partition"] = batch.partition
        packed["offset"] = batch.offset
        packed["ts"] = batch.ts
        packed["coarse"] = batch.coarse
        packed["fine"] = batch.fine
        packed["tag"] = batch.tag
        claims = np.array(sorted(self.claims.items()), dtype="<u4").reshape(-1, 2).tobytes()
        args = ApplyArgs(
            capacity=self.capacity,
            lateness_s=self.lateness,
            ttl_s=self.ttl,
            n_events=len(batch),
            mode=mode,
            n_updates=0,
            events=packed.tobytes(),
            updates=b"",
            prefix=self.prefix,
            marks=self._marks,
            clocks=packed_clock_moves(batch, clocks),
            undo=b"1" + claims if self.keeps_undo else b"",
            n_own=len(customers),
            max_due=self.max_due,
        )
        return customers, customer_index, keys, args

    def set_profiles(self, customer_ids: list[str], gender: list[int], age_group: list[int]) -> None:
        """Store profiles (indexes, -1 unknown) for many customers in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for customer, g, a in zip(customer_ids, gender, age_group, strict=True):
            pipe.set(self.profile_key(customer), bytes([g if g >= 0 else 255, a if a >= 0 else 255]), ex=self.ttl)
        pipe.execute(raise_on_error=True)

    def stored_partition(self, customer_id: str) -> int | None:
        """The events partition of the customer's newest stored event, if any is stored."""
        head = self.client.getrange(self.window_key(customer_id), 0, STORED_HEADER_BYTES - 1)
        if not isinstance(head, bytes) or len(head) < STORED_HEADER_BYTES:
            return None
        return int(np.frombuffer(head, STORED_HEADER_DTYPE)["partition"][0])

    def erase(self, customer_id: str, partition: int, next_offset: int) -> int:
        """Forget everything stored about a customer whose events go to `partition`, where the
        next event will get `next_offset` (the partition's end when the erasure is asked for).
        Returns the number of keys that held data.

        The window becomes a tombstone (FLAG_ERASED, no records) that remembers the partition
        and the last offset it covers, for `ttl_seconds`: an event at or before it (a batch in
        flight, a rebuild from the topic, the replay after a rollback) is a replay and restores
        nothing; a later one starts a new history. Undo records lose the customer's entries,
        so no rollback puts the old window back; the quiet set forgets it."""
        stored = self.stored_partition(customer_id)
        tombstone = np.zeros(1, STORED_HEADER_DTYPE)
        tombstone["offset"], tombstone["partition"], tombstone["flags"] = next_offset - 1, partition, FLAG_ERASED
        window = self.window_key(customer_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.exists(window, self.profile_key(customer_id))
        pipe.delete(self.profile_key(customer_id))
        pipe.set(window, tombstone.tobytes(), ex=self.ttl)
        for part in {p for p in (partition, stored) if p is not None}:
            pipe.zrem(self.quiet_key(part), customer_id)
            pipe.hdel(self.keys.undo(part), f"w:{window}", f"z:{customer_id}")
            # a write: a pending write of the partition applies its events again, not what it read
            pipe.hincrby(self.keys.version, str(part), 1)
        return int(pipe.execute()[0])

    def erased(self, customer_ids: list[str]) -> set[str]:
        """Those of `customer_ids` whose window is a tombstone (erased, no event since)."""
        pipe = self.client.pipeline(transaction=False)
        for customer_id in customer_ids:
            pipe.getrange(self.window_key(customer_id), 0, STORED_HEADER_BYTES - 1)
        found = set()
        for customer_id, head in zip(customer_ids, pipe.execute(), strict=True):
            if isinstance(head, bytes) and len(head) == STORED_HEADER_BYTES:
                header = np.frombuffer(head, STORED_HEADER_DTYPE)
                if header["count"][0] == 0 and header["flags"][0] & FLAG_ERASED:
                    found.add(customer_id)
        return found

    def rollback(self, partition: int, committed_offset: int) -> int:
        """Undo the partition's last write if its transaction never committed (the group's
        committed offset is below that write's end); returns the windows restored, -1 if the
        write stands. Either way its undo record is dropped."""
        with script_errors():
            return int(self._rollback(args=[self.prefix, partition, committed_offset, self.ttl]))

    def quiet_key(self, partition: int) -> str:
        return self.keys.quiet(partition)

    def clocks(self) -> dict[int, int]:
        """Each events partition's stored event-time clock."""
        stored = self.client.hgetall(self.keys.clock)
        return {int(p): int(float(c)) for p, c in stored.items()}

    def raw_value(self, customer_id: str) -> bytes | None:
        value = self.client.get(self.window_key(customer_id))
        return value if isinstance(value, bytes) else None
