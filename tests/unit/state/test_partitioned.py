"""The Redis Cluster store's pure parts: merging the partitions' replies into one batch's,
and routing the batch's header updates back to each partition's write."""

from __future__ import annotations

import numpy as np

from state.layout import CLOCK_DTYPE, DUE_DTYPE, HEADER_DTYPE, RECORD_DTYPE, UPDATE_ARG_DTYPE, ApplyArgs
from state.partitioned import PartitionedWrite, merge_applied, partition_prefix
from state.store import AppliedBatch, PendingWrite


def applied(customers: list[str], customer_index: list[int], records_per_customer: list[int],
            due_customer: list[int], partition: int) -> AppliedBatch:
    headers = np.zeros(len(customers), HEADER_DTYPE)
    headers["n_records"] = records_per_customer
    records = np.zeros(sum(records_per_customer), RECORD_DTYPE)
    records["ts"] = np.arange(len(records)) + 100 * partition
    due = np.zeros(len(due_customer), DUE_DTYPE)
    due["customer"], due["partition"] = due_customer, partition
    clocks = np.zeros(1, CLOCK_DTYPE)
    clocks["partition"] = partition
    n = len(customer_index)
    return AppliedBatch(
        customers=customers, customer_index=np.array(customer_index, np.int64), headers=headers, records=records,
        record_start=np.concatenate([[0], np.cumsum(records_per_customer)[:-1]]).astype(np.int64),
        gender=np.full(len(customers), -1), age_group=np.full(len(customers), -1),
        status=np.full(n, partition, np.int64), position=np.arange(n, dtype=np.int64) + 1, due=due, clocks=clocks,
        moved=np.zeros(n, np.bool_), deferred=np.zeros(0, np.int64), behind_state=np.zeros(n, np.bool_))


def test_partitions_replies_merge_into_the_batchs_event_order() -> None:
    # events 0, 2 on partition 3 (customers a, b; c due); events 1, 3, 4 on partition 5 (d, e)
    three = applied(["a", "b", "c"], [0, 1], [2, 1, 1], [2], partition=3)
    five = applied(["d", "e"], [0, 1, 0], [1, 3], [], partition=5)
    merged = merge_applied([(three, np.array([0, 2])), (five, np.array([1, 3, 4]))], 5)
    assert merged.customers == ["a", "b", "c", "d", "e"]
    assert merged.customer_index.tolist() == [0, 3, 1, 4, 3]
    assert merged.status.tolist() == [3, 5, 3, 5, 5]
    assert merged.record_start.tolist() == [0, 2, 3, 4, 5], "records of partition 5 after partition 3's 4"
    assert merged.records["ts"][merged.record_start[3]] == 500
    assert merged.due["customer"].tolist() == [2] and merged.clocks["partition"].tolist() == [3, 5]


def test_an_empty_batch_merges_into_an_empty_reply() -> None:
    merged = merge_applied([], 0)
    assert merged.customers == [] and len(merged.status) == 0 and len(merged.due) == 0 and len(merged.clocks) == 0


def test_each_update_goes_to_its_partitions_write_with_its_own_customer_index() -> None:
    def write() -> PendingWrite:
        args = ApplyArgs(capacity=4, lateness_s=0, ttl_s=1, n_events=0, mode="w", n_updates=0, events=b"",
                         updates=b"", prefix="p", marks=b"", clocks=b"", undo=b"", n_own=0, max_due=1)
        return PendingWrite([], args)

    batch = PartitionedWrite({3: write(), 5: write()}, {3: (0, 3), 5: (3, 2)})
    updates = np.zeros(3, UPDATE_ARG_DTYPE)
    updates["customer"], updates["alert_ts"] = [1, 3, 4], [10, 30, 40]
    batch.set_updates(updates)
    three, five = batch.parts[3].updates, batch.parts[5].updates
    assert three is not None and five is not None
    assert three["customer"].tolist() == [2] and three["alert_ts"].tolist() == [10], "1-based in the script"
    assert five["customer"].tolist() == [1, 2] and five["alert_ts"].tolist() == [30, 40]


def test_a_partitions_keys_share_one_hash_tag() -> None:
    assert partition_prefix("seqscore", 7) == "seqscore:{p7}"


def test_a_moved_slot_reads_the_slot_map_again_and_is_retried_as_an_outage() -> None:
    """redis-py turns a node's `MOVED 15882 host:port` into a MovedError whose text is
    `15882 host:port`: the cluster failover test stalled for good on it, retried without the
    slot map ever being read again."""
    import pytest
    import redis

    from state.partitioned import PartitionedStore, TopologyChanged

    class NodesManager:
        reads = 0

        def initialize(self) -> None:
            NodesManager.reads += 1

    class Cluster:
        nodes_manager = NodesManager()

    store = PartitionedStore(Cluster(), "p", 4, 0, 1)  # type: ignore[arg-type]

    def moved() -> None:
        raise redis.exceptions.MovedError("15882 127.0.0.1:13558")

    with pytest.raises(TopologyChanged):
        store._guarded(moved)
    assert NodesManager.reads == 1
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        store._guarded(lambda: (_ for _ in ()).throw(redis.exceptions.ResponseError("WRONGTYPE wrong kind")))
    assert NodesManager.reads == 1, "another reply is not a topology change"
