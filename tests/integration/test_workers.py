"""`seqscore serve` with SEQSCORE_WORKERS=2 on the real Kafka and Redis: the workers split the
partitions, every event is scored once, one endpoint answers for both, a worker that dies is
restarted and the stream goes on, SIGTERM stops them all with the offsets committed; a worker
that cannot start stops the instance with its status instead of restarting forever."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from consumer.bench.cpu import process_tree
from consumer.bench.harness import predictions_by_event, read_topic, running, wait_for
from consumer.bench.loadgen import StreamPlan, stream
from consumer.settings import load_settings
from tests.integration.test_serve import committed_equals_end
from training.simulate import simulate

pytestmark = pytest.mark.slow

WORKERS = {"SEQSCORE_WORKERS": "2"}


def running_pid(pid: int) -> bool:
    """Whether the process runs (a zombie waiting to be reaped does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def test_two_workers_share_the_partitions_behind_one_endpoint_and_survive_a_killed_worker(
    test_env: dict[str, str], tiny_registry: Path, tmp_path: Path
) -> None:
    settings = load_settings()
    first, second = simulate(60, seed=41), simulate(40, seed=42)
    with running(test_env | WORKERS, tiny_registry, tmp_path / "serve.log") as scorer:
        scorer.wait_ready()
        assigned = [scorer.metric("seqscore_assigned_partitions", f'worker="{i}"') for i in range(2)]
        assert sum(assigned) == settings.topics.events_partitions and min(assigned) > 0, assigned
        stream(first, settings.topics.events, settings.kafka_config(), StreamPlan(seed=5), progress=False)
        by_event = predictions_by_event(
            read_topic(settings.kafka_bootstrap, settings.topics.next_actions, first.n_events)
        )
        assert set(by_event) == set(first.event_ids()) and all(len(v) == 1 for v in by_event.values())
        per_worker = [scorer.metric("seqscore_predictions_total", f'worker="{i}"') for i in range(2)]
        assert sum(per_worker) == first.n_events and min(per_worker) > 0, per_worker
        status, body = scorer.get("/metrics")
        check = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30)
        assert status == 200 and check.returncode == 0, check.stdout + check.stderr

        assert scorer.process is not None
        pool_pid = scorer.process.pid
        workers = [pid for pid in process_tree(pool_pid) if pid != pool_pid]
        assert len(workers) == 2, workers
        os.kill(workers[0], signal.SIGKILL)
        wait_for(lambda: scorer.metric("seqscore_worker_restarts_total") == 1, timeout=30, what="a restart")
        scorer.wait_ready()
        restarted = [pid for pid in process_tree(pool_pid) if pid != pool_pid]
        assert len(restarted) == 2 and workers[0] not in restarted, restarted

        stream(second, settings.topics.events, settings.kafka_config(), StreamPlan(seed=6), progress=False)
        after = predictions_by_event(
            read_topic(settings.kafka_bootstrap, settings.topics.next_actions, first.n_events + second.n_events)
        )
        assert set(second.event_ids()) <= set(after), "no event lost across the restart"
        assert scorer.stop(signal.SIGTERM) == 0
        assert not any(running_pid(pid) for pid in restarted), "the workers stopped with it"
    log = (tmp_path / "serve.log").read_text()
    assert "[worker 0]" in log and "[worker 1]" in log and "exited with status -9: restarting it" in log
    assert "Traceback" not in log, log[-3000:]
    assert committed_equals_end(settings.kafka_bootstrap, settings.group_id, settings.topics.events)


def test_a_worker_that_cannot_start_stops_the_instance_with_its_status(
    test_env: dict[str, str], tiny_registry: Path
) -> None:
    env = os.environ | test_env | WORKERS | {
        "SEQSCORE_REGISTRY": str(tiny_registry), "TF_CPP_MIN_LOG_LEVEL": "3",
        "SEQSCORE_REDIS_URL": "redis://nobody:hunter2-secret@127.0.0.1:6379/0",
    }
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "consumer.cli", "serve"], env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 1 and time.monotonic() - started < 120, done.stderr[-2000:]
    assert "refused the credentials" in done.stderr and "before it served: stopping the instance" in done.stderr
    assert "hunter2-secret" not in done.stderr + done.stdout


def test_workers_stop_when_their_instance_is_killed(
    test_env: dict[str, str], tiny_registry: Path, tmp_path: Path
) -> None:
    with running(test_env | WORKERS, tiny_registry, tmp_path / "serve.log") as scorer:
        scorer.wait_ready()
        assert scorer.process is not None
        workers = [pid for pid in process_tree(scorer.process.pid) if pid != scorer.process.pid]
        assert len(workers) == 2, workers
        scorer.process.kill()
        scorer.process.wait(10)
        wait_for(lambda: not any(running_pid(pid) for pid in workers), timeout=60, what="the orphaned workers to stop")
    log = (tmp_path / "serve.log").read_text()
    assert log.count("scorer stopped") == 2, "each worker finished its batch and left the group"
