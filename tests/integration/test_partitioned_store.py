"""The state on a Redis Cluster (state/partitioned.py) against the same state on one Redis:
a stream read, scored and written batch by batch gives the same windows, statuses, due
silences and stored headers, customer by customer."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import redis
from redis.cluster import RedisCluster

from consumer.segments import scan as segments
from consumer.settings import cluster_seed_urls
from state.partitioned import PartitionedStore, partition_prefix
from state.store import APPLIED, REPLAY, UPDATE_ARG_DTYPE, AppliedBatch, EventBatch, StateStore, event_tag
from training.history import history_from_table, history_table
from training.simulate import simulate

DAY = 86_400
T0 = 1_650_000_000
PARTITIONS = 6
MARKS = (10 * DAY, 30 * DAY)


@pytest.fixture
def stores(stack: dict[str, str], redis_cluster: str, unique: str) -> Iterator[tuple[StateStore, PartitionedStore]]:
    single = redis.Redis.from_url(stack["redis"])
    cluster = RedisCluster.from_url(cluster_seed_urls(redis_cluster)[0])
    yield (StateStore(single, f"s{unique}", 6, 2 * DAY, 3600, MARKS, keeps_undo=True),
           PartitionedStore(cluster, f"c{unique}", 6, 2 * DAY, 3600, MARKS, keeps_undo=True, partitions=PARTITIONS))
    for key in single.scan_iter(f"s{unique}:*"):
        single.delete(key)
    for key in cluster.scan_iter(f"c{unique}:*", target_nodes=RedisCluster.PRIMARIES):
        cluster.delete(key)
    cluster.close()


def stream(seed: int) -> list[EventBatch]:
    """A simulated stream over six partitions in batches of 97, a little out of order."""
    history = history_from_table(history_table(simulate(60, seed=seed)), "sim")
    order = np.argsort(history.ts, kind="stable")
    rng = np.random.default_rng(seed)
    for i in rng.choice(len(order) - 5, size=len(order) // 20, replace=False):
        order[i], order[i + 3] = order[i + 3], order[i]
    codes = history.codes("coarse")
    customers = [str(history.customer_ids[c]) for c in history.customer[order]]
    partition = np.array([sum(map(ord, c)) % PARTITIONS for c in customers], dtype=np.int64)
    tags = np.array([event_tag(f"e{i}") for i in order], dtype=np.uint32)
    batches = []
    for start in range(0, len(order), 97):
        rows = np.arange(start, min(start + 97, len(order)))
        batches.append(EventBatch([customers[r] for r in rows], partition[rows], rows.astype(np.int64),
                                  history.ts[order[rows]], codes[order[rows]], codes[order[rows]], tags[rows]))
    return batches


def per_customer(applied: AppliedBatch, events: EventBatch) -> dict[str, object]:
    """What a batch's scoring sees, by event and by due customer: order-free."""
    raw, has = applied.windows(events, 8, "coarse")
    seen: dict[str, object] = {}
    for i in range(len(events)):
        seen[f"event {i}"] = (int(applied.status[i]), bool(has[i]), raw.ts[i].tolist(), raw.codes[i].tolist())
    for due in applied.due:
        name = f"due {applied.customers[int(due['customer'])]} {int(due['mark'])}"
        seen[name] = (int(due["partition"]), int(due["last_ts"]))
    return seen


def alert_some(applied: AppliedBatch, ts: int) -> np.ndarray:
    """Alert-state updates for the customers whose name ends in 3 or 7, by the store's own
    customer order (which differs between the stores)."""
    rows = np.array([i for i, c in enumerate(applied.customers) if c[-1] in "37"], dtype=np.int64)
    updates = np.zeros(len(rows), UPDATE_ARG_DTYPE)
    updates["customer"], updates["flags"], updates["alert_ts"] = rows, 1, ts
    return updates


def test_a_stream_gives_the_same_state_on_a_cluster_as_on_one_redis(
    stores: tuple[StateStore, PartitionedStore],
) -> None:
    single, cluster = stores
    batches = stream(seed=5)
    pending_single = pending_cluster = None
    due_seen = 0
    for events in batches:
        seen_single, pending_single = single.preview(events, pending_single)
        seen_cluster, pending_cluster = cluster.preview(events, pending_cluster)
        assert per_customer(seen_cluster, events) == per_customer(seen_single, events)
        due_seen += len(seen_cluster.due)
        for seen, pending in ((seen_single, pending_single), (seen_cluster, pending_cluster)):
            pending.set_updates(alert_some(seen, int(events.ts.max())))
    assert pending_single is not None and pending_cluster is not None
    single.write(pending_single)
    cluster.write(pending_cluster)
    assert cluster.clocks() == single.clocks()
    assert due_seen > 20, "the stream made silences due"
    partition_of = {c: int(p) for events in batches for c, p in zip(events.customer_ids, events.partition.tolist(),
                                                                     strict=True)}
    for customer, partition in sorted(partition_of.items()):
        # the same bytes: windows, alert state and the latest prediction
        assert cluster._part(partition).raw_value(customer) == single.raw_value(customer), customer
    again, _ = cluster.preview(batches[-1])
    assert (again.status != APPLIED).all(), "the last batch was stored: its events are replays"


