"""The model watcher: a CURRENT that does not load at start-up falls back to the newest promoted
version that does; a model needing longer windows than the state keeps is refused while serving;
a registry that cannot be read does not end the watch; a refused version is tried again later.
Uses the session's tiny trained registry; no servers."""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from consumer.serve import model_watch
from consumer.serve.metrics import Metrics
from consumer.serve.model_watch import ModelWatcher
from consumer.serve.scoring import ModelRefused, ModelRunner
from consumer.settings import ModelSettings
from tests.registry_copies import copy_version
from training import registry as registry_module
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
    monkeypatch.setattr(model_watch, "REFUSED_RETRY_S", 0.0)
    watcher.poll_once()
    runner = watcher.take()
    assert runner is not None and runner.version == fixed_later


def _with_config(version: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite the version's model file with its Keras config changed by `change`."""
    path = version / "model.keras"
    with zipfile.ZipFile(path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(entries["config.json"])
    change(config)
    entries["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)


def _layers(config: object) -> Iterator[dict[str, Any]]:
    if isinstance(config, dict):
        if isinstance(config.get("config"), dict) and "class_name" in config:
            yield config
        for value in config.values():
            yield from _layers(value)
    elif isinstance(config, list):
        for item in config:
            yield from _layers(item)


def test_a_version_whose_layers_would_not_fit_in_memory_is_refused_before_it_is_built(
    registry: tuple[Registry, str]
) -> None:
    """Audit B7: a config with an embedding of 10^9 x 10^4 floats (40 TB) used to be built, and the
    scorer OOM-killed; it is refused from the config and the size of the weights file alone."""
    reg, good = registry
    version = copy_version(reg.path(good), reg.root / "99990101T000000Z")

    def absurd(config: dict[str, Any]) -> None:
        embedding = next(layer for layer in _layers(config) if layer["class_name"] == "Embedding")
        embedding["config"]["input_dim"], embedding["config"]["output_dim"] = 10**9, 10**4

    _with_config(version, absurd)
    with pytest.raises(ModelRefused, match=r"need at least 40,000,000,\d{3},\d{3} bytes of weights"):
        ModelRunner(version)
    ModelRunner(reg.path(good))  # the real one passes the same check


def test_a_model_file_or_manifest_past_its_cap_is_refused_unread(
    registry: tuple[Registry, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A zip bomb: the caps apply to what the zip directory declares, before anything is unpacked."""
    reg, good = registry
    monkeypatch.setattr(registry_module, "MAX_MODEL_BYTES", 100_000)
    with pytest.raises(ModelRefused, match=r"unpacks to .* bytes, more than 100,000"):
        ModelRunner(reg.path(good))
    monkeypatch.setattr(registry_module, "MAX_MODEL_BYTES", 1 << 30)
    monkeypatch.setattr(registry_module, "MAX_MANIFEST_BYTES", 1_000)
    with pytest.raises(ModelRefused, match=r"manifest\.json is .* bytes, more than 1,000"):
        ModelRunner(reg.path(good))
