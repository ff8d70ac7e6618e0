"""`--events kafka://TOPIC`: training history replayed from the real broker."""

from __future__ import annotations

import numpy as np

from consumer.bench.loadgen import StreamPlan, stream
from consumer.settings import load_settings
from training.history import TopicReplay, load_history
from training.simulate import simulate


def test_replay_reads_valid_events_once_up_to_the_end_offsets(test_env: dict[str, str]) -> None:
    settings = load_settings()
    history = simulate(80, seed=5)
    plan = StreamPlan(malformed=0.05, duplicates=0.05, seed=5)
    report = stream(history, settings.topics.events, settings.kafka_config(), plan, progress=False)
    assert report.duplicates > 0 and sum(report.malformed.values()) > 0

    replayed = load_history(f"kafka://{settings.topics.events}",
                            replay=TopicReplay(settings.kafka_config(), settings.max_event_bytes))
    assert len(replayed) == report.valid, "each valid event once; duplicates and malformed records dropped"
    assert set(replayed.customer_ids) <= set(history.customer_ids)
    # per customer, the replayed events are in time order
    same = replayed.customer[1:] == replayed.customer[:-1]
    assert (np.diff(replayed.ts)[same] >= 0).all()
