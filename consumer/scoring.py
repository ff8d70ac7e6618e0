"""The serving model: loaded from the registry in Keras safe mode, compiled once, smoke-tested,
and called once per batch.

Batches are padded up to fixed bucket sizes, so the compiled function sees a handful of
shapes (warmed up at load) and never retraces per batch size. It runs on the GPU when
TensorFlow sees one, otherwise on the CPU.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from state.encoding import FIRST_TOKEN, N_STEP_FEATURES, FeatureSpec
from state.errors import SeqscoreError

log = logging.getLogger(__name__)

BUCKETS = (16, 64, 256, 1024, 4096)
SMOKE_TOLERANCE = 1e-4


class ModelRefused(SeqscoreError):
    """A model version that failed to load or to pass the smoke check."""


def bucket_for(n: int) -> int:
    for size in BUCKETS:
        if n <= size:
            return size
    return BUCKETS[-1]


class ModelRunner:
    """One loaded model version: `infer` takes encoded inputs of any batch size."""

    def __init__(self, model_dir: Path, jit_compile: bool = False) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import tensorflow as tf

        from training.registry import load_model

        started = time.monotonic()
        try:
            self.model, self.manifest = load_model(model_dir)
            self.spec = FeatureSpec.from_dict(self.manifest["features"])
        except Exception as exc:  # a broken file must never take the scorer down
            raise ModelRefused(f"{model_dir}: cannot load: {type(exc).__name__}: {exc}") from exc
        self.version: str = self.manifest["version"]
        churn = self.manifest["churn"]
        self.alert_threshold = float(churn["alert_threshold"])
        self.recovery_threshold = float(churn["recovery_threshold"])
        self.horizon_days = float(churn["horizon_days"])
        self.device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
        window, n_context = self.spec.window, self.spec.n_context
        signature = [
            tf.TensorSpec((None, window), tf.int32, name="tokens"),
            tf.TensorSpec((None, window, N_STEP_FEATURES), tf.float32, name="steps"),
            tf.TensorSpec((None, n_context), tf.float32, name="context"),
        ]
        model = self.model

        def forward(tokens: Any, steps: Any, context: Any) -> Any:
            out = model({"tokens": tokens, "steps": steps, "context": context}, training=False)
            return out["next"], out["churn"]

        self._forward = tf.function(forward, input_signature=signature, jit_compile=jit_compile)
        try:
            for size in BUCKETS:  # compile every shape now, not in the first batches
                self._call(
                    {
                        "tokens": np.zeros((size, window), np.int32),
                        "steps": np.zeros((size, window, N_STEP_FEATURES), np.float32),
                        "context": np.zeros((size, n_context), np.float32),
                    }
                )
            self.smoke_check()
        except ModelRefused:
            raise
        except Exception as exc:
            raise ModelRefused(f"{self.version}: warm-up failed: {type(exc).__name__}: {exc}") from exc
        log.info(
            "model %s ready on %s in %.1fs (window %d, %d classes, jit %s)",
            self.version,
            self.device,
            time.monotonic() - started,
            window,
            self.spec.n_classes,
            jit_compile,
        )

    def _call(self, inputs: dict[str, NDArray[Any]]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        next_proba, churn = self._forward(inputs["tokens"], inputs["steps"], inputs["context"])
        return next_proba.numpy(), churn.numpy().reshape(-1)

    def infer_unpadded(self, inputs: dict[str, NDArray[Any]]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """One call at exactly this batch size (the per-event baseline's way; no bucket padding)."""
        return self._call(inputs)

    def infer(self, inputs: dict[str, NDArray[Any]]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """(next-action probabilities (n, classes), churn risk (n,)) in one call per bucket-sized chunk."""
        n = len(inputs["tokens"])
        if n == 0:
            return np.zeros((0, self.spec.n_classes), np.float32), np.zeros(0, np.float32)
        parts = []
        for start in range(0, n, BUCKETS[-1]):
            chunk = {k: v[start : start + BUCKETS[-1]] for k, v in inputs.items()}
            size = len(chunk["tokens"])
            padded = bucket_for(size)
            if padded != size:
                chunk = {
                    k: np.concatenate([v, np.zeros((padded - size, *v.shape[1:]), v.dtype)]) for k, v in chunk.items()
                }
            next_proba, churn = self._call(chunk)
            parts.append((next_proba[:size], churn[:size]))
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def smoke_check(self) -> None:
        """Re-score the manifest's sample: a model that disagrees with its own training run, or
        answers NaN, is refused."""
        smoke = self.manifest.get("smoke")
        if not smoke:
            raise ModelRefused(f"{self.version}: manifest has no smoke sample")
        inputs = {k: np.asarray(v, dtype=np.int32 if k == "tokens" else np.float32) for k, v in smoke["inputs"].items()}
        next_proba, churn = self.infer(inputs)
        if not (np.isfinite(next_proba).all() and np.isfinite(churn).all()):
            raise ModelRefused(f"{self.version}: smoke check: the model answers NaN or infinity")
        drift = max(
            float(np.abs(next_proba - np.asarray(smoke["next"])).max()),
            float(np.abs(churn - np.asarray(smoke["churn"])).max()),
        )
        if drift > SMOKE_TOLERANCE:
            raise ModelRefused(f"{self.version}: smoke check: outputs differ from training by {drift:.2e}")

    def forecast(self, inputs: dict[str, NDArray[Any]], first: NDArray[np.float32], steps: int) -> NDArray[np.int64]:
        """The next `steps` activities (class indices), each predicted step fed back as the newest
        event (source documents' multi-step forecast): one extra inference call per step."""
        out = np.zeros((len(first), steps), dtype=np.int64)
        if steps == 0 or len(first) == 0:
            return out
        tokens, step_features = inputs["tokens"].copy(), inputs["steps"].copy()
        context = np.zeros_like(inputs["context"])
        context[:, 1:] = inputs["context"][:, 1:]  # profile stays, elapsed time restarts at the new step
        proba = first
        for s in range(steps):
            out[:, s] = proba.argmax(axis=1)
            if s + 1 == steps:
                break
            tokens = np.concatenate([tokens[:, 1:], (out[:, s] + FIRST_TOKEN)[:, None].astype(np.int32)], axis=1)
            appended = step_features[:, -1:, :].copy()
            appended[:, :, 0] = 0.0  # the gap to a predicted step is unknown
            step_features = np.concatenate([step_features[:, 1:], appended], axis=1)
            proba, _ = self.infer({"tokens": tokens, "steps": step_features, "context": context})
        return out
