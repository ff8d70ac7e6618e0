"""Training end to end on a tiny simulated history: the CLI contract, the registry, the
report, and the proof that training and serving see identical inputs and outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from state.encoding import encode, gather_windows
from training.history import load_history, profiles_table, write_table
from training.simulate import simulate

pytestmark = pytest.mark.slow
ENV = {k: v for k, v in os.environ.items() if not k.startswith("SEQSCORE_")} | {"TF_CPP_MIN_LOG_LEVEL": "3"}


def seqscore(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "consumer.cli", *args], capture_output=True, text=True, timeout=timeout, env=ENV
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from training.history import history_table

    root = tmp_path_factory.mktemp("train")
    history = simulate(600, seed=21)
    write_table(history_table(history), root / "events.csv")
    write_table(profiles_table(history), root / "profiles.csv")
    return {"root": root, "events": root / "events.csv", "profiles": root / "profiles.csv", "registry": root / "models"}


@pytest.fixture(scope="module")
def trained(data: dict[str, Path]) -> dict[str, object]:
    result = seqscore(
        "train",
        "--events",
        str(data["events"]),
        "--profiles",
        str(data["profiles"]),
        "--registry",
        str(data["registry"]),
        "--window",
        "12",
        "--epochs",
        "2",
        "--units",
        "16",
        "--seed",
        "3",
        "--promote",
        "always",  # a 2-epoch model may lose to a baseline, which auto refuses (tested below)
        "--json",
    )
    assert result.returncode == 0, result.stderr
    assert "epoch 1/2" in result.stderr, "progress per epoch goes to stderr"
    return json.loads(result.stdout)


def test_train_publishes_and_promotes_a_complete_version(trained: dict[str, object], data: dict[str, Path]) -> None:
    version = str(trained["version"])
    directory = data["registry"] / version
    assert os.readlink(data["registry"] / "CURRENT") == version
    for name in ("model.keras", "manifest.json", "report.md", "training.png", "confusion.png", "churn.png"):
        assert (directory / name).is_file(), name
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["features"]["window"] == 12 and manifest["features"]["use_profile"] is True
    assert manifest["features"]["vocabulary"]
    assert {"gap_scale", "tenure_scale", "count_scale"} <= set(manifest["features"])
    assert 0 < manifest["churn"]["recovery_threshold"] <= manifest["churn"]["alert_threshold"] <= 1
    assert manifest["data"]["events"] > 0 and manifest["code_version"]
    report = (directory / "report.md").read_text()
    assert f"{manifest['metrics']['next_action']['accuracy']:.4f}" in report
    assert f"{manifest['metrics']['churn']['roc_auc']:.4f}" in report


def test_metrics_use_the_contract_names(trained: dict[str, object]) -> None:
    metrics = trained["metrics"]
    assert isinstance(metrics, dict)
    na, churn = metrics["next_action"], metrics["churn"]
    for key in ("accuracy", "top3_accuracy", "macro_f1", "per_class"):
        assert key in na
    for key in ("markov", "most_frequent", "ngram"):
        assert 0 <= na["baselines"][key]["accuracy"] <= 1
    for key in ("roc_auc", "pr_auc", "brier", "threshold"):
        assert key in churn
    assert 0 <= churn["baselines"]["recency"]["roc_auc"] <= 1
    assert 0 <= churn["baselines"]["bgnbd"]["roc_auc"] <= 1
    assert metrics["n_examples"] > 0


def test_evaluate_json_is_one_object_on_stdout(trained: dict[str, object], data: dict[str, Path]) -> None:
    result = seqscore(
        "evaluate",
        "--model",
        str(data["registry"]),
        "--events",
        str(data["events"]),
        "--profiles",
        str(data["profiles"]),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["model_version"] == trained["version"]
    assert metrics["next_action"]["n_examples"] > 0 and "roc_auc" in metrics["churn"]
    as_of = seqscore(
        "evaluate",
        "--model",
        str(data["registry"] / str(trained["version"])),
        "--events",
        str(data["events"]),
        "--as-of",
        "2021-09-01",
        "--json",
    )
    assert as_of.returncode == 0, as_of.stderr
    scored = json.loads(as_of.stdout)
    assert scored["as_of"] == "2021-09-01T00:00:00Z" and scored["churn"]["n_examples"] > 0


def test_promote_auto_keeps_current_when_not_better(trained: dict[str, object], data: dict[str, Path]) -> None:
    again = seqscore(
        "train",
        "--events",
        str(data["events"]),
        "--profiles",
        str(data["profiles"]),
        "--registry",
        str(data["registry"]),
        "--window",
        "12",
        "--epochs",
        "1",
        "--units",
        "4",
        "--seed",
        "4",
        "--json",
    )
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout)
    promotion = second["promotion"]
    assert "current" in promotion["reason"] and "same test data" in promotion["reason"]
    current = os.readlink(data["registry"] / "CURRENT")
    assert current == (second["version"] if promotion["promoted"] else trained["version"])
    listing = seqscore("models", "list", "--registry", str(data["registry"]))
    assert listing.returncode == 0 and str(trained["version"]) in listing.stdout


def test_serving_inputs_equal_training_inputs_and_outputs(data: dict[str, Path]) -> None:
    """The same history through the training arrays and through the serving path
    (windows gathered per scoring point, encoded, serving graph) gives identical inputs,
    and the training graph's per-step outputs equal the serving graph's."""
    from training import ngram
    from training.arrays import build_spec, training_arrays
    from training.labels import training_chunks
    from training.layers import NgramPrior
    from training.model import ModelConfig, build_models
    from training.prior import contexts_and_targets
    from training.split import Period

    history = load_history(str(data["events"]), str(data["profiles"]))
    spec = build_spec(history, "coarse", 12, use_profile=True)
    end = int(history.ts.max()) + 1
    rng = np.random.default_rng(0)
    contexts, buckets, target = contexts_and_targets(history, spec)
    tables = ngram.fit(contexts, buckets, target, spec.vocab_size, spec.n_classes)
    # the training graph reads the served table's rows: both graphs then see the same n-gram
    rows = tables.rows(contexts, buckets)
    inputs, _, _ = training_arrays(history, spec, Period(end), Period(end), 120.0, rng, rows)
    chunks = training_chunks(history.customer_start, 12)
    config = ModelConfig(units=8, dense_units=8)
    train_model, serve_model = build_models(spec, config, NgramPrior.sizes_of(tables), prior_rows=len(tables.log_proba))
    train_model.get_layer("prior_table").set_weights([tables.log_proba])
    serve_model.get_layer("ngram").load(tables)
    logits = serve_model.get_layer("next_logits")
    logits.set_weights([w + rng.normal(scale=0.3, size=w.shape) for w in logits.get_weights()])
    rows = np.arange(0, len(chunks.ends), max(1, len(chunks.ends) // 40))
    train_out = train_model.predict_on_batch({k: v[rows] for k, v in inputs.items()})
    for r, row in enumerate(rows):
        for pos in range(12):
            if inputs["tokens"][row, pos] == 0:
                continue
            event = chunks.ends[row] - (11 - pos)
            elapsed = inputs["context"][row, pos, 0]
            score_ts = history.ts[event] + round(float(np.expm1(elapsed * spec.gap_scale)) * 86_400)
            raw = gather_windows(
                history.ts,
                history.codes("coarse"),
                history.customer_start,
                np.array([event]),
                np.array([score_ts]),
                12,
                history.gender,
                history.age_group,
            )
            served = encode(raw, spec)
            shift = 11 - pos
            assert np.array_equal(served["tokens"][0, shift:], inputs["tokens"][row, : pos + 1])
            # the gap features (0 and 3) of a window's first event differ: its predecessor is outside
            same = [k for k in range(served["steps"].shape[-1]) if k not in (0, 3)]
            assert np.allclose(served["steps"][0, shift:, same], inputs["steps"][row, : pos + 1, same], atol=1e-6)
            assert np.allclose(served["context"][0], inputs["context"][row, pos], atol=1e-4)
            if chunks.first_loss[row] == 0:  # the window starts at the customer's first event
                assert np.allclose(served["steps"][0, shift:], inputs["steps"][row, : pos + 1], atol=1e-6)
                out = serve_model.predict_on_batch(served)
                assert np.allclose(out["next"][0], train_out["next"][r, pos], atol=1e-5)
                assert np.allclose(out["churn"][0], train_out["churn"][r, pos], atol=1e-5)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("customer_id,activity\nc1,A\n", "missing column 'ts'"),
        ("customer_id,ts,activity\nc1,2021-01-01,A\nc2,not-a-time,B\n", "row 2: unparsable timestamp"),
        ("customer_id,ts,activity\n", "no events"),
        ("", "empty file"),
    ],
)
def test_bad_history_is_one_line_and_writes_nothing(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "events.csv"
    path.write_text(content)
    result = seqscore("train", "--events", str(path), "--registry", str(tmp_path / "models"))
    assert result.returncode == 2
    assert message in result.stderr and result.stderr.strip().count("\n") == 0, result.stderr
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_bad_flag_value_is_one_line() -> None:
    result = seqscore("train", "--events", "x.csv", "--level", "medium")
    assert result.returncode == 2 and "--level" in result.stderr and result.stderr.strip().count("\n") == 0


def _default_train(events: Path, registry: Path) -> dict[str, object]:
    result = seqscore("train", "--events", str(events), "--registry", str(registry))
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((registry / "CURRENT" / "manifest.json").read_text())
    assert manifest["training"]["epochs_run"] >= 1
    assert manifest["choice"]["next_action"]["served"] in ("network", "ngram")
    assert manifest["choice"]["churn"]["served"] in ("network", "recency")
    return manifest


def test_train_with_only_the_required_flags(tmp_path: Path) -> None:
    """`seqscore train --events F --registry R`: the first command a new user runs."""
    from training.history import history_table

    write_table(history_table(simulate(200, seed=8)), tmp_path / "events.csv")
    manifest = _default_train(tmp_path / "events.csv", tmp_path / "models")
    assert manifest["metrics"]["next_action"]["accuracy"] >= 0


def test_train_defaults_on_a_short_history_of_many_activities(tmp_path: Path) -> None:
    """Three weeks of a process with 40 activities: shorter than the churn horizon, so churn
    cannot be learned; training still publishes a model that never raises a churn alert."""
    rng = np.random.default_rng(9)
    rows = ["customer_id,ts,activity"]
    for case in range(120):
        start = 1_700_000_000 + int(rng.integers(0, 14 * 86_400))
        step = int(rng.integers(0, 5))
        for k in range(int(rng.integers(2, 15))):
            stamp = datetime.fromtimestamp(start + k * 3_600 * int(rng.integers(1, 30)), tz=UTC)
            rows.append(f"case{case},{stamp:%Y-%m-%dT%H:%M:%SZ},a{(step + 3 * k) % 40}")
    (tmp_path / "short.csv").write_text("\n".join(rows) + "\n")
    manifest = _default_train(tmp_path / "short.csv", tmp_path / "models")
    churn = manifest["churn"]
    assert isinstance(churn, dict) and churn["alert_threshold"] > 1


def test_a_trained_model_risk_never_falls_with_the_silence(trained: dict[str, object], data: dict[str, Path]) -> None:
    """Churn at any silence: the same histories scored after longer and longer silences, far past
    any silence in the training data, never get a lower risk."""
    from training.registry import load_model, smoke_inputs

    model, manifest = load_model(data["registry"] / str(trained["version"]))
    inputs = smoke_inputs(manifest)
    risks = []
    for elapsed in np.linspace(0.0, 2.0, 21):  # the encoding clips the scaled silence at 2
        context = inputs["context"].copy()
        context[:, 0] = elapsed
        risks.append(np.asarray(model.predict_on_batch(inputs | {"context": context})["churn"]).reshape(-1))
    assert (np.diff(np.stack(risks, axis=1), axis=1) >= -1e-6).all()
