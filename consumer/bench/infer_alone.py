"""Inference alone: a served model's sequences/s per batch size, on any Keras 3 backend.

`seqscore bench` times inference on the scorer's own path (TensorFlow; the ragged LSTM on a
CPU). A GPU machine without TensorFlow runs the same `model.keras` on JAX or PyTorch:

    KERAS_BACKEND=jax python -m consumer.bench.infer_alone MODEL_DIR --sizes 1,256,4096,65536 --json out.json

Only Keras, NumPy and the registry's loader are imported, so this runs where the rest of
seqscore (Kafka, Redis, TensorFlow) is not installed. The inputs are the manifest's sample
windows repeated up to each batch size; every call returns NumPy arrays, so a timing includes
the copies to and from the device, as serving pays them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from state.errors import SeqscoreError

BATCH_SIZES = (1, 32, 256, 1024, 4096)
TIMED_SECONDS = 1.0
MAX_CALLS = 200


def time_batches(
    infer: Callable[[dict[str, NDArray[Any]]], object],
    sample: dict[str, NDArray[Any]],
    sizes: Sequence[int] = BATCH_SIZES,
) -> dict[str, dict[str, float]]:
    """Sequences/s and ms per call for each batch size: the median of calls over about a second,
    after one untimed call (a backend compiles per shape there)."""
    out = {}
    for size in sizes:
        reps = -(-size // len(sample["tokens"]))
        batch = {k: np.concatenate([v] * reps)[:size] for k, v in sample.items()}
        infer(batch)
        times: list[float] = []
        started = time.monotonic()
        while len(times) < 3 or (time.monotonic() - started < TIMED_SECONDS and len(times) < MAX_CALLS):
            t = time.perf_counter()
            infer(batch)
            times.append(time.perf_counter() - t)
        median = statistics.median(times)
        out[str(size)] = {"sps": size / median, "ms_per_batch": median * 1000}
    return out


def backend_devices() -> tuple[str, list[str]]:
    """(Keras backend, the accelerators it sees; empty on a CPU)."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return backend, [str(d) for d in jax.devices() if d.platform != "cpu"]
    if backend == "torch":
        import torch

        return backend, [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if backend == "tensorflow":
        import tensorflow as tf

        return backend, [d.name for d in tf.config.list_physical_devices("GPU")]
    return backend, []


def measure(model_path: Path, sizes: Sequence[int]) -> dict[str, Any]:
    import keras

    from training.registry import load_model, resolve_model_dir, smoke_inputs

    model_dir = resolve_model_dir(model_path)
    model, manifest = load_model(model_dir)
    backend, devices = backend_devices()
    return {
        "model_version": model_dir.name,
        "window": manifest["features"]["window"],
        "model_units": manifest["training"]["model"]["units"],
        "keras": keras.__version__,
        "backend": backend,
        "devices": devices,
        "infer_sps_by_batch": time_batches(model.predict_on_batch, smoke_inputs(manifest), sizes),
    }


def table(result: dict[str, Any]) -> str:
    where = ", ".join(result["devices"]) or "CPU"
    rates = "  ".join(f"{size}: {r['sps']:,.0f}/s ({r['ms_per_batch']:.1f} ms)"
                      for size, r in result["infer_sps_by_batch"].items())
    head = f"inference alone, model {result['model_version']}, Keras {result['keras']} on {result['backend']} ({where})"
    return f"{head}\n  {rates}"


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be positive integers: {text!r}")
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m consumer.bench.infer_alone", description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a model version directory, or a registry (its CURRENT version)")
    parser.add_argument("--sizes", type=_sizes, default=list(BATCH_SIZES), help="batch sizes, comma-separated")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    try:
        result = measure(args.model, args.sizes)
    except SeqscoreError as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 2
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
