"""Exactly-once output (SEQSCORE_PROCESSING_GUARANTEE=exactly_once): the scorer dies once
exactly between storing a batch's state and committing its transaction (a failpoint), then is
killed with SIGKILL at random points, mid-transaction as often as not, and restarted each
time; a read_committed consumer of next-actions sees exactly one prediction per event, equal
to a clean run's, and Redis holds exactly the clean run's state."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from consumer.bench.harness import ScorerProcess
from consumer.settings import Settings
from tests.faults.runs import assert_same_outcome, kill_repeatedly, scored_run, variant
from training.simulate import simulate

pytestmark = pytest.mark.slow


def test_sigkill_mid_transaction_leaves_exactly_one_committed_prediction_per_event(
    test_env: dict[str, str], tiny_registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unique: str
) -> None:
    history = simulate(300, seed=45)
    restarts: list[ScorerProcess] = []
    # the same instance id on each restart: it aborts the killed one's open transaction at once
    kill_three_times = kill_repeatedly(3, random.Random(45), tmp_path / "faulted", restarts)

    def die_before_a_commit_then_kill(scorer: ScorerProcess, settings: Settings) -> ScorerProcess:
        assert scorer.process is not None
        assert scorer.process.wait(timeout=120) == 137, "the failpoint ends the first scorer"
        monkeypatch.delenv("SEQSCORE_FAILPOINT")
        env = {k: v for k, v in scorer.env.items() if k != "SEQSCORE_FAILPOINT"}
        scorer = ScorerProcess(env, tiny_registry, tmp_path / "faulted" / "after-failpoint.log").start()
        restarts.append(scorer)
        scorer.wait_ready()
        return kill_three_times(scorer, settings)

    exactly_once = {"SEQSCORE_PROCESSING_GUARANTEE": "exactly_once", "SEQSCORE_INSTANCE_ID": "eos-test"}
    for name in ("clean", "faulted"):
        (tmp_path / name).mkdir()
    clean = scored_run(variant(test_env, unique, "c") | exactly_once, tiny_registry, history, tmp_path / "clean",
                       monkeypatch)
    # slow enough (about 50 s) that every kill, 10 s of rejoining apart, lands mid-stream
    failpoint = {"SEQSCORE_FAILPOINT": "state_stored_before_commit:40"}
    faulted = scored_run(variant(test_env, unique, "f") | exactly_once | failpoint, tiny_registry, history,
                         tmp_path / "faulted", monkeypatch, fault=die_before_a_commit_then_kill, rate=60.0)
    assert_same_outcome(clean, faulted, history)
    repeated = {event: len(seen) for event, seen in faulted.predictions.items() if len(seen) != 1}
    assert not repeated, f"read_committed saw more than one prediction for {len(repeated)} events: {repeated}"
    assert all(len(seen) == 1 for seen in clean.predictions.values())
    assert "rolled back" in restarts[0].log_path.read_text(), "the batch stored but not committed was undone"
    rolled_back = sum("rolled back" in s.log_path.read_text() for s in restarts)
    print(f"\n{len(faulted.predictions)} events, one committed prediction each; "
          f"{rolled_back} of 4 restarts rolled back an uncommitted batch")
