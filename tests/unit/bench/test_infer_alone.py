"""Inference alone on the Keras backend at hand (TensorFlow here; JAX or PyTorch on a GPU machine)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from consumer.bench.infer_alone import main, time_batches
from training.registry import load_model, resolve_model_dir, smoke_inputs


def test_the_model_file_alone_reproduces_the_outputs_its_training_recorded(tiny_registry: Path) -> None:
    # the GPU figure times this file on another backend: it must be the model that serves
    model, manifest = load_model(resolve_model_dir(tiny_registry))
    out = model.predict_on_batch(smoke_inputs(manifest))
    np.testing.assert_allclose(out["next"], manifest["smoke"]["next"], atol=1e-5)
    np.testing.assert_allclose(np.reshape(out["churn"], -1), manifest["smoke"]["churn"], atol=1e-5)


def test_time_batches_calls_at_each_size_and_reports_its_rate() -> None:
    seen: list[int] = []
    sample = {"tokens": np.ones((3, 4), np.int32), "context": np.zeros((3, 2), np.float32)}
    rates = time_batches(lambda batch: seen.append(len(batch["tokens"])), sample, sizes=(1, 7))
    assert set(rates) == {"1", "7"}
    assert set(seen) == {1, 7} and seen.count(7) >= 4  # an untimed call, then at least three timed
    for size, rate in rates.items():
        assert rate["sps"] == pytest.approx(int(size) / (rate["ms_per_batch"] / 1000))


def test_the_command_writes_every_size_as_json(tiny_registry: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tiny_registry), "--sizes", "1,16", "--json", str(tmp_path / "infer.json")]) == 0
    result = json.loads((tmp_path / "infer.json").read_text())
    assert result["backend"] == "tensorflow" and result["window"] == 12 and result["model_units"] == 16
    assert set(result["infer_sps_by_batch"]) == {"1", "16"}
    assert all(r["sps"] > 0 for r in result["infer_sps_by_batch"].values())
    assert "16: " in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "named"), [
    (["{missing}"], "neither a model version directory nor a registry"),
    (["{registry}", "--sizes", "0,8"], "--sizes"),
    (["{registry}", "--sizes", "a"], "--sizes"),
])
def test_bad_arguments_get_one_line_naming_them(argv: list[str], named: str, tiny_registry: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    args = [a.format(missing=tmp_path / "nothing", registry=tiny_registry) for a in argv]
    with pytest.raises(SystemExit) as exited:
        raise SystemExit(main(args))
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert named in err and len(err.splitlines()) <= 3 and "Traceback" not in err
