"""seqscore on a Redis Cluster (3 masters, one replica each): the same stream gives the same
predictions, alerts and state, customer by customer, as on one Redis."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.runs import assert_same_outcome, scored_run, variant
from training.simulate import simulate

pytestmark = pytest.mark.slow


def test_serving_on_a_redis_cluster_equals_serving_on_one_redis(
    test_env: dict[str, str], tiny_registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unique: str,
    redis_cluster: str,
) -> None:
    history = simulate(300, seed=47)
    for name in ("single", "cluster"):
        (tmp_path / name).mkdir()
    single = scored_run(variant(test_env, unique, "s"), tiny_registry, history, tmp_path / "single", monkeypatch,
                        rate=0, hostile=True)
    on_cluster = variant(test_env, unique, "k") | {"SEQSCORE_REDIS_URL": redis_cluster}
    clustered = scored_run(on_cluster, tiny_registry, history, tmp_path / "cluster", monkeypatch, rate=0,
                           hostile=True)
    assert_same_outcome(single, clustered, history)
    assert any(name.endswith(":w") for name in clustered.state), "windows were stored on the cluster"
