"""The sequence model: embedding + time features -> LSTM stack -> next-action and churn heads.

Two graphs share every layer. The training graph applies the heads at every step
(each event of a window is a training target, so one pass trains up to L examples);
the serving graph applies them to the last step only and is what the registry stores.
With pre-padding and masking, the training output at step j equals the serving output
for the window that ends at event j (tests/unit/training/test_training.py proves it).

Next action is a residual on the n-gram (training/ngram.py): softmax(network logits +
w * log n-gram). The serving graph looks the n-gram up from its tokens (an NgramPrior
layer holding the tables); the training graph gets each step's n-gram row as an input
(`prior_row`, into a frozen table of out-of-fold n-grams), because an n-gram that has
counted a training target would tell the network more than it will know when serving.

Churn is monotone in the silence (training/layers.py, MonotoneChurn): the hidden
features see the history and the profile, never the elapsed time at scoring, which
enters only through positive slopes.

Serving graph, for a batch of n windows of L events (see state/encoding.py):
    inputs:  tokens (n, L) int32, steps (n, L, 7) float32, context (n, C) float32
    outputs: next (n, n_classes) softmax, churn (n, 1) sigmoid
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from state.encoding import N_STEP_FEATURES, SHORT_GAP_FEATURE, FeatureSpec

HEAD_LAYERS = ("hidden", "next_logits", "ngram", "next", "churn")


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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def apply_heads(
    layer: Any, last: Any, context: Any, tokens: Any, newest_gap: Any, with_profile: bool
) -> tuple[Any, Any]:
    """(next, churn) from the newest LSTM output, the scoring context, the tokens and the newest
    event's short-gap feature, with the serving model's own layers (`layer(name)`): shared by the
    serving graph and the ragged path."""
    joined = layer("join_last")([last, context[:, 1:]]) if with_profile else last
    hidden = layer("hidden")(joined)
    next_proba = layer("next")([layer("next_logits")(hidden), layer("ngram")([tokens, newest_gap])])
    return next_proba, layer("churn")([hidden, context[:, :1]])


def build_models(
    spec: FeatureSpec,
    config: ModelConfig,
    ngram: dict[str, Any],
    prior_rows: int = 1,
    window: int | None = -1,
) -> tuple[Any, Any]:
    """(training model, serving model) sharing weights. `ngram` is the NgramPrior layer's
    config (its sizes); `prior_rows` the rows of the training graph's prior table.
    `window=None` builds them for any sequence length (serving runs short histories over
    their real steps only)."""
    import keras
    from keras import layers

    window = spec.window if window == -1 else window
    tokens = keras.Input((window,), dtype="int32", name="tokens")
    steps = keras.Input((window, N_STEP_FEATURES), dtype="float32", name="steps")
    context_seq = keras.Input((window, spec.n_context), dtype="float32", name="context")
    prior_row = keras.Input((window,), dtype="int32", name="prior_row")
    context = keras.Input((spec.n_context,), dtype="float32", name="context")

    x = _encode_steps(spec, config, tokens, steps)
    shared = _head_layers(spec, config, ngram)
    prior_table = layers.Embedding(prior_rows, spec.n_classes, trainable=False, name="prior_table")
    dropout = layers.Dropout(config.dropout, name="hidden_dropout")

    profile_seq = context_seq[..., 1:]
    joined = layers.Concatenate(name="join_steps")([x, profile_seq]) if spec.use_profile else x
    h_train = dropout(shared["hidden"](joined))
    next_train = shared["next"]([shared["next_logits"](h_train), prior_table(prior_row)])
    train_model = keras.Model(
        {"tokens": tokens, "steps": steps, "context": context_seq, "prior_row": prior_row},
        {"next": next_train, "churn": shared["churn"]([h_train, context_seq[..., :1]])},
        name="seqscore_train",
    )
    last = x[:, -1, :]  # pre-padding: the last step is always the newest real event
    next_serve, churn_serve = apply_heads(
        shared.__getitem__, last, context, tokens, steps[:, -1, SHORT_GAP_FEATURE], spec.use_profile
    )
    serve_model = keras.Model(
        {"tokens": tokens, "steps": steps, "context": context},
        {"next": next_serve, "churn": churn_serve},
        name="seqscore",
    )
    return train_model, serve_model


def _encode_steps(spec: FeatureSpec, config: ModelConfig, tokens: Any, steps: Any) -> Any:
    """Each step's LSTM output from its embedded token and its time features."""
    import keras
    from keras import layers

    embedded = layers.Embedding(spec.vocab_size, config.embedding_dim, name="embedding")(tokens)
    x = layers.Concatenate(name="step_input")([embedded, steps])
    # Concatenate drops the embedding's mask, so the padding mask is given explicitly;
    # masked steps are skipped, which makes pre-padded windows of any length exact.
    real = keras.ops.not_equal(tokens, 0)
    for i in range(config.layers):
        x = layers.LSTM(config.units, return_sequences=True, dropout=config.dropout, name=f"lstm_{i}")(x, mask=real)
    return x


def _head_layers(spec: FeatureSpec, config: ModelConfig, ngram: dict[str, Any]) -> dict[str, Any]:
    """The head layers both graphs share, by name (HEAD_LAYERS and the profile join)."""
    from keras import layers

    from training.layers import MonotoneChurn, NgramPrior, PriorResidual

    return {
        "join_last": layers.Concatenate(name="join_last"),
        "hidden": layers.Dense(config.dense_units, activation="relu", name="hidden"),
        # starts at zero: the untrained model predicts what the n-gram predicts
        "next_logits": layers.Dense(spec.n_classes, kernel_initializer="zeros", name="next_logits"),
        "ngram": NgramPrior(**ngram, name="ngram"),
        "next": PriorResidual(name="next"),
        "churn": MonotoneChurn(name="churn"),
    }


def ngram_config(model: Any) -> dict[str, Any]:
    """The NgramPrior sizes of a built or loaded serving model."""
    config = model.get_layer("ngram").get_config()
    return {k: config[k] for k in ("vocab_size", "n_rows", "n_classes", "key_sizes", "timed_key_sizes")}
