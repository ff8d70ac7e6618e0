"""What the serving loop and the commands use of the state: `StateStore` on one Redis,
`PartitionedStore` on a Redis Cluster (state/partitioned.py). A batch's write is the
store's own kind (`PendingWrite` or `PartitionedWrite`), handed back to the store that made
it, so it is typed loosely here."""

from __future__ import annotations

from typing import Any, Protocol

from state.store import AppliedBatch, EventBatch


class Store(Protocol):
    client: Any
    prefix: str
    capacity: int
    silence_marks: tuple[int, ...]
    max_due: int
    keeps_undo: bool
    claims: dict[int, int]

    def apply(self, batch: EventBatch, clocks: dict[int, int] | None = None) -> AppliedBatch: ...

    def preview(
        self, batch: EventBatch, before: Any = None, clocks: dict[int, int] | None = None
    ) -> tuple[AppliedBatch, Any]: ...

    def write(self, pending: Any) -> bool: ...

    def claim(self, partition: int) -> int: ...

    def rollback(self, partition: int, committed_offset: int) -> int: ...

    def tag_key(self) -> bytes: ...

    def clocks(self) -> dict[int, int]: ...

    def set_profiles(self, customer_ids: list[str], gender: list[int], age_group: list[int]) -> None: ...

    def stored_partition(self, customer_id: str) -> int | None: ...

    def erase(self, customer_id: str, partition: int, next_offset: int) -> int: ...

    def erased(self, customer_ids: list[str]) -> set[str]: ...
