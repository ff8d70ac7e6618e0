"""What the loop does when the batches it holds cannot be completed: a refused delivery, lost
partitions, or an exactly-once transaction aborted by a rebalance. In every case neither
batch (the pending one and the one in hand) is committed, and both are read again from their
first offsets; docs/guarantees.md says why that gives the same outputs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from consumer.serve.checkpoint import Checkpoint
from consumer.serve.clocks import Paging
from consumer.serve.emit import DeliveryFailed
from consumer.serve.membership import Membership

log = logging.getLogger(__name__)


class Recovery:
    def __init__(
        self, checkpoint: Checkpoint, membership: Membership, paging: Paging, before_resend: Callable[[], None]
    ) -> None:
        """`before_resend`: runs before a refused batch is sent again (the dead-letter limit is
        read anew, since a dead letter that no longer fits is cut to the DLQ topic's limit)."""
        self.checkpoint = checkpoint
        self.membership = membership
        self.paging = paging
        self.before_resend = before_resend

    def send_again_after(self, failure: DeliveryFailed) -> None:
        """A record of the pending batch or of the batch in hand was refused: commit neither.
        Seek back to their first offsets, so that both are scored and sent again (their state
        was not stored: the same predictions), after a wait that doubles while it keeps
        failing; /readyz fails meanwhile."""
        wait = self.checkpoint.delivery_failed()
        first = self._drop_uncommitted()
        log.error("%s: nothing of the last batches is committed; sending them again in %.1fs", failure, wait)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            self.membership.keep()
            time.sleep(0.05)
        self.membership.seek_back(first)
        self.before_resend()
        self.membership.resume()

    def replay_after_loss(self) -> None:
        """Partitions were lost while a batch was pending or in hand: drop both (neither state
        nor offsets stored; exactly-once: the transaction aborted) and score again from their
        first offsets on the partitions that are still ours."""
        first = self._drop_uncommitted()
        self.membership.seek_back(first)
        log.warning("partitions lost: the uncommitted batches are dropped and replayed on the %d partitions still "
                    "assigned", len({tp for tp in first if tp in self.membership.assigned}))

    def replay_after_abort(self) -> None:
        """A transaction of ours aborted after its batch's state was stored (see checkpoint.py):
        check every partition again, so that its state is rolled back before it is read again,
        then replay what is uncommitted."""
        self.membership.check_again()
        self.replay_after_loss()

    def _drop_uncommitted(self) -> dict[tuple[str, int], int]:
        first = self.checkpoint.drop_uncommitted(self.membership.keep)
        self.paging.held_back = {}
        return first
