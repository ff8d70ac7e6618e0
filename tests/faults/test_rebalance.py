"""Group membership changing while a stream flows: a second scorer joins, one leaves with
SIGTERM, one is killed with SIGKILL while a peer is alive, and one more joins. Partitions
move at every step (cooperative-sticky), so batches in flight are revoked, replayed by the
new owner, or lost with the killed member; the run must still end exactly like a clean run
of the same stream (tests/faults/runs.py)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from consumer.bench.harness import ScorerProcess, wait_for
from consumer.settings import Settings
from tests.faults.runs import assert_same_outcome, scored_run, variant
from training.simulate import simulate

pytestmark = pytest.mark.slow

PARTITIONS = 4  # tests/conftest.py test_env
# the broker's group.min.session.timeout.ms: a killed member's partitions move after 6 s, not 10
SESSION_TIMEOUT_MS = "6000"


def assigned(scorer: ScorerProcess) -> int:
    return int(scorer.metric("seqscore_assigned_partitions"))


def test_members_joining_leaving_and_killed_mid_stream_match_a_clean_run(
    test_env: dict[str, str], tiny_registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unique: str
) -> None:
    history = simulate(300, seed=44)
    logs = tmp_path / "faulted"
    steps: list[str] = []

    def share(members: list[ScorerProcess]) -> bool:
        counts = [assigned(m) for m in members]
        return sum(counts) == PARTITIONS and all(counts)

    def scored_since(scorer: ScorerProcess, before: float) -> bool:
        return scorer.metric("seqscore_predictions_total") > before

    def membership_changes(a: ScorerProcess, _settings: Settings) -> list[ScorerProcess]:
        started = [a]

        def join(name: str, members: list[ScorerProcess]) -> ScorerProcess:
            scorer = ScorerProcess(a.env, tiny_registry, logs / f"scorer-{name}.log").start()
            started.append(scorer)
            scorer.wait_ready()
            wait_for(lambda: share([*members, scorer]), timeout=60, what=f"{name} shares the partitions")
            # the newcomer must score part of the stream, or the handover carried nothing
            wait_for(lambda: scored_since(scorer, 0), timeout=60, what=f"{name} scoring")
            steps.append(f"{name} joined")
            return scorer

        try:
            wait_for(lambda: scored_since(a, 100), timeout=60, what="stream flowing")
            b = join("b", [a])
            assert a.stop(signal.SIGTERM) == 0, a.log_path.read_text()[-2000:]
            wait_for(lambda: assigned(b) == PARTITIONS, timeout=30, what="b owns every partition after a left")
            steps.append("a left (SIGTERM)")
            c = join("c", [b])
            b.stop(signal.SIGKILL)
            wait_for(lambda: assigned(c) == PARTITIONS, timeout=60, what="c owns every partition after b died")
            scored = c.metric("seqscore_predictions_total")
            wait_for(lambda: scored_since(c, scored), timeout=60, what="c scoring b's partitions")
            steps.append("b killed (SIGKILL)")
            d = join("d", [c])
            return [c, d]
        except BaseException:
            for scorer in started:
                if scorer.process is not None and scorer.process.poll() is None:
                    scorer.process.kill()
            raise

    env = test_env | {"SEQSCORE_KAFKA__SESSION_TIMEOUT_MS": SESSION_TIMEOUT_MS}
    for name in ("clean", "faulted"):
        (tmp_path / name).mkdir()
    clean = scored_run(variant(env, unique, "c"), tiny_registry, history, tmp_path / "clean", monkeypatch, rate=0)
    # slow enough that the stream is still flowing through every membership change
    faulted = scored_run(variant(env, unique, "f"), tiny_registry, history, logs, monkeypatch,
                         fault=membership_changes, rate=60)
    assert steps == ["b joined", "a left (SIGTERM)", "c joined", "b killed (SIGKILL)", "d joined"]
    assert_same_outcome(clean, faulted, history)


def test_exactly_once_with_members_joining_and_leaving_commits_each_prediction_once(
    test_env: dict[str, str], tiny_registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unique: str
) -> None:
    """Two exactly-once members, partitions moving while batches are in hand: batches gather
    for up to 2 s (MIN_BATCH 50), so a revocation served while one waits meets records of the
    revoked partitions. None may reach the open transaction: a read_committed consumer sees
    each event's prediction exactly once, equal to a clean run's."""
    history = simulate(300, seed=46)
    logs = tmp_path / "faulted"

    def join_then_leave(a: ScorerProcess, _settings: Settings) -> list[ScorerProcess]:
        started = [a]
        try:
            wait_for(lambda: a.metric("seqscore_predictions_total") > 100, timeout=60, what="stream flowing")
            b = ScorerProcess(a.env, tiny_registry, logs / "scorer-b.log").start()
            started.append(b)
            b.wait_ready()
            wait_for(lambda: assigned(a) + assigned(b) == PARTITIONS and assigned(b) > 0, timeout=60,
                     what="b shares the partitions")
            scored = b.metric("seqscore_predictions_total")
            wait_for(lambda: b.metric("seqscore_predictions_total") > scored, timeout=60, what="b scoring")
            assert a.stop(signal.SIGTERM) == 0, a.log_path.read_text()[-2000:]
            wait_for(lambda: assigned(b) == PARTITIONS, timeout=60, what="b owns every partition after a left")
            c = ScorerProcess(a.env, tiny_registry, logs / "scorer-c.log").start()
            started.append(c)
            c.wait_ready()
            wait_for(lambda: assigned(b) + assigned(c) == PARTITIONS and assigned(c) > 0, timeout=60,
                     what="c shares the partitions")
            return [b, c]
        except BaseException:
            for scorer in started:
                if scorer.process is not None and scorer.process.poll() is None:
                    scorer.process.kill()
            raise

    env = test_env | {"SEQSCORE_KAFKA__SESSION_TIMEOUT_MS": SESSION_TIMEOUT_MS,
                      "SEQSCORE_PROCESSING_GUARANTEE": "exactly_once",
                      "SEQSCORE_BATCH__MIN_BATCH": "50", "SEQSCORE_BATCH__MAX_WAIT_MS": "2000"}
    for name in ("clean", "faulted"):
        (tmp_path / name).mkdir()
    clean = scored_run(variant(env, unique, "c"), tiny_registry, history, tmp_path / "clean", monkeypatch, rate=0)
    faulted = scored_run(variant(env, unique, "f"), tiny_registry, history, logs, monkeypatch,
                         fault=join_then_leave, rate=60)
    assert_same_outcome(clean, faulted, history)
    repeated = {event: len(seen) for event, seen in faulted.predictions.items() if len(seen) != 1}
    assert not repeated, f"read_committed saw more than one prediction for {len(repeated)} events"


def test_exactly_once_failover_to_another_member_while_the_dead_ones_transaction_is_open(
    test_env: dict[str, str], tiny_registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unique: str
) -> None:
    """A member dies between sending its offsets to its transaction and committing it (a
    failpoint: the window a SIGKILL only sometimes hits), and another instance, with another
    transactional id, takes its partitions: their committed offsets stay unstable until the
    broker aborts the dead transaction (its timeout, 60 s by default). The new owner must stay
    up meanwhile (audit B1: it used to wait 30 s in the assignment callback, then exit), roll
    back the dead batch's state, and commit each event once."""
    history = simulate(200, seed=47)
    logs = tmp_path / "faulted"
    takeover: list[ScorerProcess] = []

    def die_with_offsets_pending_then_take_over(a: ScorerProcess, _settings: Settings) -> ScorerProcess:
        assert a.process is not None
        assert a.process.wait(timeout=120) == 137, "the failpoint ends the first member"
        env = {k: v for k, v in a.env.items() if k != "SEQSCORE_FAILPOINT"} | {"SEQSCORE_INSTANCE_ID": "b"}
        monkeypatch.delenv("SEQSCORE_FAILPOINT")
        b = ScorerProcess(env, tiny_registry, logs / "scorer-b.log").start()
        takeover.append(b)
        b.wait_ready()
        return b

    env = test_env | {"SEQSCORE_PROCESSING_GUARANTEE": "exactly_once"}
    for name in ("clean", "faulted"):
        (tmp_path / name).mkdir()
    clean = scored_run(variant(env, unique, "c"), tiny_registry, history, tmp_path / "clean", monkeypatch, rate=0)
    dying = {"SEQSCORE_INSTANCE_ID": "a", "SEQSCORE_FAILPOINT": "offsets_in_transaction:40"}
    faulted = scored_run(variant(env, unique, "f") | dying, tiny_registry, history, logs, monkeypatch,
                         fault=die_with_offsets_pending_then_take_over, rate=40)
    assert_same_outcome(clean, faulted, history)
    repeated = {event: len(seen) for event, seen in faulted.predictions.items() if len(seen) != 1}
    assert not repeated, f"read_committed saw more than one prediction for {len(repeated)} events"
    log = takeover[0].log_path.read_text()
    assert "wait for their committed offsets" in log, "the dead transaction held the offsets"
    assert "rolled back" in log, "the dead batch's stored state was undone"


