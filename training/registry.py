"""The model registry: one directory per version (model.keras + manifest.json + report), and a
CURRENT pointer switched atomically (a symlink replaced by rename; a one-line text file naming
the version directory is read too). promotions.log keeps the order of promotions for rollback."""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from state.errors import ConfigError

CURRENT = "CURRENT"
MODEL_FILE = "model.keras"
MANIFEST_FILE = "manifest.json"
PROMOTIONS = "promotions.log"
# 2: time-of-day and day-of-week step features, the n-gram residual and the monotone churn head
MODEL_FORMAT = 2
# what a version may take before anything of it is parsed or built: a registry a scorer reads
# is trusted to hold models, not to hold nothing worse (a zip bomb, a layer of absurd size)
MAX_MANIFEST_BYTES = 16 << 20
MAX_MODEL_BYTES = 1 << 30  # the model file's entries, uncompressed, as its zip directory declares them
WEIGHTS_ENTRY = "model.weights.h5"
WEIGHTS_SLACK_BYTES = 1 << 20  # the weights file's own structure, beyond the weights
RECURRENT_LAYERS = {"LSTM", "GRU", "SimpleRNN"}


class Registry:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def versions(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and not p.is_symlink() and not p.name.startswith(".") and (p / MANIFEST_FILE).is_file()
        )

    def path(self, version: str) -> Path:
        path = self.root / version
        if not (path / MANIFEST_FILE).is_file():
            raise ConfigError(f"no model version {version!r} in {self.root}")
        return path

    def manifest(self, version: str) -> dict[str, Any]:
        return json.loads((self.path(version) / MANIFEST_FILE).read_text())

    def current(self) -> str | None:
        pointer = self.root / CURRENT
        if pointer.is_symlink():
            return Path(os.readlink(pointer)).name
        if pointer.is_file():
            name = pointer.read_text().strip()
            return Path(name).name or None
        return None

    def staging_dir(self, version: str) -> Path:
        """A hidden directory to write a new version into; publish() moves it in place."""
        staging = self.root / f".staging-{version}"
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        return staging

    def publish(self, staging: Path, version: str) -> Path:
        """Move a finished version into the registry in one rename: nothing half-written is visible."""
        final = self.root / version
        if final.exists():
            raise ConfigError(f"model version {version} exists already in {self.root}")
        staging.rename(final)
        return final

    def promote(self, version: str, reason: str = "") -> None:
        """Point CURRENT at `version` atomically and log it."""
        self.path(version)
        tmp = self.root / f".{CURRENT}.tmp"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(version)
        os.replace(tmp, self.root / CURRENT)
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        with (self.root / PROMOTIONS).open("a") as log:
            log.write(f"{stamp}\t{version}\t{reason}\n")

    def promotion_stack(self) -> list[str]:
        """Promoted versions, oldest first, with rolled-back ones popped off."""
        log = self.root / PROMOTIONS
        stack: list[str] = []
        lines = log.read_text().splitlines() if log.is_file() else []
        for line in lines:
            fields = line.split("\t")
            if len(fields) < 2:
                continue
            if len(fields) > 2 and fields[2].startswith("rollback") and stack:
                stack.pop()
                continue
            stack.append(fields[1])
        return stack

    def rollback(self) -> str:
        """Return CURRENT to the version promoted before the current one."""
        stack = self.promotion_stack()
        available = set(self.versions())
        while len(stack) >= 2:
            target = stack[-2]
            if target in available:
                self.promote(target, reason=f"rollback from {stack[-1]}")
                return target
            stack.pop(-2)  # deleted since: skip it
        raise ConfigError("nothing to roll back to: no earlier promoted version")


def resolve_model_dir(path: Path) -> Path:
    """A version directory, or a registry meaning its CURRENT version."""
    path = Path(path)
    if (path / MANIFEST_FILE).is_file():
        return path
    registry = Registry(path)
    current = registry.current()
    if current is None:
        raise ConfigError(f"{path}: neither a model version directory nor a registry with a {CURRENT} version")
    return registry.path(current)


def smoke_inputs(manifest: dict[str, Any]) -> dict[str, NDArray[Any]]:
    """The model's inputs for the sample windows a manifest records (serving re-scores them)."""
    smoke = manifest["smoke"]["inputs"]
    return {k: np.asarray(v, dtype=np.int32 if k == "tokens" else np.float32) for k, v in smoke.items()}


def load_model(model_dir: Path) -> tuple[Any, dict[str, Any]]:
    """(serving model, manifest) of a version, loaded in Keras safe mode (no code from the file)."""
    import keras

    import training.layers  # noqa: F401  (registers the model's own layers for safe-mode loading)

    check_sizes(model_dir)
    manifest = json.loads((model_dir / MANIFEST_FILE).read_text())
    if manifest.get("format") != MODEL_FORMAT:
        raise ConfigError(
            f"{model_dir}: model format {manifest.get('format')}, this seqscore serves format {MODEL_FORMAT}: "
            "train it again with this version"
        )
    model = keras.saving.load_model(model_dir / MODEL_FILE, compile=False, safe_mode=True)
    return model, manifest


def check_sizes(model_dir: Path) -> None:
    """Refuse, before loading, a version whose files would take more memory than a model of
    its own weights: a manifest or model file past its cap, or layers whose configured sizes
    need more weights than the weights file holds (building them would allocate that much)."""
    manifest_bytes = (model_dir / MANIFEST_FILE).stat().st_size
    if manifest_bytes > MAX_MANIFEST_BYTES:
        raise ConfigError(f"{model_dir}: {MANIFEST_FILE} is {manifest_bytes:,} bytes, more than {MAX_MANIFEST_BYTES:,}")
    try:
        with zipfile.ZipFile(model_dir / MODEL_FILE) as archive:
            entries = {info.filename: info.file_size for info in archive.infolist()}
            declared = sum(entries.values())
            if declared > MAX_MODEL_BYTES:
                raise ConfigError(
                    f"{model_dir}: {MODEL_FILE} unpacks to {declared:,} bytes, more than {MAX_MODEL_BYTES:,}"
                )
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise ConfigError(f"{model_dir}: {MODEL_FILE} is not a Keras model file: {exc}") from exc
    needed = _weight_bytes_needed(config)
    held = entries.get(WEIGHTS_ENTRY, 0)
    if needed > held + WEIGHTS_SLACK_BYTES:
        raise ConfigError(
            f"{model_dir}: its layers' sizes need at least {needed:,} bytes of weights, and {MODEL_FILE} holds {held:,}"
        )


def _weight_bytes_needed(config: object) -> int:
    """A lower bound on the float32 weights the layers of a Keras config create when built:
    an embedding's table, a recurrent layer's square recurrent kernel, any layer's units."""
    if isinstance(config, list):
        return sum(_weight_bytes_needed(item) for item in config)
    if not isinstance(config, dict):
        return 0
    total = sum(_weight_bytes_needed(value) for value in config.values())
    layer = config.get("config")
    if isinstance(layer, dict):
        sizes = {k: v for k, v in layer.items() if isinstance(v, int) and not isinstance(v, bool)}
        if "input_dim" in sizes and "output_dim" in sizes:
            total += 4 * sizes["input_dim"] * sizes["output_dim"]
        if "units" in sizes:
            units = sizes["units"]
            total += 4 * units * units if config.get("class_name") in RECURRENT_LAYERS else 4 * units
    return total
