"""Segments for marketing: customers filtered by their last activities, their predicted next
activity and their churn risk, read from the scorer's state in Redis.

Each window value holds the customer's latest prediction (written with the window, after the
outputs were acknowledged), so a segment is a scan of the windows: no second store to keep
in step. Activities are stored as codes; names come from the serving model's vocabulary
(an activity the model does not know shows as its code).
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources

import numpy as np
import redis
from numpy.typing import NDArray
from redis.cluster import RedisCluster

from state.encoding import activity_code
from state.layout import RECORD_DTYPE, STORED_HEADER_BYTES, STORED_HEADER_DTYPE, Keys

WILDCARD = "*"
SCAN_BATCH = 1000
CSV_COLUMNS = ("customer_id", "last_activities", "predicted_next", "churn_risk", "scored_at", "last_event_at", "events")


@dataclass
class Snapshot:
    """Every customer with state, as arrays (customer order of the scan)."""

    customer_ids: list[str]
    last_codes: NDArray[np.uint32]  # (n, k) pre-padded with 0, newest last
    pred_code: NDArray[np.uint32]
    churn_risk: NDArray[np.float32]
    pred_ts: NDArray[np.int64]  # 0: never scored
    last_ts: NDArray[np.int64]
    count: NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.customer_ids)

    def last(self, k: int) -> Snapshot:
        """The same customers with only their newest `k` activities."""
        if k > self.last_codes.shape[1]:
            raise ValueError(f"the snapshot holds the last {self.last_codes.shape[1]} activities, not {k}")
        return dataclasses.replace(self, last_codes=self.last_codes[:, self.last_codes.shape[1] - k :])


def scan(client: redis.Redis | RedisCluster, prefix: str, last_k: int) -> Snapshot:
    """Header and last `last_k` records of every customer window, one script call per SCAN
    page (state/scripts/window_tails.lua), parsed page by page into arrays. On a Redis
    Cluster every master is scanned, each page read in one pipeline of GETs on its node
    (a script may not touch keys of several slots)."""
    ids: list[str] = []
    heads: list[NDArray[np.void]] = []
    codes: list[NDArray[np.uint32]] = []
    newest: list[NDArray[np.int64]] = []
    names = Keys(prefix)
    for keys, values in _tails(client, names, last_k):
        # gone since the SCAN, or an erased customer's tombstone (no events)
        kept = [(key, value) for key, value in zip(keys, values, strict=True)
                if len(value) >= STORED_HEADER_BYTES and _has_events(value)]
        page_codes = np.zeros((len(kept), last_k), dtype=np.uint32)
        page_newest = np.zeros(len(kept), dtype=np.int64)
        for i, (_, value) in enumerate(kept):
            records = np.frombuffer(value[STORED_HEADER_BYTES:], dtype=RECORD_DTYPE)
            if len(records):
                page_codes[i, last_k - len(records) :] = records["coarse"]
                page_newest[i] = int(records["ts"][-1])
        ids += [names.customer_of_window(key) for key, _ in kept]
        heads.append(np.frombuffer(b"".join(value[:STORED_HEADER_BYTES] for _, value in kept),
                                   dtype=STORED_HEADER_DTYPE))
        codes.append(page_codes)
        newest.append(page_newest)
    head = np.concatenate(heads) if heads else np.zeros(0, STORED_HEADER_DTYPE)
    return Snapshot(
        customer_ids=ids,
        last_codes=np.concatenate(codes) if codes else np.zeros((0, last_k), np.uint32),
        pred_code=head["pred_code"].astype(np.uint32),
        churn_risk=head["pred_risk"].astype(np.float32),
        pred_ts=head["pred_ts"].astype(np.int64),
        last_ts=np.concatenate(newest) if newest else np.zeros(0, np.int64),
        count=head["count"].astype(np.int64),
    )


def _has_events(value: bytes) -> bool:
    return int(np.frombuffer(value[:STORED_HEADER_BYTES], STORED_HEADER_DTYPE)["count"][0]) > 0


def _tails(client: redis.Redis | RedisCluster, names: Keys, last_k: int) -> Iterator[tuple[list[bytes], list[bytes]]]:
    """Per SCAN page: its window keys and, per key, the header and newest records."""
    tail_bytes = last_k * RECORD_DTYPE.itemsize
    if isinstance(client, RedisCluster):
        for node in client.get_primaries():
            node_client = client.get_redis_connection(node)
            for keys in _pages(node_client, names.partitioned_windows):
                pipe = node_client.pipeline(transaction=False)
                for key in keys:
                    pipe.get(key)
                values = [v if isinstance(v, bytes) else b"" for v in pipe.execute()]
                yield keys, [v if len(v) <= STORED_HEADER_BYTES + tail_bytes
                             else v[:STORED_HEADER_BYTES] + v[len(v) - tail_bytes :] for v in values]
        return
    read_tails = client.register_script(resources.files("state").joinpath("scripts/window_tails.lua").read_text())
    for keys in _pages(client, names.windows):
        yield keys, read_tails(keys=keys, args=[STORED_HEADER_BYTES, tail_bytes])


def _pages(client: redis.Redis, pattern: str) -> list[list[bytes]]:
    pages, page = [], []
    for key in client.scan_iter(match=pattern, count=SCAN_BATCH):
        page.append(key)
        if len(page) == SCAN_BATCH:
            pages.append(page)
            page = []
    return [*pages, page] if page else pages


def parse_last(text: str, field: str = "--last") -> list[str]:
    """'A,B,*,C' -> ['A', 'B', '*', 'C']: the newest activity is the last one; a ValueError names `field`."""
    items = [item.strip() for item in text.split(",")] if text.strip() else []
    if any(not item for item in items):
        raise ValueError(f"{field}: empty activity in '{text}' (use * for any)")
    return items


def select(
    snapshot: Snapshot, last: list[str], predicted: str | None = None, min_churn: float = 0.0
) -> NDArray[np.int64]:
    """Indices of customers whose last activities match `last` (oldest first, `*` = any one),
    whose predicted next activity is `predicted` and whose churn risk is at least `min_churn`;
    riskiest first."""
    keep = snapshot.churn_risk >= min_churn
    keep &= snapshot.pred_ts > 0 if min_churn > 0 or predicted else True
    k = snapshot.last_codes.shape[1]
    if len(last) > k:
        raise ValueError(f"--last has {len(last)} activities; at most {k} are read")
    for offset, name in enumerate(reversed(last)):
        if name != WILDCARD:
            keep &= snapshot.last_codes[:, k - 1 - offset] == activity_code(name)
        else:
            keep &= snapshot.last_codes[:, k - 1 - offset] != 0
    if predicted:
        keep &= snapshot.pred_code == activity_code(predicted)
    rows = np.flatnonzero(keep)
    return rows[np.argsort(-snapshot.churn_risk[rows], kind="stable")]


def names_by_code(vocabulary: tuple[str, ...] | list[str]) -> dict[int, str]:
    return {activity_code(name): name for name in vocabulary}


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(int(ts), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if ts else ""


def rows_of(snapshot: Snapshot, rows: NDArray[np.int64], names: dict[int, str]) -> list[dict[str, object]]:
    def name(code: int) -> str:
        return names.get(code, f"#{code}")

    out = []
    for i in rows.tolist():
        codes = [int(c) for c in snapshot.last_codes[i] if c]
        out.append(
            {
                "customer_id": snapshot.customer_ids[i],
                "last_activities": ",".join(name(c) for c in codes),
                "predicted_next": name(int(snapshot.pred_code[i])) if snapshot.pred_ts[i] else "",
                "churn_risk": round(float(snapshot.churn_risk[i]), 4) if snapshot.pred_ts[i] else None,
                "scored_at": _iso(int(snapshot.pred_ts[i])),
                "last_event_at": _iso(int(snapshot.last_ts[i])),
                "events": int(snapshot.count[i]),
            }
        )
    return out


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: object) -> object:
    """A text cell that a spreadsheet would run as a formula (a customer id like `=HYPERLINK(..)`)
    gets a leading apostrophe, which spreadsheets show as text (OWASP's CSV injection advice)."""
    return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def to_csv(records: list[dict[str, object]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: spreadsheet_safe(v) for k, v in record.items()} for record in records)
    return buffer.getvalue()
