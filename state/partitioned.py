"""State on a Redis Cluster: each events partition's state in one hash slot.

A batch's script call touches many customers' windows and its partitions' clocks, quiet sets,
owner generations and undo records, and must be atomic: the undo record with the writes it
undoes. So on a cluster every key of events partition P carries the hash tag `{pP}`: the
keys of partition 7 live under the key prefix `PREFIX:{p7}` (the layout of state/layout.py,
one copy per partition), all in one slot. Each partition is a StateStore of its own, served
by the node that owns its slot; a batch becomes one script call per partition, and the calls
of the partitions one node serves share one pipeline: one round trip per node, the nodes in
parallel. This is how Kafka Streams keeps state, per input partition.

What it costs (docs/scaling.md): a customer's state follows the partition their events come
from. A topic that gains partitions moves customers to new partitions, whose state starts
empty: rebuild it from the topic (`seqscore state rebuild`) into a new key prefix, as for a
window change. A customer whose events change partition within a topic (a producer keying
differently) starts a new window there.

Durability: Redis replicates asynchronously, so a master that dies may take acknowledged
writes with it when its replica is promoted. Every pipeline that writes ends with WAIT for
`replicas` replicas: the batch's offsets are committed only after its state reached a
replica. A master with no replica connected (its replica was promoted and the old master has
not come back yet) cannot confirm: the write stands, unconfirmed, and is counted.
"""

from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import redis
from numpy.typing import NDArray
from redis.cluster import RedisCluster

from state.errors import StateScriptError
from state.layout import MAX_DUE, TAG_KEY_BYTES, Keys
from state.partitioning import java_partition
from state.store import AppliedBatch, EventBatch, PendingWrite, ScriptCall, StateStore, script_errors

log = logging.getLogger(__name__)

# What a node answers when the cluster moved a slot or promoted a replica since the slot map
# was read: the map is read again and the call retried (RedisRetry), which is safe because
# every state call is idempotent.
TOPOLOGY_ERRORS = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ResponseError,
)
# redis-py parses these replies into their own classes, whose text drops the reply's first
# word ("MOVED 15882 host:port" becomes "15882 host:port"): matched by class, not by text
CLUSTER_REPLIES = (
    redis.exceptions.AskError,  # and MovedError
    redis.exceptions.ClusterDownError,  # and MasterDownError
    redis.exceptions.TryAgainError,
    redis.exceptions.ReadOnlyError,
)
NON_LOCAL = ("non local key", "MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN", "READONLY", "MASTERDOWN", "LOADING")


class TopologyChanged(redis.ConnectionError):
    """A node no longer serves a slot it was asked for: a failover or a resharding."""


T = TypeVar("T")


def partition_prefix(prefix: str, partition: int) -> str:
    """The key prefix of one events partition's state: one hash slot."""
    return f"{prefix}:{{p{partition}}}"


@dataclass
class PartitionedWrite:
    """A batch's state writes, one per partition; `set_updates` takes the batch's updates in
    the merged customer order (AppliedBatch of `PartitionedStore.preview`)."""

    parts: dict[int, PendingWrite] = field(default_factory=dict)
    customers: dict[int, tuple[int, int]] = field(default_factory=dict)  # partition -> (first, count)

    def set_updates(self, updates: NDArray[np.void]) -> None:
        index = updates["customer"].astype(np.int64)
        for partition, write in self.parts.items():
            first, count = self.customers[partition]
            mine = (index >= first) & (index < first + count)
            if mine.any():
                own = updates[mine].copy()
                own["customer"] -= first
                write.set_updates(own)


