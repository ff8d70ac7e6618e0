"""The state's round trip per batch on one Redis and on a Redis Cluster, with and without a
replica's confirmation (docs/scaling.md): the serving loop's chain of previews, each storing
the batch before it, over batches of 1024 events from 12 partitions and 20,000 customers.
The three stores run alternately, `--rounds` times, in this one process.

    python -m consumer.bench.state_round_trip --single redis://127.0.0.1:6379/0 \\
        --cluster redis+cluster://127.0.0.1:6380,127.0.0.1:6381/0
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Callable

import numpy as np
import redis
from redis.cluster import RedisCluster

from consumer.settings import cluster_seed_urls
from state.backend import Store
from state.partitioned import PartitionedStore
from state.store import EventBatch, StateStore, event_tag

BATCH, PARTITIONS, CUSTOMERS, BATCHES, WARMUP = 1024, 12, 20_000, 60, 10


def batches(seed: int = 1) -> list[EventBatch]:
    rng = np.random.default_rng(seed)
    out, t0 = [], 1_650_000_000
    for b in range(BATCHES):
        customer = rng.integers(0, CUSTOMERS, BATCH)
        offsets = np.arange(b * BATCH, (b + 1) * BATCH, dtype=np.int64)
        out.append(EventBatch([f"c{c}" for c in customer.tolist()], (customer % PARTITIONS).astype(np.int64), offsets,
                              t0 + offsets, rng.integers(1, 20, BATCH).astype(np.uint32),
                              rng.integers(1, 20, BATCH).astype(np.uint32),
                              np.array([event_tag(f"e{o}") for o in offsets.tolist()], np.uint32)))
    return out


def per_batch_ms(store: Store, stream: list[EventBatch]) -> tuple[float, float]:
    """Median and p99 of one preview (storing the batch before it), after a warm-up."""
    pending, times = None, []
    for events in stream:
        started = time.perf_counter()
        _, pending = store.preview(events, pending)
        times.append(time.perf_counter() - started)
    kept = np.array(times[WARMUP:]) * 1000
    return float(np.median(kept)), float(np.percentile(kept, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--single", required=True, help="a redis:// URL")
    parser.add_argument("--cluster", required=True, help="a redis+cluster:// URL")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    single = redis.Redis.from_url(args.single)
    cluster = RedisCluster.from_url(cluster_seed_urls(args.cluster)[0])
    stores: dict[str, Callable[[str], Store]] = {
        "one Redis": lambda prefix: StateStore(single, prefix, 50, 7 * 86_400, 3600),
        "cluster, no WAIT": lambda prefix: PartitionedStore(cluster, prefix, 50, 7 * 86_400, 3600, replicas=0,
                                                            partitions=PARTITIONS),
        "cluster, WAIT 1": lambda prefix: PartitionedStore(cluster, prefix, 50, 7 * 86_400, 3600, replicas=1,
                                                           partitions=PARTITIONS),
    }
    stream = batches()
    for _ in range(args.rounds):
        for name, make in stores.items():
            prefix = f"rt{uuid.uuid4().hex[:8]}"
            median, p99 = per_batch_ms(make(prefix), stream)
            print(f"{name:17s} median {median:6.2f} ms  p99 {p99:6.2f} ms per {BATCH}-event batch", flush=True)
            for key in single.scan_iter(f"{prefix}:*"):
                single.delete(key)
            for key in cluster.scan_iter(f"{prefix}:*", target_nodes=RedisCluster.PRIMARIES):
                cluster.delete(key)


if __name__ == "__main__":
    main()
