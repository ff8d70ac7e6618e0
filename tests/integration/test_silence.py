"""Churn on silence: customers who stop acting are scored when their silence crosses a mark,
in event time, on the real Kafka and Redis."""

from __future__ import annotations

import csv
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pytest
import redis

from consumer.bench.harness import read_topic, running, wait_for
from consumer.bench.loadgen import StreamPlan, stream
from consumer.segments import scan as segments
from consumer.serve import silence
from consumer.settings import load_settings
from state.encoding import DAY, activity_code
from state.store import AppliedBatch, EventBatch, StateStore, event_tag
from training.simulate import simulate

T0 = 1_650_000_000
HORIZON_DAYS = 120  # the tiny model's churn horizon (training's default)


def events(rows: list[tuple[str, int, int]], partition: int = 0) -> EventBatch:
    """rows: (customer, offset, ts)"""
    return EventBatch(
        customer_ids=[r[0] for r in rows],
        partition=np.full(len(rows), partition, dtype=np.int64),
        offset=np.array([r[1] for r in rows], dtype=np.int64),
        ts=np.array([r[2] for r in rows], dtype=np.int64),
        coarse=np.full(len(rows), activity_code("A"), dtype=np.uint32),
        fine=np.full(len(rows), activity_code("A1"), dtype=np.uint32),
        tag=np.array([event_tag(f"{r[0]}-{r[1]}") for r in rows], dtype=np.uint32),
    )


def fire(store: StateStore, applied: AppliedBatch, batch: EventBatch) -> silence.Silences:
    return silence.fired(applied, batch, store.silence_marks, applied.windows(batch, 4, "coarse")[0], "coarse")


@pytest.fixture
def store(stack: dict[str, str], unique: str) -> Iterator[StateStore]:
    client = redis.Redis.from_url(stack["redis"])
    yield StateStore(client, f"s{unique}", 8, 2 * DAY, 3600, silence_marks=(10 * DAY,))
    for key in client.scan_iter(f"s{unique}:*"):
        client.delete(key)


def test_a_mark_fires_only_if_the_customer_was_still_silent_when_the_stream_reached_it(store: StateStore) -> None:
    store.apply(events([("a", 0, T0 - DAY), ("a", 1, T0), ("b", 2, T0)]))
    # in stream order: b comes back at day 8, the stream reaches day 10 at y, a comes back after
    batch = events([("x", 3, T0 + 5 * DAY), ("b", 4, T0 + 8 * DAY), ("y", 5, T0 + 11 * DAY), ("a", 6, T0 + 12 * DAY)])
    applied, _ = store.preview(batch)
    assert sorted(applied.customers[c] for c in applied.due["customer"]) == ["a", "b"]
    fired = fire(store, applied, batch)
    assert [applied.customers[c] for c in fired.customer] == ["a"]
    assert fired.as_of.tolist() == [T0 + 10 * DAY] and fired.before_event.tolist() == [2]
    # a's window as of the mark: its two stored events, not the one of this batch
    assert fired.raw.ts.tolist() == [[0, 0, T0 - DAY, T0]] and fired.raw.count.tolist() == [2]
    assert fired.raw.score_ts.tolist() == [T0 + 10 * DAY]

    # the same stream cut into other batches fires the same mark before the same event
    first = events([("x", 3, T0 + 5 * DAY), ("b", 4, T0 + 8 * DAY)])
    rest = events([("y", 5, T0 + 11 * DAY), ("a", 6, T0 + 12 * DAY)])
    applied_first, pending = store.preview(first)
    assert len(fire(store, applied_first, first)) == 0
    applied_rest, _ = store.preview(rest, before=pending)
    fired_rest = fire(store, applied_rest, rest)
    assert [applied_rest.customers[c] for c in fired_rest.customer] == ["a"] and fired_rest.before_event.tolist() == [0]


def test_marks_default_to_the_training_marks_within_the_horizon() -> None:
    assert silence.marks_for(None, 60) == tuple(d * DAY for d in (7, 14, 30, 60))
    assert silence.marks_for([30, 14], 60) == (14 * DAY, 30 * DAY)


