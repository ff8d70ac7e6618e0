"""Model versions derived from a trained one, for refusal tests: the same files under a new
version name, optionally with weights overwritten so the model loads but answers NaN/Inf."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np


def copy_version(source: Path, dest: Path) -> Path:
    """`source` (a version directory) copied to `dest`, its manifest naming `dest.name`."""
    shutil.copytree(source.resolve(), dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["version"] = dest.name
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def poisoned_version(source: Path, dest: Path, value: float = float("nan"), layer: str | None = None) -> Path:
    """A copy whose weights (every layer's, or one layer's) are all `value`. It still loads in
    Keras safe mode: only its outputs give it away."""
    from training.registry import MODEL_FILE, load_model

    copy_version(source, dest)
    model, _ = load_model(dest)
    for target in model.layers if layer is None else [model.get_layer(layer)]:
        target.set_weights([np.full_like(w, value) for w in target.get_weights()])
    (dest / MODEL_FILE).unlink()
    model.save(dest / MODEL_FILE)
    return dest
