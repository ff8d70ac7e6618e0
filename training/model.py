"""The sequence model: embedding + time features -> LSTM stack -> next-action and churn heads.

Two graphs share every layer. The training graph applies the heads at every step
(each event of a window is a training target, so one pass trains up to L examples);
the serving graph applies them to the last step only and is what the registry stores.
With pre-padding and masking, the training output at step j equals the serving output
for the window that ends at event j (tests/unit/test_training.py proves it).

Serving graph, for a batch of n windows of L events (see state/encoding.py):
    inputs:  tokens (n, L) int32, steps (n, L, 3) float32, context (n, C) float32
    outputs: next (n, n_classes) softmax, churn (n, 1) sigmoid
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from state.encoding import N_STEP_FEATURES, FeatureSpec


@dataclass(frozen=True)
class ModelConfig:
    units: int = 64
    layers: int = 1
    embedding_dim: int = 32
    dense_units: int = 64
    dropout: float = 0.2
    learning_rate: float = 1e-3
    lr_decay: float = 0.9  # per epoch
    batch_size: int = 128
    churn_loss_weight: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_models(spec: FeatureSpec, config: ModelConfig, window: int | None = -1) -> tuple[Any, Any]:
    """(training model, serving model) sharing weights. `window=None` builds them for any
    sequence length (serving runs short histories over their real steps only)."""
    import keras
    from keras import layers

    window = spec.window if window == -1 else window
    tokens = keras.Input((window,), dtype="int32", name="tokens")
    steps = keras.Input((window, N_STEP_FEATURES), dtype="float32", name="steps")
    context_seq = keras.Input((window, spec.n_context), dtype="float32", name="context")
    context = keras.Input((spec.n_context,), dtype="float32", name="context")

    embedded = layers.Embedding(spec.vocab_size, config.embedding_dim, name="embedding")(tokens)
    x = layers.Concatenate(name="step_input")([embedded, steps])
    # Concatenate drops the embedding's mask, so the padding mask is given explicitly;
    # masked steps are skipped, which makes pre-padded windows of any length exact.
    real = keras.ops.not_equal(tokens, 0)
    for i in range(config.layers):
        x = layers.LSTM(config.units, return_sequences=True, dropout=config.dropout, name=f"lstm_{i}")(x, mask=real)

    join_train = layers.Concatenate(name="join_steps")
    join_serve = layers.Concatenate(name="join_last")
    hidden = layers.Dense(config.dense_units, activation="relu", name="hidden")
    dropout = layers.Dropout(config.dropout, name="hidden_dropout")
    next_head = layers.Dense(spec.n_classes, activation="softmax", name="next")
    churn_head = layers.Dense(1, activation="sigmoid", name="churn")

    h_train = dropout(hidden(join_train([x, context_seq])))
    train_model = keras.Model(
        {"tokens": tokens, "steps": steps, "context": context_seq},
        {"next": next_head(h_train), "churn": churn_head(h_train)},
        name="seqscore_train",
    )
    last = x[:, -1, :]  # pre-padding: the last step is always the newest real event
    h_serve = hidden(join_serve([last, context]))
    serve_model = keras.Model(
        {"tokens": tokens, "steps": steps, "context": context},
        {"next": next_head(h_serve), "churn": churn_head(h_serve)},
        name="seqscore",
    )
    return train_model, serve_model
