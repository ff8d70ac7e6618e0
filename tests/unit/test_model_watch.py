"""The model watcher: a CURRENT that does not load at start-up falls back to the newest promoted
version that does; a model needing longer windows than the state keeps is refused while serving;
a registry that cannot be read does not end the watch; a refused version is tried again later.
Uses the session's tiny trained registry; no servers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from consumer import app
from consumer.app import ModelWatcher
from consumer.metrics import Metrics
from consumer.scoring import ModelRefused
from consumer.settings import ModelSettings
from tests.registry_copies import copy_version
from training.registry import Registry


@pytest.fixture
def registry(tiny_registry: Path, tmp_path: Path) -> tuple[Registry, str]:
    """A copy of the tiny registry, and its CURRENT version."""
    root = tmp_path / "models"
    shutil.copytree(tiny_registry, root, symlinks=True)
    return Registry(root), (root / "CURRENT").resolve().name


def broken(registry: Registry, source: str, name: str) -> str:
    version = copy_version(registry.path(source), registry.root / name)
    (version / "model.keras").write_bytes(b"not a model")
    registry.promote(name, reason="test: broken")
    return name


def watcher_of(registry: Registry) -> ModelWatcher:
    return ModelWatcher(registry, Metrics(), ModelSettings())


def test_a_current_that_does_not_load_at_start_falls_back_to_the_last_version_that_served(
    registry: tuple[Registry, str], caplog: pytest.LogCaptureFixture
) -> None:
    reg, good = registry
    bad = broken(reg, good, "99990101T000000Z")
    watcher = watcher_of(reg)
    runner = watcher.load_current()
    assert runner.version == good
    assert watcher.metrics.reloads.labels("fallback")._value.get() == 1
    assert watcher.metrics.reloads.labels("refused")._value.get() == 1
    assert f"CURRENT ({bad}) does not load: serving {good}" in caplog.text
    watcher.poll_once()  # the refused CURRENT is not loaded again at every poll
    assert watcher.take() is None and watcher.metrics.reloads.labels("refused")._value.get() == 1


def test_with_no_version_that_loads_start_up_fails_with_one_error(registry: tuple[Registry, str]) -> None:
    reg, good = registry
    (reg.path(good) / "model.keras").write_bytes(b"broken too")
    broken(reg, good, "99990101T000000Z")
    with pytest.raises(ModelRefused, match="no version promoted before it does"):
        watcher_of(reg).load_current()


def test_a_model_with_a_longer_window_than_the_state_keeps_is_refused_while_serving(
    registry: tuple[Registry, str], caplog: pytest.LogCaptureFixture
) -> None:
    reg, good = registry
    watcher = watcher_of(reg)
    served = watcher.load_current()
    watcher.window_limit = served.spec.window
    longer = copy_version(reg.path(good), reg.root / "99990102T000000Z")
    manifest = json.loads((longer / "manifest.json").read_text())
    manifest["features"]["window"] = 2 * served.spec.window
    (longer / "manifest.json").write_text(json.dumps(manifest))
    reg.promote(longer.name)
    watcher.poll_once()
    assert watcher.take() is None
    assert watcher.metrics.reloads.labels("refused")._value.get() == 1
    assert f"its window ({2 * served.spec.window}) is longer than the {served.spec.window} records" in caplog.text


def test_an_unreadable_current_is_counted_and_the_watch_goes_on(
    registry: tuple[Registry, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    reg, good = registry
    watcher = watcher_of(reg)
    watcher.load_current()
    (reg.root / "CURRENT").unlink()
    (reg.root / "CURRENT").write_bytes(b"\xff\xfe not text")
    watcher.poll_once()
    assert watcher.metrics.reloads.labels("unreadable")._value.get() == 1

    fresh = copy_version(reg.path(good), reg.root / "99990103T000000Z")
    (reg.root / "CURRENT").unlink()
    reg.promote(fresh.name)
    watcher.poll_once()
    runner = watcher.take()
    assert runner is not None and runner.version == fresh.name


def test_a_refused_version_is_tried_again_after_a_while(
    registry: tuple[Registry, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    reg, good = registry
    watcher = watcher_of(reg)
    watcher.load_current()
    fixed_later = broken(reg, good, "99990104T000000Z")
    watcher.poll_once()
    assert watcher.take() is None
    shutil.copy(reg.path(good) / "model.keras", reg.path(fixed_later) / "model.keras")
    watcher.poll_once()
    assert watcher.take() is None, "not before REFUSED_RETRY_S"
    monkeypatch.setattr(app, "REFUSED_RETRY_S", 0.0)
    watcher.poll_once()
    runner = watcher.take()
    assert runner is not None and runner.version == fixed_later
