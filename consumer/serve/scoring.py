"""The serving model: loaded from the registry in Keras safe mode, compiled once, smoke-tested,
and called once per batch.

The compiled function has dynamic batch and time axes, so it is traced once and never
retraces per batch size; with XLA (`SEQSCORE_MODEL__JIT_COMPILE`) batches are padded up to
fixed bucket sizes, each compiled at load. It runs on the GPU when TensorFlow sees one,
otherwise on the CPU.

Most customers have far fewer events than the window. Windows are pre-padded and the LSTM
skips masked steps, so on the CPU the recurrent part runs over each row's real steps only,
all rows in one call (consumer/serve/ragged.py): the cost follows the real history. The Keras
graph serves where that does not apply (XLA, a GPU's fused kernels, a model the ragged path
does not describe): there rows are grouped by length into LENGTH_BUCKETS and each group
runs over its bucket's length only, which is exact for the same reason.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from consumer.serve.ragged import RaggedForward, unsupported
from state.encoding import FIRST_TOKEN, N_STEP_FEATURES, FeatureSpec
from state.errors import SeqscoreError
from training.registry import load_model, smoke_inputs

log = logging.getLogger(__name__)

BUCKETS = (16, 64, 256, 1024, 4096)
LENGTH_BUCKETS = (4, 8, 16, 32)  # plus the full window
SMOKE_TOLERANCE = 1e-4


class ModelRefused(SeqscoreError):
    """A model version that failed to load or to pass the smoke check."""


def bucket_for(n: int) -> int:
    for size in BUCKETS:
        if n <= size:
            return size
    return BUCKETS[-1]


def configure_threads(threads: int) -> None:
    """TensorFlow's thread pools for this process (0: its default, one thread per core). They
    are fixed once TensorFlow runs its first op: a different count asked for later is refused."""
    if threads <= 0:
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        log.warning(
            "TensorFlow's threads were fixed by an earlier op (intra-op %d, 0 = one per core): %d applies "
            "from the next start",
            tf.config.threading.get_intra_op_parallelism_threads(),
            threads,
        )


class ModelRunner:
    """One loaded model version: `infer` takes encoded inputs of any batch size."""

    def __init__(self, model_dir: Path, jit_compile: bool = False, threads: int = 0) -> None:
        self.jit_compile = jit_compile
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        configure_threads(threads)
        import tensorflow as tf

        started = time.monotonic()
        try:
            loaded, self.manifest = load_model(model_dir)
            self.spec = FeatureSpec.from_dict(self.manifest["features"])
            self.model = any_length_copy(loaded, self.spec, self.manifest["training"]["model"])
        except Exception as exc:  # a broken file must never take the scorer down
            raise ModelRefused(f"{model_dir}: cannot load: {type(exc).__name__}: {exc}") from exc
        self.version: str = self.manifest["version"]
        churn = self.manifest["churn"]
        self.alert_threshold = float(churn["alert_threshold"])
        self.recovery_threshold = float(churn["recovery_threshold"])
        self.horizon_days = float(churn["horizon_days"])
        self.device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
        window, n_context = self.spec.window, self.spec.n_context
        self.lengths = (*[b for b in LENGTH_BUCKETS if b < window], window)
        signature = [
            tf.TensorSpec((None, None), tf.int32, name="tokens"),
            tf.TensorSpec((None, None, N_STEP_FEATURES), tf.float32, name="steps"),
            tf.TensorSpec((None, n_context), tf.float32, name="context"),
        ]
        model = self.model
        why_not = "XLA" if jit_compile else "GPU" if self.device == "GPU" else unsupported(model)
        self._ragged = RaggedForward(model, self.lengths) if why_not is None else None
        self.path = "ragged" if why_not is None else f"length groups ({why_not})"

        def forward(tokens: Any, steps: Any, context: Any) -> Any:
            out = model({"tokens": tokens, "steps": steps, "context": context}, training=False)
            return out["next"], out["churn"]

        self._forward = tf.function(forward, input_signature=signature, jit_compile=jit_compile)
        self._warm_up(n_context)
        log.info(
            "model %s ready on %s in %.1fs (%s; window %d, %d classes, jit %s)",
            self.version,
            self.device,
            time.monotonic() - started,
            self.path,
            window,
            self.spec.n_classes,
            jit_compile,
        )

    def _warm_up(self, n_context: int) -> None:
        """Trace (XLA: compile) every shape the batches will use, then smoke-check the model;
        any failure refuses the version."""
        try:
            # XLA compiles per shape: all of them now, not in the first batches; the plain
            # function has one trace for every shape and the ragged path one per length, so
            # one small call per length warms them
            sizes = BUCKETS if self.jit_compile else BUCKETS[:1]
            for size in sizes:
                for length in self.lengths:
                    # the smoke sample may not reach every length group: each one must answer finitely
                    self._refuse_non_finite(
                        *self.infer(
                            {
                                "tokens": np.ones((size, length), np.int32),
                                "steps": np.zeros((size, length, N_STEP_FEATURES), np.float32),
                                "context": np.zeros((size, n_context), np.float32),
                            }
                        ),
                        f"warm-up at length {length}",
                    )
            self.smoke_check()
        except ModelRefused:
            raise
        except Exception as exc:
            raise ModelRefused(f"{self.version}: warm-up failed: {type(exc).__name__}: {exc}") from exc

    def _call(self, inputs: dict[str, NDArray[Any]]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        next_proba, churn = self._forward(inputs["tokens"], inputs["steps"], inputs["context"])
        return next_proba.numpy(), churn.numpy().reshape(-1)

    def infer_unpadded(self, inputs: dict[str, NDArray[Any]]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """One call at exactly this batch size (the per-event baseline's way; no bucket padding)."""
        return self._call(inputs)

    def infer(self, inputs: dict[str, NDArray[Any]]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """(next-action probabilities (n, classes), churn risk (n,)): one call per length group
        present (and per 4096 rows), each over its group's length only."""
        n = len(inputs["tokens"])
        if n == 0:
            return np.zeros((0, self.spec.n_classes), np.float32), np.zeros(0, np.float32)
        if self._ragged is not None:
            return _in_chunks(self._ragged, inputs)
        tokens, steps, context = inputs["tokens"], inputs["steps"], inputs["context"]
        group = np.searchsorted(self.lengths, np.count_nonzero(tokens, axis=1))
        present = np.unique(group)
        if len(present) == 1:  # one group: no gather/scatter
            length = self.lengths[int(present[0])]
            return self._infer_rows({"tokens": tokens[:, -length:], "steps": steps[:, -length:], "context": context})
        next_proba = np.empty((n, self.spec.n_classes), np.float32)
        churn = np.empty(n, np.float32)
        for g in present.tolist():
            rows = np.flatnonzero(group == g)
            length = self.lengths[g]
            part = {"tokens": tokens[rows, -length:], "steps": steps[rows, -length:], "context": context[rows]}
            next_proba[rows], churn[rows] = self._infer_rows(part)
        return next_proba, churn

    def _infer_rows(self, inputs: dict[str, NDArray[Any]]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Rows of one length, at most 4096 per call; padded up to a batch bucket under XLA only
        (it compiles per shape; the plain function has a dynamic batch axis and one trace)."""

        def call(chunk: dict[str, NDArray[Any]]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
            size = len(chunk["tokens"])
            padded = bucket_for(size) if self.jit_compile else size
            if padded != size:
                chunk = {
                    k: np.concatenate([v, np.zeros((padded - size, *v.shape[1:]), v.dtype)]) for k, v in chunk.items()
                }
            next_proba, churn = self._call(chunk)
            return next_proba[:size], churn[:size]

        return _in_chunks(call, inputs)

    def smoke_check(self) -> None:
        """Re-score the manifest's sample: a model that disagrees with its own training run, or
        answers NaN, is refused."""
        smoke = self.manifest.get("smoke")
        if not smoke:
            raise ModelRefused(f"{self.version}: manifest has no smoke sample")
        next_proba, churn = self.infer(smoke_inputs(self.manifest))
        self._refuse_non_finite(next_proba, churn, "smoke check")
        drift = max(
            float(np.abs(next_proba - np.asarray(smoke["next"])).max()),
            float(np.abs(churn - np.asarray(smoke["churn"])).max()),
        )
        if not drift <= SMOKE_TOLERANCE:  # NaN in the manifest's expected outputs must refuse too
            raise ModelRefused(f"{self.version}: smoke check: outputs differ from training by {drift:.2e}")

    def _refuse_non_finite(self, next_proba: NDArray[np.float32], churn: NDArray[np.float32], stage: str) -> None:
        bad = {
            name: int(np.count_nonzero(~np.isfinite(values)))
            for name, values in (("next-action", next_proba), ("churn", churn))
        }
        if any(bad.values()):
            counts = ", ".join(f"{n} {name}" for name, n in bad.items() if n)
            raise ModelRefused(f"{self.version}: {stage}: non-finite output (NaN or infinity): {counts} values")

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


def _in_chunks(
    call: Callable[[dict[str, NDArray[Any]]], tuple[NDArray[np.float32], NDArray[np.float32]]],
    inputs: dict[str, NDArray[Any]],
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """`call` over at most BUCKETS[-1] rows at a time (bounded memory for a sweep's big batches)."""
    n = len(inputs["tokens"])
    if n <= BUCKETS[-1]:
        return call(inputs)
    parts = [call({k: v[start : start + BUCKETS[-1]] for k, v in inputs.items()}) for start in range(0, n, BUCKETS[-1])]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def any_length_copy(model: Any, spec: FeatureSpec, config: dict[str, Any]) -> Any:
    """The serving model rebuilt for any sequence length, with the loaded model's weights."""
    from training.model import ModelConfig, build_models, ngram_config

    _, serving = build_models(spec, ModelConfig.from_dict(config), ngram_config(model), window=None)
    for layer in serving.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return serving
