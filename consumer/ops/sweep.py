"""`seqscore sweep --as-of T`: move every partition's stored clock to T, scoring and alerting
the silences it passes as serving does. For backfills: while no scorer serves these
partitions, or one that is behind."""

from __future__ import annotations

import functools
from collections.abc import Callable

from consumer.serve.loop import BatchReport, Scorer

SWEEP_STEP_S = 86_400  # a day at a time, so that a long backfill stays in bounded calls


def sweep(scorer: Scorer, as_of: int, on_step: Callable[[int, BatchReport], None] | None = None) -> BatchReport:
    store, emitter = scorer.open_offline()
    total = BatchReport()
    clocks = scorer.with_redis(store.clocks)
    try:
        while moves := {p: min(c + SWEEP_STEP_S, as_of) for p, c in clocks.items() if c < as_of}:
            report = BatchReport()
            write = scorer.score_clock_moves(moves, report)
            emitter.wait_delivered(keep_membership=False)
            scorer.with_redis(functools.partial(store.write, write))
            # where the write left them: a step that found more due silences than one call
            # takes stops short, and the next step goes on from there
            clocks = scorer.with_redis(store.clocks)
            total.silences += report.silences
            total.alerts += report.alerts
            if on_step is not None:
                on_step(min(clocks.values()), total)
    finally:
        emitter.close()
    return total
