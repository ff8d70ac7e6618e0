"""Model files are data, never code: a version whose model.keras holds a Lambda layer (Python
bytecode) or is a pickle is refused, and nothing in it runs (no servers)."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest

from consumer.serve.scoring import ModelRefused, ModelRunner
from training.registry import MODEL_FILE, load_model

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def version_with(tiny_registry: Path, tmp_path: Path) -> Path:
    """A copy of the tiny registry's promoted version, its manifest intact."""
    version = tmp_path / "v"
    shutil.copytree((tiny_registry / "CURRENT").resolve(), version)
    return version


def test_a_lambda_layer_is_refused_without_running_it(tiny_registry: Path, tmp_path: Path) -> None:
    import keras

    marker = tmp_path / "lambda-ran"
    inputs = keras.Input((4,))
    # the lambda leaves a file behind whenever it is called; Keras saves it as Python bytecode,
    # and loading with safe_mode=False would run it (the path is a constant in that bytecode)
    touch = eval(f"lambda x: (__import__('pathlib').Path({str(marker)!r}).touch(), x)[1] * 2")
    outputs = keras.layers.Lambda(touch)(inputs)
    keras.Model(inputs, outputs).save(tmp_path / "lambda.keras")
    marker.unlink(missing_ok=True)  # building the model called it once
    version = version_with(tiny_registry, tmp_path)
    shutil.copy(tmp_path / "lambda.keras", version / MODEL_FILE)

    with pytest.raises(ValueError, match=r"(?i)lambda"):
        load_model(version)
    with pytest.raises(ModelRefused, match="cannot load"):
        ModelRunner(version)
    assert not marker.exists(), "code from the model file ran"


class _Payload:
    """Unpickling this calls os.system: the classic pickle exploit."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_a_pickled_model_file_is_refused_without_unpickling_it(tiny_registry: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pickle-ran"
    version = version_with(tiny_registry, tmp_path)
    (version / MODEL_FILE).write_bytes(pickle.dumps(_Payload(marker)))

    with pytest.raises(ModelRefused, match="cannot load"):
        ModelRunner(version)
    assert not marker.exists(), "the pickle was loaded"