def test_each_partition_lives_in_one_slot(stores: tuple[StateStore, PartitionedStore]) -> None:
    _, cluster = stores
    events = stream(seed=6)[0]
    cluster.apply(events)
    slots: dict[int, set[int]] = {}
    for key in cluster.client.scan_iter(f"{cluster.prefix}:*", target_nodes=RedisCluster.PRIMARIES):
        name = key.decode()
        if name.startswith(cluster.prefix + ":{p"):
            partition = int(name[len(cluster.prefix) + 3 : name.index("}")])
            slots.setdefault(partition, set()).add(cluster.client.keyslot(name))
    assert set(slots) == set(np.unique(events.partition).tolist())
    assert all(len(s) == 1 for s in slots.values()), slots
    assert all(next(iter(slots[p])) == cluster.client.keyslot(partition_prefix(cluster.prefix, p)) for p in slots)


def test_a_rolled_back_partition_returns_to_its_committed_state(stores: tuple[StateStore, PartitionedStore]) -> None:
    _, cluster = stores
    first, second = stream(seed=7)[:2]
    for p in range(PARTITIONS):
        cluster.claim(p)
    _, pending = cluster.preview(first)
    _, after_first = cluster.preview(second, pending)  # stores the first batch
    cluster.write(after_first)  # ... and the second, whose transaction "never commits"
    committed = int(second.offset.min())
    for p in range(PARTITIONS):
        cluster.rollback(p, committed)
    again, _ = cluster.preview(second)
    assert not (again.status == REPLAY).any(), "the second batch is new again: rolled back"
    kept, _ = cluster.preview(first)
    assert not (kept.status == APPLIED).any(), "the first, committed, stays"


def test_an_erased_customer_stays_erased_on_the_cluster(stores: tuple[StateStore, PartitionedStore]) -> None:
    """A batch in flight before the erasure brings nothing back, the same events again restore
    nothing, and the segments scan of every master does not list the customer."""
    _, cluster = stores
    customers = [f"x{i}" for i in range(8)]
    rows = [(c, cluster.partition_of(c)) for c in customers]
    first = EventBatch(customers, np.array([p for _, p in rows]), np.arange(8), np.full(8, T0), np.ones(8, np.uint32),
                       np.ones(8, np.uint32), np.arange(8, dtype=np.uint32))
    cluster.apply(first)
    later = EventBatch(customers, first.partition, np.arange(8, 16), np.full(8, T0 + 60), np.ones(8, np.uint32),
                       np.ones(8, np.uint32), np.arange(8, 16, dtype=np.uint32))
    _, pending = cluster.preview(later)
    gone = customers[3]
    cluster.erase(gone, cluster.partition_of(gone), 16)
    cluster.write(pending)
    assert cluster.erased(customers) == {gone}
    again = cluster.apply(first)
    assert again.status[3] == REPLAY and cluster.erased([gone]) == {gone}
    listed = segments.scan(cluster.client, cluster.prefix, 4).customer_ids
    assert sorted(listed) == sorted(set(customers) - {gone}), "every master scanned, the erased one left out"


def test_the_segments_scan_of_a_cluster_equals_one_redis(stores: tuple[StateStore, PartitionedStore]) -> None:
    single, cluster = stores
    for events in stream(seed=8)[:6]:
        single.apply(events)
        cluster.apply(events)
    on_one = segments.scan(single.client, single.prefix, 4)
    on_cluster = segments.scan(cluster.client, cluster.prefix, 4)
    order_one, order_cluster = np.argsort(on_one.customer_ids), np.argsort(on_cluster.customer_ids)
    assert len(on_one.customer_ids) > 20
    assert [on_one.customer_ids[i] for i in order_one] == [on_cluster.customer_ids[i] for i in order_cluster]
    for name in ("last_codes", "count", "last_ts", "pred_code"):
        assert (getattr(on_one, name)[order_one] == getattr(on_cluster, name)[order_cluster]).all(), name


@pytest.mark.timeout(600)  # the cluster's start may fall into this test's setup
def test_a_rebuild_into_the_cluster_equals_a_rebuild_into_one_redis(
    test_env: dict[str, str], redis_cluster: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`seqscore state rebuild` from one topic into one Redis and into the cluster: the same
    windows, quiet sets and clocks, customer by customer."""
    from confluent_kafka import Producer

    from consumer.bench.loadgen import event_values
    from consumer.clients import redis_client
    from consumer.ops.rebuild import rebuild_state
    from consumer.serve.topics import ensure_topics
    from consumer.settings import load_settings
    from tests.faults.runs import redis_state

    settings = load_settings()
    ensure_topics(settings)  # the test's topics, 4 partitions each
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for key, value in event_values(simulate(40, seed=9)):
        producer.produce(settings.topics.events, key=key, value=value)
    assert producer.flush(30) == 0
    states = []
    for url in (settings.redis_url, redis_cluster):
        monkeypatch.setenv("SEQSCORE_REDIS_URL", url)
        target = load_settings()
        tag_key = f"{target.state.key_prefix}:tag-key"
        # both tag events with one key, so that their windows compare byte for byte
        redis_client(target, "command").set(tag_key, b"rebuild-tag-key!")
        report = rebuild_state(target, target.topics.events, progress=None)
        assert report.events > 100 and len(report.status) >= 1, report
        states.append(redis_state(url, target.state.key_prefix))
    assert states[1] == states[0]