@pytest.mark.slow
@pytest.mark.parametrize("max_due", [None, 2], ids=["one-page", "pages-of-2"])
def test_silent_customers_are_scored_at_each_mark_live_and_by_a_sweep(
    test_env: dict[str, str], silence_registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    max_due: int | None,
) -> None:
    """With pages of 2, nearly every clock move finds more customers due than a page holds:
    batches hold events back while their partitions' clocks move by pages, and the sweep pages
    (audit B6). Every mark must still fire once."""
    if max_due is not None:
        test_env = test_env | {"SEQSCORE_SILENCE__MAX_DUE": str(max_due)}
        monkeypatch.setenv("SEQSCORE_SILENCE__MAX_DUE", str(max_due))
    history = simulate(150, seed=41)
    settings = load_settings()
    names = history.customer_ids
    with running(test_env, silence_registry, tmp_path / "serve.log") as scorer:
        scorer.wait_ready()
        stream(history, settings.topics.events, settings.kafka_config(), StreamPlan(), progress=False)
        read_topic(settings.kafka_bootstrap, settings.topics.next_actions, history.n_events)
        wait_for(lambda: scorer.metric("seqscore_silence_scored_total") > 0, what="silences scored while serving")
        assert scorer.stop() == 0
    if max_due is not None:
        assert "events wait while its clock moves by pages" in (tmp_path / "serve.log").read_text()

    after_the_horizon = datetime.fromtimestamp(history.end + (HORIZON_DAYS + 1) * DAY, UTC).isoformat()
    sweep = [sys.executable, "-m", "consumer.cli", "sweep", "--as-of", after_the_horizon]
    done = subprocess.run(sweep, env=scorer.env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("swept to") and " silent customers scored" in done.stdout
    swept = done.stdout.strip()

    # every customer's last scoring was its last mark: 120 days after its last event
    snapshot = segments.scan(redis.Redis.from_url(settings.redis_url), settings.state.key_prefix, 4)
    last_event = {name: int(history.event_ts[history.event_customer == i].max()) for i, name in enumerate(names)
                  if (history.event_customer == i).any()}
    assert sorted(snapshot.customer_ids) == sorted(last_event)
    scored_at = dict(zip(snapshot.customer_ids, snapshot.pred_ts.tolist(), strict=True))
    late = {c: (scored_at[c] - t) / DAY for c, t in last_event.items() if scored_at[c] != t + HORIZON_DAYS * DAY}
    assert not late, f"customers not scored at their last silence mark (days after their last event): {late}"

    # the marketing export reads the same latest predictions
    csv_path = tmp_path / "segment.csv"
    export = [sys.executable, "-m", "consumer.cli", "segments", "--last", "*", "--min-churn", "0.3",
              "--out", str(csv_path)]
    done = subprocess.run(export, env=scorer.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    exported = list(csv.DictReader(csv_path.open()))
    risk = dict(zip(snapshot.customer_ids, snapshot.churn_risk.tolist(), strict=True))
    assert {r["customer_id"] for r in exported} == {c for c, r in risk.items() if r >= 0.3}
    assert all(abs(float(r["churn_risk"]) - risk[r["customer_id"]]) < 1e-4 for r in exported)
    risks = [float(r["churn_risk"]) for r in exported]
    assert risks == sorted(risks, reverse=True), "riskiest first"

    alerts = [orjson.loads(m.value()) for m in read_topic(settings.kafka_bootstrap, settings.topics.churn_alerts, 1)]
    silent = [a for a in alerts if a["trigger"] == "silence"]
    events_of = {name: np.sort(history.event_ts[history.event_customer == i]) for i, name in enumerate(names)}
    for alert in silent:  # each one at a mark of real silence, and a crossing
        as_of = int(np.datetime64(alert["as_of"].rstrip("Z"), "s").astype(np.int64))
        times = events_of[alert["customer_id"]]
        last = times[times <= as_of].max()
        assert round((as_of - last) / DAY) in {7, 14, 30, 60, 90, 120}, alert
        assert not ((times > last) & (times <= as_of)).any() and alert["event_id"] is None
        assert (alert["churn_risk"] >= alert["threshold"]) == (alert["kind"] == "alert")
    assert len({a["prediction_id"] for a in alerts}) == len(alerts), "each mark fires once"

    # what silence scoring adds for customers who really left (the generator's truth): those
    # not in alert after their last event, whom event-only scoring never scores again, alerted
    # during their final silence, before the inactivity rule (no event for the horizon) would
    def ts_of(alert: dict[str, object]) -> int:
        return int(np.datetime64(str(alert["as_of"]).rstrip("Z"), "s").astype(np.int64))

    churners = [names[i] for i in np.flatnonzero(history.churned) if names[i] in last_event]
    in_alert_at_last_event, caught_days = 0, []
    for customer in churners:
        last = last_event[customer]
        mine = [a for a in alerts if a["customer_id"] == customer]
        before = [a for a in mine if ts_of(a) <= last]
        if before and before[-1]["kind"] == "alert":
            in_alert_at_last_event += 1
            continue
        after = [a for a in mine if ts_of(a) > last and a["kind"] == "alert"]
        if after:
            caught_days.append(round((ts_of(after[0]) - last) / DAY))
    assert caught_days, "silence scoring should alert churners that event scoring left unalerted"
    earlier = HORIZON_DAYS - np.array(caught_days)
    assert (earlier > 0).all(), caught_days
    print(f"\n{len(silent)} silence alerts of {len(alerts)}; {swept}; of {len(churners)} churners, "
          f"{in_alert_at_last_event} were in alert after their last event (event scoring), silence scoring "
          f"alerted {len(caught_days)} of the other {len(churners) - in_alert_at_last_event}, a median "
          f"{np.median(earlier):.0f} days (min {earlier.min()}, max {earlier.max()}) before the "
          f"{HORIZON_DAYS}-day inactivity rule")

    again = subprocess.run(sweep, env=scorer.env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "0 silent customers scored" in again.stdout, "a repeated sweep scores nothing"


def test_a_replayed_event_is_not_a_return(store: StateStore) -> None:
    """After a crash the batch starts with events stored before it; they must not cancel a mark
    that a clean run (which never sees them again) fires."""
    stored = events([("a", 0, T0), ("b", 1, T0 + 2 * DAY)])
    store.apply(stored)
    replay = events([("a", 0, T0), ("b", 1, T0 + 2 * DAY), ("y", 2, T0 + 11 * DAY), ("z", 3, T0 + 12 * DAY)])
    clean = events([("y", 2, T0 + 11 * DAY), ("z", 3, T0 + 12 * DAY)])
    fired_after_crash = fire(store, store.preview(replay)[0], replay)
    fired_clean = fire(store, store.preview(clean)[0], clean)
    assert fired_after_crash.as_of.tolist() == fired_clean.as_of.tolist() == [T0 + 10 * DAY, T0 + 12 * DAY]


def test_a_repeated_record_is_not_a_return(store: StateStore) -> None:
    """A producer's retry repeats a's last event (same event_id): the customer did nothing new,
    so the mark fires as in a stream without the repeat, whatever the batch cut. Found by the
    SIGKILL fault test with repeated records in the stream."""
    repeat = ("a", 1, T0)  # the same event_id as offset 0's (the tag comes from customer-offset)
    original = events([("a", 0, T0)])
    copy = events([repeat])
    copy.tag[:] = original.tag
    reach = events([("y", 2, T0 + 11 * DAY)])

    def joined(*parts: EventBatch) -> EventBatch:
        return EventBatch([c for p in parts for c in p.customer_ids], *(
            np.concatenate([getattr(p, f) for p in parts]) for f in ("partition", "offset", "ts", "coarse", "fine",
                                                                     "tag")))

    # one batch: the event, its repeat, then the stream reaches the mark
    whole = joined(original, copy, reach)
    fired_whole = fire(store, store.preview(whole)[0], whole)
    assert fired_whole.as_of.tolist() == [T0 + 10 * DAY]
    # the event stored first, then its repeat and the mark in one batch
    store.apply(original)
    rest = joined(copy, reach)
    fired_rest = fire(store, store.preview(rest)[0], rest)
    assert fired_rest.as_of.tolist() == [T0 + 10 * DAY]
