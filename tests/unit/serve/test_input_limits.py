"""Profiles, the scorer's other input, have the events' size limits: a record over the byte
limit, or a customer id (value or tombstone key) over MAX_ID_CHARS, is counted as invalid and
never reaches Redis (no servers; the event limits: test_events.py, test_poison.py)."""

from __future__ import annotations

from typing import Any

import orjson

from consumer.serve.metrics import Metrics
from consumer.serve.profiles import apply_profiles
from consumer.serve.source import decode_profile
from state.events import MAX_ID_CHARS


def profile(customer: str, padding: int = 0) -> bytes:
    return orjson.dumps({"customer_id": customer, "gender": "F", "age_group": "25-34", "note": "x" * padding})


def test_a_profile_over_the_limits_is_refused() -> None:
    assert decode_profile(profile("c" * MAX_ID_CHARS)) is not None
    assert decode_profile(profile("c" * (MAX_ID_CHARS + 1))) is None
    assert decode_profile(profile("c1", padding=900), max_bytes=1024) is not None
    assert decode_profile(profile("c1", padding=1100), max_bytes=1024) is None


class Record:
    def __init__(self, key: bytes | None, value: bytes | None) -> None:
        self._key, self._value = key, value

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value


class Store:
    """Records what would have been written to Redis."""

    def __init__(self) -> None:
        self.erased: list[str] = []
        self.profiles: list[str] = []

    def erase(self, customer: str) -> int:
        self.erased.append(customer)
        return 1

    def set_profiles(self, ids: list[str], genders: list[int], ages: list[int]) -> None:
        self.profiles += ids


def test_apply_profiles_counts_oversized_records_and_keys_as_invalid() -> None:
    store, metrics = Store(), Metrics()
    long_id = "c" * (MAX_ID_CHARS + 1)
    records: list[Any] = [
        Record(b"c1", profile("c1")),
        Record(b"c2", profile("c2", padding=5000)),
        Record(long_id.encode(), profile(long_id)),
        Record(b"c3", None),  # a tombstone
        Record(long_id.encode(), None),  # a tombstone no customer can have
    ]
    apply_profiles(store, metrics, records, store.erase, max_bytes=4096)  # type: ignore[arg-type]
    assert store.profiles == ["c1"] and store.erased == ["c3"]
    counts = {kind: metrics.registry.get_sample_value("seqscore_profile_updates_total", {"kind": kind})
              for kind in ("updated", "erased", "invalid")}
    assert counts == {"updated": 1.0, "erased": 1.0, "invalid": 3.0}