def test_exactly_once_member_frozen_before_storing_its_batch_and_thawed_after_a_takeover(
    test_env: dict[str, str], tiny_registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unique: str
) -> None:
    """A member freezes (SIGSTOP, as a long GC pause or a frozen VM would) with a batch's outputs
    acknowledged in its open transaction and its state not yet stored (a failpoint). Another
    instance takes its partitions, and then the frozen one thaws and stores late (audit B2). Its
    write is refused, its batch void, and each event is committed once, equal to a clean run."""
    history = simulate(200, seed=48)
    logs = tmp_path / "faulted"
    members: list[ScorerProcess] = []

    def freeze_then_take_over_then_thaw(a: ScorerProcess, _settings: Settings) -> list[ScorerProcess]:
        assert a.process is not None
        members.append(a)
        wait_for(lambda: frozen(a), timeout=120, what="the failpoint freezes the first member")
        env = {k: v for k, v in a.env.items() if k != "SEQSCORE_FAILPOINT"} | {"SEQSCORE_INSTANCE_ID": "b"}
        monkeypatch.delenv("SEQSCORE_FAILPOINT")
        b = ScorerProcess(env, tiny_registry, logs / "scorer-b.log").start()
        members.append(b)
        b.wait_ready()
        wait_for(lambda: assigned(b) == PARTITIONS, timeout=90, what="b owns every partition of the frozen member")
        wait_for(lambda: b.metric("seqscore_predictions_total") > 0, timeout=90, what="b scoring")
        a.process.send_signal(signal.SIGCONT)
        wait_for(lambda: "replaced while it was paused" in a.log_path.read_text(), timeout=90,
                 what="the thawed member's late write refused")
        return members

    env = test_env | {"SEQSCORE_PROCESSING_GUARANTEE": "exactly_once",
                      "SEQSCORE_KAFKA__SESSION_TIMEOUT_MS": SESSION_TIMEOUT_MS}
    for name in ("clean", "faulted"):
        (tmp_path / name).mkdir()
    clean = scored_run(variant(env, unique, "c"), tiny_registry, history, tmp_path / "clean", monkeypatch, rate=0)
    freezing = {"SEQSCORE_INSTANCE_ID": "a", "SEQSCORE_FAILPOINT": "acknowledged_before_stored:40:stop"}
    try:
        faulted = scored_run(variant(env, unique, "f") | freezing, tiny_registry, history, logs, monkeypatch,
                             fault=freeze_then_take_over_then_thaw, rate=40)
    finally:
        for member in members:  # a frozen process ignores SIGTERM and SIGKILL waits for nothing
            if member.process is not None and member.process.poll() is None:
                member.process.send_signal(signal.SIGCONT)
    assert_same_outcome(clean, faulted, history)
    repeated = {event: len(seen) for event, seen in faulted.predictions.items() if len(seen) != 1}
    assert not repeated, f"read_committed saw more than one prediction for {len(repeated)} events"


def frozen(scorer: ScorerProcess) -> bool:
    """The process is stopped (state T in /proc), as SIGSTOP leaves it."""
    assert scorer.process is not None
    stat = Path(f"/proc/{scorer.process.pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "T"
