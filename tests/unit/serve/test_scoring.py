"""The serving model runner and the output builders, on a tiny trained model (no servers)."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from consumer.serve.emit import churn_alert_value, iso, iso_many, next_action_values
from consumer.serve.ragged import RaggedForward, unsupported
from consumer.serve.scoring import ModelRefused, ModelRunner
from state.encoding import FIRST_TOKEN, N_STEP_FEATURES, FeatureSpec
from state.events import ChurnAlertMessage, NextActionMessage


@pytest.fixture(scope="module")
def runner(tiny_registry: Path) -> ModelRunner:
    return ModelRunner(tiny_registry / "CURRENT")


def smoke_inputs(runner: ModelRunner, n: int) -> dict[str, np.ndarray]:
    smoke = runner.manifest["smoke"]["inputs"]
    inputs = {k: np.asarray(v, dtype=np.int32 if k == "tokens" else np.float32) for k, v in smoke.items()}
    reps = -(-n // len(inputs["tokens"]))
    return {k: np.concatenate([v] * reps)[:n] for k, v in inputs.items()}


def test_padding_to_a_bucket_never_changes_a_row(runner: ModelRunner) -> None:
    inputs = smoke_inputs(runner, 70)  # bucket 256 for all, 16 for the first 5
    proba_all, risk_all = runner.infer(inputs)
    proba_few, risk_few = runner.infer({k: v[:5] for k, v in inputs.items()})
    assert proba_all.shape == (70, runner.spec.n_classes) and risk_all.shape == (70,)
    assert np.allclose(proba_all[:5], proba_few, atol=1e-6) and np.allclose(risk_all[:5], risk_few, atol=1e-6)
    assert np.allclose(proba_all.sum(axis=1), 1.0, atol=1e-5)


def test_forecast_feeds_each_predicted_step_back(runner: ModelRunner) -> None:
    inputs = smoke_inputs(runner, 4)
    first, _ = runner.infer(inputs)
    steps = runner.forecast(inputs, first, 3)
    assert steps.shape == (4, 3)
    assert (steps[:, 0] == first.argmax(axis=1)).all()
    tokens = np.concatenate([inputs["tokens"][:, 1:], (steps[:, :1] + FIRST_TOKEN).astype(np.int32)], axis=1)
    fed = inputs["steps"].copy()
    fed = np.concatenate([fed[:, 1:], fed[:, -1:]], axis=1)
    fed[:, -1, 0] = 0.0
    context = inputs["context"].copy()
    context[:, 0] = 0.0
    second, _ = runner.infer({"tokens": tokens, "steps": fed, "context": context})
    assert (steps[:, 1] == second.argmax(axis=1)).all()


def test_a_version_that_disagrees_with_its_training_run_is_refused(tiny_registry: Path, tmp_path: Path) -> None:
    broken = tmp_path / "v"
    shutil.copytree((tiny_registry / "CURRENT").resolve(), broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["smoke"]["churn"] = [1.0 - c for c in manifest["smoke"]["churn"]]
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelRefused, match="smoke check"):
        ModelRunner(broken)


def test_timestamps_formatted_in_one_call_equal_one_at_a_time() -> None:
    rng = np.random.default_rng(7)
    ts = np.concatenate([[0, 951_782_400, 4_102_444_799], rng.integers(0, 4_102_444_800, size=500)])  # 2000-02-29
    assert iso_many(ts) == [iso(int(t)) for t in ts]
    assert iso_many(np.zeros(0, np.int64)) == []


def test_outputs_follow_the_published_contract(runner: ModelRunner) -> None:
    inputs = smoke_inputs(runner, 2)
    proba, risk = runner.infer(inputs)
    steps = runner.forecast(inputs, proba, 2)
    values = next_action_values(["e1", "e2"], ["c1", "c2"], np.array([1_650_000_000, 1_650_000_100]), proba, risk,
                                runner.spec.vocabulary, runner.version, 3, steps, np.array([False, True]), "top-k(k=3)")
    messages = [NextActionMessage.model_validate_json(v) for v in values]
    assert [m.event_id for m in messages] == ["e1", "e2"] and messages[1].late
    assert len(messages[0].actions) == 3 and messages[0].steps is not None and len(messages[0].steps) == 2
    probabilities = [a.probability for a in messages[0].actions]
    assert probabilities == sorted(probabilities, reverse=True)
    again = next_action_values(["e1"], ["c1"], np.array([1_650_000_000]), proba[:1], risk[:1],
                               runner.spec.vocabulary, runner.version, 3, None, np.array([False]), "top-k(k=3)")
    assert json.loads(again[0])["prediction_id"] == messages[0].prediction_id, "deterministic"

    alert = ChurnAlertMessage.model_validate_json(
        churn_alert_value("alert", "event", "e1", "c1", runner.version, 0.7, 0.5, 1_650_000_000, "p")
    )
    assert alert.kind == "alert" and alert.prediction_id != messages[0].prediction_id


def random_windows(spec: FeatureSpec, n: int, seed: int) -> dict[str, np.ndarray]:
    """Pre-padded windows of every length from 1 to the window, random tokens and features."""
    rng = np.random.default_rng(seed)
    window = spec.window
    lengths = rng.integers(1, window + 1, size=n)
    real = np.arange(window)[None, :] >= (window - lengths)[:, None]
    tokens = np.where(real, rng.integers(FIRST_TOKEN, spec.vocab_size, size=(n, window)), 0).astype(np.int32)
    steps = np.where(real[:, :, None], rng.random((n, window, N_STEP_FEATURES)), 0).astype(np.float32)
    return {"tokens": tokens, "steps": steps, "context": rng.random((n, spec.n_context)).astype(np.float32)}


@pytest.mark.parametrize("path", ["ragged", "length groups"])
def test_running_only_the_real_steps_equals_the_full_window(
    runner: ModelRunner, tiny_registry: Path, path: str
) -> None:
    """Both serving paths are exact: the ragged LSTM (each row over its real steps) and the
    length groups (the masked LSTM over the last L steps) give what the saved model gives over
    the whole pre-padded window."""
    from training.registry import load_model

    saved, _ = load_model((tiny_registry / "CURRENT").resolve())
    inputs = random_windows(runner.spec, 300, seed=3)
    assert runner.path == "ragged", "the CPU default"
    if path == "length groups":
        runner = copy.copy(runner)
        runner._ragged = None
    proba, risk = runner.infer(inputs)
    expected = saved(inputs, training=False)
    lengths = np.count_nonzero(inputs["tokens"], axis=1)
    assert len(np.unique(np.searchsorted(runner.lengths, lengths))) == len(runner.lengths), "every length is used"
    assert np.abs(proba - np.asarray(expected["next"])).max() < 1e-5
    assert np.abs(risk - np.asarray(expected["churn"]).reshape(-1)).max() < 1e-5


@pytest.mark.parametrize("path", ["ragged", "length groups"])
def test_a_row_scores_the_same_alone_and_in_any_batch(runner: ModelRunner, path: str) -> None:
    """A replay batches the same events differently: a row's result may move by float rounding
    (the matrix kernels block by batch size) but stays far inside the 1e-5 of docs/design.md."""
    from consumer.bench.harness import PROBABILITY_TOLERANCE

    if path == "length groups":
        runner = copy.copy(runner)
        runner._ragged = None
    inputs = random_windows(runner.spec, 400, seed=11)
    proba_all, risk_all = runner.infer(inputs)
    rng = np.random.default_rng(12)
    gap = 0.0
    for size in (1, 2, 7, 33, 129, 257):
        rows = rng.choice(400, size=size, replace=False)
        proba, risk = runner.infer({k: v[rows] for k, v in inputs.items()})
        gap = max(gap, float(np.abs(proba - proba_all[rows]).max()), float(np.abs(risk - risk_all[rows]).max()))
    assert gap < PROBABILITY_TOLERANCE / 10


def test_the_ragged_lstm_equals_keras_for_stacked_layers_and_profiles() -> None:
    """Two LSTM layers, profile context, rows of every length, a window narrower than the
    longest trace, and an empty batch row: the ragged path against the Keras graph."""
    from training import ngram
    from training.layers import NgramPrior
    from training.model import ModelConfig, build_models

    spec = FeatureSpec(window=12, level="coarse", vocabulary=("a", "b", "c", "d"), gap_scale=3.0,
                       tenure_scale=6.0, count_scale=4.0, use_profile=True)
    rng = np.random.default_rng(4)
    history_tokens = rng.integers(1, spec.vocab_size, 3000)
    starts = rng.random(3000) < 0.1
    tables = ngram.fit(ngram.context_tokens(history_tokens, starts), rng.integers(0, 5, 3000),
                       rng.integers(0, spec.n_classes, 3000), spec.vocab_size, spec.n_classes)
    config = ModelConfig(units=16, layers=2, embedding_dim=8, dense_units=8)
    _, model = build_models(spec, config, NgramPrior.sizes_of(tables), window=None)
    model.get_layer("ngram").load(tables)
    logits = model.get_layer("next_logits")  # zero at first: made to matter here
    logits.set_weights([w + rng.normal(scale=0.5, size=w.shape) for w in logits.get_weights()])
    assert unsupported(model) is None
    forward = RaggedForward(model, (4, 8, spec.window))
    inputs = random_windows(spec, 200, seed=5)
    inputs["tokens"][0] = 0  # no event at all: zero state, like the masked LSTM
    inputs["steps"][0] = 0.0
    proba, risk = forward(inputs)
    expected = model(inputs, training=False)
    assert np.abs(proba - np.asarray(expected["next"])).max() < 1e-5
    assert np.abs(risk - np.asarray(expected["churn"]).reshape(-1)).max() < 1e-5
    short = {"tokens": inputs["tokens"][:, -3:], "steps": inputs["steps"][:, -3:], "context": inputs["context"]}
    short["tokens"] = np.maximum(short["tokens"], FIRST_TOKEN)  # 3 real steps each: the 4-step trace, left-padded
    proba_short, _ = forward(short)
    assert np.abs(proba_short - np.asarray(model(short, training=False)["next"])).max() < 1e-5


def test_a_model_the_ragged_path_does_not_describe_is_served_by_keras() -> None:
    import keras

    tokens = keras.Input((None,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(5, 4, name="embedding")(tokens)
    out = keras.layers.LSTM(4, activation="relu", return_sequences=True, name="lstm_0")(x)
    assert unsupported(keras.Model(tokens, out)) == "lstm_0: activations other than tanh/sigmoid"


@pytest.mark.parametrize(
    ("value", "layer"),
    [(float("nan"), None), (float("inf"), "next")],
    ids=["nan-everywhere", "inf-in-the-next-action-head"],
)
def test_a_version_that_loads_but_answers_non_finite_is_refused(
    tiny_registry: Path, tmp_path: Path, value: float, layer: str | None
) -> None:
    from tests.registry_copies import poisoned_version
    from training.registry import load_model

    poisoned = poisoned_version(tiny_registry / "CURRENT", tmp_path / "v", value, layer)
    model, _ = load_model(poisoned)  # a valid Keras file: loading alone would not refuse it
    assert model.get_layer("next").get_weights()
    with pytest.raises(ModelRefused, match=r"non-finite output \(NaN or infinity\)"):
        ModelRunner(poisoned)


def test_settling_the_heap_freezes_what_is_alive_and_frees_cycles_left_from_before() -> None:
    import gc
    import weakref

    from consumer.serve.serving_model import settle_heap

    class Node:
        def __init__(self) -> None:
            self.me = self  # a cycle: only the cyclic collector frees it

    old_model, kept = Node(), Node()
    gone = weakref.ref(old_model)
    try:
        settle_heap()  # both alive: frozen
        assert gc.get_freeze_count() > 0
        del old_model  # the swapped-out model, garbage now but frozen
        gc.collect()
        assert gone() is not None, "a frozen cycle is out of the collector's reach"
        settle_heap()  # the next swap
        assert gone() is None and kept.me is kept
    finally:
        gc.unfreeze()


def test_a_runner_uses_the_thread_count_it_is_given(tiny_registry: Path) -> None:
    # TensorFlow fixes its pools at the first op: a fresh process, as a scorer starts
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path; from consumer.serve.scoring import ModelRunner; "
        "import tensorflow as tf; "
        "ModelRunner(Path(sys.argv[1]), threads=1); "
        "print(tf.config.threading.get_intra_op_parallelism_threads(), "
        "tf.config.threading.get_inter_op_parallelism_threads())"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tiny_registry / "CURRENT")], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == ["1", "1"]
