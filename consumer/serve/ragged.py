"""The serving model's LSTM run over each row's real steps only, all rows in one call.

Windows are pre-padded and the LSTM skips masked steps, so a row's state stays zero until its
first real event. Sort the rows by length: at step t of L only the rows with at least L - t
events are active, and they are a suffix of the sorted batch that grows by the rows whose
history starts at t. Each step multiplies only that suffix, so the recurrent cost is the
batch's real steps (no padding to length groups, no per-group calls), and the result is the
masked Keras LSTM's to float rounding (tests/unit/serve/test_scoring.py compares them).

Inputs go in time-major, so a step's rows are one contiguous slice. The token embedding's
input projection (embedding x kernel + bias) is folded into one table per token: a step
gathers its rows' projections instead of multiplying the embedding again.

Only the recurrent part is rewritten; the heads are the model's own layers, applied by the
same function as in the serving graph (training/model.py, apply_heads). A model this
does not describe (another activation, a backwards or stateful LSTM) is served by the Keras
graph instead (`unsupported` says why).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from state.encoding import N_STEP_FEATURES, SHORT_GAP_FEATURE
from training.model import HEAD_LAYERS, apply_heads
from training.ngram import MAX_ORDER as NGRAM_ORDER


def unsupported(model: Any) -> str | None:
    """Why the ragged path cannot reproduce this serving model, or None when it can."""
    import keras

    lstms = [layer for layer in model.layers if isinstance(layer, keras.layers.LSTM)]
    if not lstms:
        return "no LSTM layer"
    for layer in lstms:
        cell = layer.cell
        if cell.activation is not keras.activations.tanh or cell.recurrent_activation is not keras.activations.sigmoid:
            return f"{layer.name}: activations other than tanh/sigmoid"
        if not cell.use_bias or layer.go_backwards or layer.stateful or not layer.return_sequences:
            return f"{layer.name}: not a plain forward LSTM over the sequence"
    names = {layer.name for layer in model.layers}
    missing = {"embedding", *HEAD_LAYERS} - names
    return f"layers missing: {sorted(missing)}" if missing else None


class RaggedForward:
    """`__call__(tokens, steps, context)` like the serving model (batch-major, pre-padded), one
    traced function per window length L in `lengths` (the batch's longest row picks it)."""

    def __init__(self, model: Any, lengths: tuple[int, ...]) -> None:
        import keras
        import tensorflow as tf

        self.lengths = lengths
        embedding = model.get_layer("embedding").get_weights()[0]
        lstms = [layer for layer in model.layers if isinstance(layer, keras.layers.LSTM)]
        first_kernel, _, first_bias = lstms[0].get_weights()
        dim = embedding.shape[1]
        self.units = [layer.cell.units for layer in lstms]
        self._token_projection = tf.constant(embedding @ first_kernel[:dim] + first_bias)
        self._step_kernel = tf.constant(first_kernel[dim:])
        self._layers = [
            (tf.constant(kernel), tf.constant(recurrent), tf.constant(bias))
            for kernel, recurrent, bias in (layer.get_weights() for layer in lstms)
        ]
        self._layer = model.get_layer
        self._with_profile = any(layer.name == "join_last" for layer in model.layers)
        self._functions: dict[int, Any] = {}

    def _function(self, length: int) -> Any:
        import tensorflow as tf

        if length in self._functions:
            return self._functions[length]
        layer, with_profile = self._layer, self._with_profile
        table, step_kernel, layers, units = self._token_projection, self._step_kernel, self._layers, self.units

        def cell(z: Any, c: Any) -> tuple[Any, Any]:
            i, f, g, o = tf.split(z, 4, axis=1)  # Keras' gate order
            c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
            return tf.sigmoid(o) * tf.tanh(c), c

        def forward(tokens: Any, steps: Any, context: Any, starts: Any) -> Any:
            n = tf.shape(tokens)[1]
            h = [tf.zeros((0, u)) for u in units]
            c = [tf.zeros((0, u)) for u in units]
            active_from = n
            for t in range(length):
                start = starts[t]
                entering = active_from - start  # rows whose history starts at this step
                h = [tf.concat([tf.zeros((entering, u)), state], 0) for u, state in zip(units, h, strict=True)]
                c = [tf.concat([tf.zeros((entering, u)), state], 0) for u, state in zip(units, c, strict=True)]
                x = None
                for k, (kernel, recurrent, bias) in enumerate(layers):
                    if k == 0:
                        z = tf.gather(table, tokens[t, start:]) + tf.matmul(steps[t, start:], step_kernel)
                    else:
                        z = tf.matmul(x, kernel) + bias
                    h[k], c[k] = cell(z + tf.matmul(h[k], recurrent), c[k])
                    x = h[k]
                active_from = start
            last = tf.concat([tf.zeros((active_from, units[-1])), h[-1]], 0)
            newest_tokens = tf.transpose(tokens[-NGRAM_ORDER:])  # batch-major, as the n-gram reads them
            return apply_heads(layer, last, context, newest_tokens, steps[-1, :, SHORT_GAP_FEATURE], with_profile)

        signature = [
            tf.TensorSpec((length, None), tf.int32, name="tokens"),
            tf.TensorSpec((length, None, N_STEP_FEATURES), tf.float32, name="steps"),
            tf.TensorSpec((None, None), tf.float32, name="context"),
            tf.TensorSpec((length,), tf.int32, name="starts"),
        ]
        # called as its one concrete function: the polymorphic function binds and casts every
        # call's inputs against the signature again, 0.4-0.7 ms of a 1.2-1.6 ms call at 200
        # rows, which the small batches of a moderate stream pay once per batch
        function = self._functions[length] = tf.function(forward, input_signature=signature).get_concrete_function()
        return function

    def __call__(self, inputs: dict[str, NDArray[Any]]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        tokens, steps, context = inputs["tokens"], inputs["steps"], inputs["context"]
        n = len(tokens)
        real_steps = np.count_nonzero(tokens, axis=1)
        order = np.argsort(real_steps, kind="stable")
        by_length = real_steps[order]
        length = self.lengths[min(int(np.searchsorted(self.lengths, by_length[-1])), len(self.lengths) - 1)]
        if tokens.shape[1] < length:  # a narrower window than the model's: pad it on the left
            pad = length - tokens.shape[1]
            tokens = np.pad(tokens, ((0, 0), (pad, 0)))
            steps = np.pad(steps, ((0, 0), (pad, 0), (0, 0)))
        # step t runs the rows with at least `length - t` events: a suffix of the sorted batch
        starts = np.searchsorted(by_length, length - np.arange(length), side="left").astype(np.int32)
        next_sorted, churn_sorted = self._function(length)(
            np.ascontiguousarray(tokens[order, -length:].T),
            np.ascontiguousarray(steps[order, -length:].transpose(1, 0, 2)),
            context[order],
            starts,
        )
        next_proba = np.empty((n, next_sorted.shape[1]), np.float32)
        churn = np.empty(n, np.float32)
        next_proba[order] = next_sorted.numpy()
        churn[order] = churn_sorted.numpy().reshape(-1)
        return next_proba, churn
