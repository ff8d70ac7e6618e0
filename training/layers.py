"""The model's own layers: the n-gram prior, the residual next-action head and the churn head
that is monotone in the silence. Registered for Keras' safe-mode loading; they use Keras ops
only, so a served model file runs on any Keras 3 backend (TensorFlow, JAX, PyTorch)."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from state.encoding import GAP_BUCKET_EDGES
from training.ngram import NgramTables

PACKAGE = "seqscore"
CHURN_KNOTS = (0.0, 0.25, 0.5, 1.0)  # on the scaled elapsed time (log1p(days) / gap scale)


@keras.saving.register_keras_serializable(package=PACKAGE)
class NgramPrior(keras.layers.Layer):
    """Log-probabilities of the next activity from the last tokens and the newest event's gap,
    by training/ngram.py's lookup on tables stored as (non-trainable) weights:
    [tokens (n, L), short-gap feature of the newest event (n,)] -> (n, classes)."""

    def __init__(
        self,
        vocab_size: int,
        n_rows: int,
        n_classes: int,
        key_sizes: list[int],
        timed_key_sizes: list[int],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.vocab_size, self.n_rows, self.n_classes = vocab_size, n_rows, n_classes
        self.key_sizes, self.timed_key_sizes = list(key_sizes), list(timed_key_sizes)
        self.token_rows = self.add_weight((vocab_size,), "zeros", dtype="int32", trainable=False, name="token_rows")
        self.keys, self.key_rows = self._chain("", self.key_sizes, first_order=2)
        self.timed_keys, self.timed_rows = self._chain("timed_", self.timed_key_sizes, first_order=1)
        self.log_proba = self.add_weight((n_rows, n_classes), "zeros", trainable=False, name="log_proba")

    def _chain(self, prefix: str, sizes: list[int], first_order: int) -> tuple[list[Any], list[Any]]:
        def table(kind: str, order: int, size: int) -> Any:
            return self.add_weight((size,), "zeros", dtype="int32", trainable=False, name=f"{prefix}{kind}_{order}")

        orders = list(enumerate(sizes, start=first_order))
        return [table("keys", k, n) for k, n in orders], [table("rows", k, n) for k, n in orders]

    @staticmethod
    def sizes_of(tables: NgramTables) -> dict[str, Any]:
        """The constructor's sizes for these tables."""
        return {
            "vocab_size": tables.vocab_size,
            "n_rows": len(tables.log_proba),
            "n_classes": int(tables.log_proba.shape[1]),
            "key_sizes": [len(k) for k in tables.keys],
            "timed_key_sizes": [len(k) for k in tables.timed_keys],
        }

    @classmethod
    def of(cls, tables: NgramTables, name: str = "ngram") -> NgramPrior:
        layer = cls(**cls.sizes_of(tables), name=name)
        layer.load(tables)
        return layer

    def load(self, tables: NgramTables) -> None:
        self.token_rows.assign(tables.token_rows.astype(np.int32))
        pairs = [
            *zip(self.keys, tables.keys, strict=True),
            *zip(self.key_rows, tables.key_rows, strict=True),
            *zip(self.timed_keys, tables.timed_keys, strict=True),
            *zip(self.timed_rows, tables.timed_rows, strict=True),
        ]
        for variable, values in pairs:
            variable.assign(np.asarray(values).astype(np.int32))
        self.log_proba.assign(tables.log_proba)

    def call(self, inputs: Any) -> Any:
        tokens, gap = inputs
        order = len(self.keys) + 1
        tokens = ops.cast(tokens, "int32")
        tokens = ops.concatenate([ops.zeros((ops.shape(tokens)[0], order), "int32"), tokens], axis=1)
        newest = tokens[:, -1]
        by_token = ops.take(self.token_rows, newest)
        plain = self._follow(ops.where(by_token >= 0, by_token, 0), newest, by_token >= 0, tokens, 2, plain=True)
        edges = ops.convert_to_tensor(GAP_BUCKET_EDGES)
        bucket = ops.sum(ops.cast(ops.reshape(gap, (-1, 1)) >= edges, "int32"), axis=-1)
        unset = ops.full_like(newest, -1)
        timed = self._follow(unset, bucket, ops.ones_like(newest, "bool"), tokens, 1, plain=False)
        return ops.take(self.log_proba, ops.where(timed >= 0, timed, plain), axis=0)

    def _follow(self, row: Any, parent: Any, valid: Any, tokens: Any, first_order: int, plain: bool) -> Any:
        keys_by_order = self.keys if plain else self.timed_keys
        rows_by_order = self.key_rows if plain else self.timed_rows
        sizes = self.key_sizes if plain else self.timed_key_sizes
        for k, (keys, key_rows, size) in enumerate(zip(keys_by_order, rows_by_order, sizes, strict=True), first_order):
            key = parent * self.vocab_size + tokens[:, -k]
            pos = ops.clip(ops.cast(ops.searchsorted(keys, key), "int32"), 0, size - 1)
            found = ops.logical_and(valid, ops.equal(ops.take(keys, pos), key))
            row = ops.where(found, ops.take(key_rows, pos), row)
            parent, valid = pos, found
        return row

    def compute_output_shape(self, input_shape: Any) -> Any:
        return (input_shape[0][0], self.n_classes)

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {
            "vocab_size": self.vocab_size,
            "n_rows": self.n_rows,
            "n_classes": self.n_classes,
            "key_sizes": self.key_sizes,
            "timed_key_sizes": self.timed_key_sizes,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class PriorResidual(keras.layers.Layer):
    """softmax(network logits + w * log prior): [logits, log prior] -> probabilities. With the
    logits at zero the output is the prior's own ranking (the n-gram fallback)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.supports_masking = True  # the mask of the steps passes through; padding carries no loss

    def build(self, input_shape: Any) -> None:
        self.prior_weight = self.add_weight((), keras.initializers.Constant(1.0), name="prior_weight")

    def call(self, inputs: Any) -> Any:
        logits, log_prior = inputs
        return ops.softmax(logits + self.prior_weight * log_prior, axis=-1)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape[0]


@keras.saving.register_keras_serializable(package=PACKAGE)
class MonotoneChurn(keras.layers.Layer):
    """Churn risk that never falls as the silence grows: [hidden, elapsed] -> (..., 1).

    logit = a(h) + sum_j softplus(b_j(h)) * relu(elapsed - knot_j), with a and b linear in the
    hidden features, which do not see the elapsed time. Every slope is positive, so for a
    given history the risk rises with the silence, also past the longest silence seen in
    training. With a and b constant (their kernels zeroed) the ranking is recency's.
    """

    def __init__(self, knots: tuple[float, ...] = CHURN_KNOTS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.supports_masking = True
        self.knots = tuple(float(k) for k in knots)

    def build(self, input_shape: Any) -> None:
        hidden = int(input_shape[0][-1])
        self.kernel = self.add_weight((hidden, 1 + len(self.knots)), "glorot_uniform", name="kernel")
        self.bias = self.add_weight((1 + len(self.knots),), "zeros", name="bias")

    def call(self, inputs: Any) -> Any:
        hidden, elapsed = inputs
        z = ops.matmul(hidden, self.kernel) + self.bias
        basis = ops.relu(elapsed - ops.convert_to_tensor(np.array(self.knots, np.float32)))
        logit = z[..., :1] + ops.sum(ops.softplus(z[..., 1:]) * basis, axis=-1, keepdims=True)
        return ops.sigmoid(logit)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return (*input_shape[0][:-1], 1)

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"knots": list(self.knots)}