def merge_applied(parts: list[tuple[AppliedBatch, NDArray[np.int64]]], n_events: int) -> AppliedBatch:
    """One AppliedBatch from the partitions' own: customers concatenated in partition order,
    per-event fields back at the events' places in the batch (`rows`)."""
    if not parts:
        return AppliedBatch.from_reply([], np.zeros(0, np.int64), [b"", b"", b"", b"", b"", [], b"", b""])
    customer_index = np.zeros(n_events, np.int64)
    status = np.zeros(n_events, np.int64)
    position = np.zeros(n_events, np.int64)
    moved = np.zeros(n_events, np.bool_)
    behind = np.zeros(n_events, np.bool_)
    customers: list[str] = []
    dues, record_starts = [], []
    n_records = 0
    for applied, rows in parts:
        customer_index[rows] = applied.customer_index + len(customers)
        status[rows], position[rows] = applied.status, applied.position
        moved[rows], behind[rows] = applied.moved, applied.behind_state
        due = applied.due.copy()
        due["customer"] += len(customers)
        dues.append(due)
        record_starts.append(applied.record_start + n_records)
        customers += applied.customers
        n_records += len(applied.records)
    return AppliedBatch(
        customers=customers,
        customer_index=customer_index,
        headers=np.concatenate([a.headers for a, _ in parts]),
        records=np.concatenate([a.records for a, _ in parts]),
        record_start=np.concatenate(record_starts).astype(np.int64),
        gender=np.concatenate([a.gender for a, _ in parts]).astype(np.int64),
        age_group=np.concatenate([a.age_group for a, _ in parts]).astype(np.int64),
        status=status,
        position=position,
        due=np.concatenate(dues),
        clocks=np.concatenate([a.clocks for a, _ in parts]),
        moved=moved,
        deferred=np.unique(np.concatenate([a.deferred for a, _ in parts])).astype(np.int64),
        behind_state=behind,
    )


