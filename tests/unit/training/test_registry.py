from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from state.errors import ConfigError
from training.registry import Registry, resolve_model_dir


def make_version(registry: Registry, version: str) -> None:
    staging = registry.staging_dir(version)
    (staging / "manifest.json").write_text(json.dumps({"version": version}))
    registry.publish(staging, version)


def test_staging_is_invisible_until_published(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    staging = registry.staging_dir("v1")
    (staging / "manifest.json").write_text("{}")
    assert registry.versions() == []
    registry.publish(staging, "v1")
    assert registry.versions() == ["v1"]


def test_promote_switches_a_symlink_and_rollback_returns(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    for version in ("v1", "v2", "v3"):
        make_version(registry, version)
    registry.promote("v1")
    registry.promote("v2")
    assert os.readlink(tmp_path / "CURRENT") == "v2"
    assert resolve_model_dir(tmp_path) == tmp_path / "v2"
    assert registry.rollback() == "v1"
    assert registry.current() == "v1"
    with pytest.raises(ConfigError, match="nothing to roll back"):
        registry.rollback()


def test_current_as_a_text_file_is_read(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    make_version(registry, "v7")
    (tmp_path / "CURRENT").write_text("v7\n")
    assert registry.current() == "v7"
    assert resolve_model_dir(tmp_path) == tmp_path / "v7"


def test_unknown_version_and_empty_registry_are_clear_errors(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    with pytest.raises(ConfigError, match="no model version"):
        registry.promote("nope")
    with pytest.raises(ConfigError, match="CURRENT"):
        resolve_model_dir(tmp_path)