class PartitionedStore:
    """StateStore's interface on a Redis Cluster (see the module's docstring)."""

    def __init__(
        self,
        client: RedisCluster,
        prefix: str,
        capacity: int,
        lateness_seconds: int,
        ttl_seconds: int,
        silence_marks: tuple[int, ...] = (),
        keeps_undo: bool = False,
        max_due: int = MAX_DUE,
        partitions: int = 1,
        replicas: int = 1,
        replica_timeout_ms: int = 1000,
        on_unconfirmed: Callable[[int], None] | None = None,
    ) -> None:
        """`partitions`: the events topic's, for a customer's partition where no event says it.
        `replicas`: how many replicas each write waits for (0: none); `on_unconfirmed` is
        told how many pipelines' writes no replica confirmed within `replica_timeout_ms`."""
        self.client = client
        self.prefix = prefix
        self.keys = Keys(prefix)
        self.capacity = capacity
        self.lateness = lateness_seconds
        self.ttl = ttl_seconds
        self.silence_marks = tuple(sorted(silence_marks))
        self.keeps_undo = keeps_undo
        self.max_due = max_due
        self.partitions = partitions
        self.replicas = replicas
        self.replica_timeout_ms = replica_timeout_ms
        self.on_unconfirmed = on_unconfirmed
        self.claims: dict[int, int] = {}
        self._parts: dict[int, StateStore] = {}
        self._pool: ThreadPoolExecutor | None = None

    # -- StateStore's interface -----------------------------------------------------------
    def apply(self, batch: EventBatch, clocks: dict[int, int] | None = None) -> AppliedBatch:
        return self._rerouted(functools.partial(self._apply, batch, clocks))

    def _apply(self, batch: EventBatch, clocks: dict[int, int] | None) -> AppliedBatch:
        rows = self._rows_by_partition(batch)
        partitions = sorted(set(rows) | set(clocks or {}))
        calls = {p: self._part(p).apply_call(batch.take(rows.get(p, _NONE)), _only(clocks, p)) for p in partitions}
        done = self._run(calls, writes=True)
        return merge_applied([(done[p], rows.get(p, _NONE)) for p in partitions], len(batch))

    def preview(
        self, batch: EventBatch, before: PartitionedWrite | None = None, clocks: dict[int, int] | None = None
    ) -> tuple[AppliedBatch, PartitionedWrite]:
        return self._rerouted(functools.partial(self._preview, batch, before, clocks))

    def _preview(
        self, batch: EventBatch, before: PartitionedWrite | None, clocks: dict[int, int] | None
    ) -> tuple[AppliedBatch, PartitionedWrite]:
        rows = self._rows_by_partition(batch)
        read = sorted(set(rows) | set(clocks or {}))
        stored = before.parts if before is not None else {}
        calls: dict[int, ScriptCall[Any]] = {
            p: self._part(p).preview_call(batch.take(rows.get(p, _NONE)), stored.get(p), _only(clocks, p))
            for p in read
        }
        calls.update({p: self._part(p).write_call(w) for p, w in stored.items() if p not in calls})
        done = self._run(calls, writes=before is not None)
        write = PartitionedWrite()
        first = 0
        for p in read:
            applied, write.parts[p] = done[p]
            write.customers[p] = (first, len(applied.customers))
            first += len(applied.customers)
        return merge_applied([(done[p][0], rows.get(p, _NONE)) for p in read], len(batch)), write

    def write(self, pending: PartitionedWrite) -> bool:
        return self._rerouted(functools.partial(self._write, pending))

    def _write(self, pending: PartitionedWrite) -> bool:
        done = self._run({p: self._part(p).write_call(w) for p, w in pending.parts.items()}, writes=True)
        return all(done.values())

    def claim(self, partition: int) -> int:
        generation: int = self._rerouted(
            lambda: self._guarded(lambda: self._confirmed(partition, self._part(partition).claim(partition))))
        self.claims[partition] = generation
        return generation

    def rollback(self, partition: int, committed_offset: int) -> int:
        """As StateStore.rollback; confirmed by a replica like a batch's write, since a
        rollback lost to a failover would bring back a write whose outputs were aborted."""
        return self._rerouted(lambda: self._guarded(
            lambda: self._confirmed(partition, self._part(partition).rollback(partition, committed_offset))))

    def tag_key(self) -> bytes:
        """One key for the whole state, as on a single Redis (a plain key, in any slot)."""
        name = self.keys.tag_key
        self.client.set(name, secrets.token_bytes(TAG_KEY_BYTES), nx=True)
        key = self.client.get(name)
        assert isinstance(key, bytes)
        return key

    def partition_of(self, customer_id: str) -> int:
        """The events partition the producers' default partitioner gives the customer."""
        return java_partition(customer_id.encode(), self.partitions)

    def set_profiles(self, customer_ids: list[str], gender: list[int], age_group: list[int]) -> None:
        """Profiles live beside the windows, in the slot of the customer's events partition."""
        by_partition: dict[int, list[int]] = {}
        for i, customer in enumerate(customer_ids):
            by_partition.setdefault(self.partition_of(customer), []).append(i)
        for p, rows in by_partition.items():
            self._guarded(functools.partial(self._part(p).set_profiles, [customer_ids[i] for i in rows],
                                            [gender[i] for i in rows], [age_group[i] for i in rows]))

    def stored_partition(self, customer_id: str) -> int | None:
        p = self.partition_of(customer_id)
        return self._guarded(lambda: self._part(p).stored_partition(customer_id))

    def erase(self, customer_id: str, partition: int, next_offset: int) -> int:
        """As StateStore.erase, in the slot of `partition`; a copy the customer left in
        another partition's slot (their events moved) is erased there too. Confirmed by a
        replica: an erasure lost to a failover would bring the customer's data back."""
        removed = self._guarded(lambda: self._confirmed(
            partition, self._part(partition).erase(customer_id, partition, next_offset)))
        for other in sorted(set(self.clocks()) - {partition}):
            part = self._part(other)
            if part.stored_partition(customer_id) is not None:
                removed += self._guarded(functools.partial(self._erase_confirmed, part, customer_id, other))
        return int(removed)

    def _erase_confirmed(self, part: StateStore, customer_id: str, partition: int) -> int:
        return self._confirmed(partition, part.erase(customer_id, partition, 0))

    def erased(self, customer_ids: list[str]) -> set[str]:
        found: set[str] = set()
        for customer in customer_ids:
            p = self.partition_of(customer)
            found |= self._guarded(functools.partial(self._part(p).erased, [customer]))
        return found

    def clocks(self) -> dict[int, int]:
        """Each events partition's stored event-time clock, from every partition's slot."""
        found: dict[int, int] = {}
        for key in self.client.scan_iter(match=f"{self.prefix}:{{p*}}:clock", target_nodes=RedisCluster.PRIMARIES):
            for partition, clock in self.client.hgetall(key).items():
                found[int(partition)] = int(float(clock))
        return found

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        self.client.close()

    # -- routing --------------------------------------------------------------------------
    def _part(self, partition: int) -> StateStore:
        """The partition's own store, on a plain connection to the node that owns its slot,
        holding this member's claim of the partition only."""
        store = self._parts.get(partition)
        if store is None:
            prefix = partition_prefix(self.prefix, partition)
            node = self.client.get_node_from_key(prefix)
            store = StateStore(self.client.get_redis_connection(node), prefix, self.capacity, self.lateness,
                               self.ttl, self.silence_marks, self.keeps_undo, self.max_due)
            self._parts[partition] = store
        store.claims = {partition: self.claims[partition]} if partition in self.claims else {}
        return store

    @staticmethod
    def _rows_by_partition(batch: EventBatch) -> dict[int, NDArray[np.int64]]:
        if not len(batch):
            return {}
        order = np.argsort(batch.partition, kind="stable")
        partitions, starts = np.unique(batch.partition[order], return_index=True)
        return {int(p): rows for p, rows in zip(partitions.tolist(), np.split(order, starts[1:]), strict=True)}

    def _run(self, calls: dict[int, ScriptCall[Any]], writes: bool) -> dict[int, Any]:
        """Every partition's call, one pipeline per node, the nodes in parallel."""
        by_node: dict[int, list[int]] = {}
        clients: dict[int, redis.Redis] = {}
        for p in sorted(calls):
            client = self._part(p).client
            by_node.setdefault(id(client), []).append(p)
            clients[id(client)] = client
        jobs = [(clients[node], [(p, calls[p]) for p in ps]) for node, ps in by_node.items()]
        runs = [functools.partial(self._run_on_node, client, node_calls, writes) for client, node_calls in jobs]
        if len(runs) <= 1:
            results = [self._guarded(run) for run in runs]
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="seqscore-redis-node")
            results = [future.result() for future in [self._pool.submit(self._guarded, run) for run in runs]]
        return {p: value for result in results for p, value in result.items()}

    def _run_on_node(
        self, client: redis.Redis, calls: list[tuple[int, ScriptCall[Any]]], writes: bool
    ) -> dict[int, Any]:
        wait = writes and self.replicas > 0
        for attempt in range(2):
            pipe = client.pipeline(transaction=False)
            for _, call in calls:
                call.queue(pipe)
            if wait:
                pipe.execute_command("WAIT", self.replicas, self.replica_timeout_ms)
            try:
                with script_errors():
                    replies = pipe.execute(raise_on_error=True)
                break
            except redis.exceptions.NoScriptError:
                if attempt:
                    raise
                self._part(calls[0][0]).load_scripts()
        if wait and int(replies.pop()) < self.replicas and self.on_unconfirmed is not None:
            self.on_unconfirmed(1)
        done, at = {}, 0
        for partition, call in calls:
            done[partition] = call.finish(replies[at : at + call.replies])
            at += call.replies
        return done

    def _confirmed(self, partition: int, result: int) -> int:
        """`result`, once the partition's node has replicated what it wrote (see the module)."""
        if self.replicas > 0:
            acked = int(self._part(partition).client.execute_command("WAIT", self.replicas, self.replica_timeout_ms))
            if acked < self.replicas and self.on_unconfirmed is not None:
                self.on_unconfirmed(1)
        return result

    def _guarded(self, call: Callable[[], Any]) -> Any:
        """Run `call`; a node that no longer serves the slots it was asked for (a failover, a
        resharding) makes the slot map be read again, and is raised as an outage to retry."""
        try:
            return call()
        except StateScriptError as exc:
            if "non local key" not in str(exc):
                raise
            self._refresh(exc)
            raise TopologyChanged(f"Redis Cluster slot moved: {exc}") from exc
        except TOPOLOGY_ERRORS as exc:
            if (isinstance(exc, redis.exceptions.ResponseError) and not isinstance(exc, CLUSTER_REPLIES)
                    and not str(exc).startswith(NON_LOCAL)):
                raise
            self._refresh(exc)
            raise TopologyChanged(f"Redis Cluster topology changed: {exc}") from exc

    def _rerouted(self, operation: Callable[[], T]) -> T:
        """Run `operation`, which routes its calls by the slot map; when the map changed under
        it, once more at once on the new map (every state call is idempotent), so that a
        failover costs its own duration, not the outage retry's backoff. A second failure is
        an outage (TopologyChanged is a ConnectionError), retried by the caller."""
        try:
            return operation()
        except TopologyChanged:
            return operation()

    def _refresh(self, cause: Exception) -> None:
        log.warning("Redis Cluster: reading the slot map again (%s)", cause)
        self._parts.clear()
        try:
            self.client.nodes_manager.initialize()
        except redis.RedisError as exc:
            log.warning("Redis Cluster: the slot map could not be read yet (%s)", exc)


_NONE = np.zeros(0, np.int64)


def _only(clocks: dict[int, int] | None, partition: int) -> dict[int, int] | None:
    return {partition: clocks[partition]} if clocks and partition in clocks else None
