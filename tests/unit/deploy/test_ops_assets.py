from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not found (fix: apt-get install -y prometheus, or run deploy/install-deps)"
    return path


def test_prometheus_config_is_valid() -> None:
    result = subprocess.run(
        [promtool(), "check", "config", str(REPO / "deploy/prometheus/prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_are_valid_and_fire_on_the_series_they_watch() -> None:
    prometheus = REPO / "deploy/prometheus"
    check = subprocess.run([promtool(), "check", "rules", "alerts.yml"], cwd=prometheus,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and "8 rules found" in check.stdout, check.stdout + check.stderr
    test = subprocess.run([promtool(), "test", "rules", "alerts_test.yml"], cwd=prometheus,
                          capture_output=True, text=True, timeout=60)
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout + test.stderr


def test_grafana_dashboard_queries_only_metrics_the_scorer_exports() -> None:
    import json
    import re

    from consumer.serve.metrics import Metrics

    exported = {metric.name for metric in Metrics().registry.collect()}
    dashboard = json.loads((REPO / "deploy/grafana/seqscore.json").read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels) and all("gridPos" in p for p in panels)
    used = set()
    for target in (t for p in panels for t in p["targets"]):
        for name in re.findall(r"seqscore_[a-z_]+", target["expr"]):
            used.add(re.sub(r"_(bucket|sum|count|total)$", "", name))
    assert used, "the dashboard queries something"
    assert used <= exported, f"not exported by the scorer: {sorted(used - exported)}"
    wanted = {"seqscore_events", "seqscore_consumer_lag_seconds", "seqscore_event_to_output_seconds",
              "seqscore_batch_size", "seqscore_stage_seconds", "seqscore_churn_alerts", "seqscore_model_info"}
    assert wanted <= used, f"missing panels for {sorted(wanted - used)}"


def _fields_grafana_drops(dashboard: dict[str, object]) -> list[str]:
    """Loaded into Grafana's own dashboard models (the foundation SDK, generated from Grafana's
    schema) and written back: the paths of the fields the schema does not know."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    back = json.loads(json.dumps(Dashboard.from_json(dashboard), cls=JSONEncoder))
    dropped: list[str] = []

    def walk(original: object, kept: object, path: str) -> None:
        if isinstance(original, dict) and isinstance(kept, dict):
            for key, value in original.items():
                if key not in kept:
                    dropped.append(f"{path}.{key}")
                else:
                    walk(value, kept[key], f"{path}.{key}")
        elif isinstance(original, list) and isinstance(kept, list):
            for i, (value, kept_value) in enumerate(zip(original, kept, strict=True)):
                walk(value, kept_value, f"{path}[{i}]")

    walk(dashboard, back, "")
    return dropped


def test_grafana_s_dashboard_schema_knows_every_field() -> None:
    dashboard = json.loads((REPO / "deploy/grafana/seqscore.json").read_text())
    assert _fields_grafana_drops(dashboard) == []
    misspelled = dashboard | {"panels": [dashboard["panels"][0] | {"gridpos": {}}]}
    assert _fields_grafana_drops(misspelled) == [".panels[0].gridpos"], "the check sees a field Grafana ignores"


K8S_KINDS = {
    "Namespace": "V1Namespace", "ConfigMap": "V1ConfigMap", "Secret": "V1Secret",
    "PersistentVolumeClaim": "V1PersistentVolumeClaim", "Deployment": "V1Deployment",
    "StatefulSet": "V1StatefulSet", "Service": "V1Service",
    "PodDisruptionBudget": "V1PodDisruptionBudget", "CronJob": "V1CronJob", "NetworkPolicy": "V1NetworkPolicy",
}


def k8s_object(type_name: str, value: object, path: str) -> object:
    """Build the Kubernetes client's generated model from a manifest: unknown fields, wrong
    types and missing required fields fail (the models come from the API's OpenAPI spec)."""
    import kubernetes.client as k8s

    if type_name.lower().startswith("list["):
        assert isinstance(value, list), f"{path}: expected a list"
        return [k8s_object(type_name[5:-1], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if type_name.lower().startswith(("dict(", "dict[")):
        assert isinstance(value, dict), f"{path}: expected a mapping"
        inner = type_name[type_name.index(",") + 1 : -1].strip()
        return {k: k8s_object(inner, v, f"{path}.{k}") for k, v in value.items()}
    scalars = {"str": (str,), "int": (int,), "bool": (bool,), "float": (int, float), "datetime": (str,)}
    if type_name in scalars:
        assert isinstance(value, scalars[type_name]) and not (type_name == "int" and isinstance(value, bool)), \
            f"{path}: expected {type_name}, got {value!r}"
        return value
    if type_name == "object":
        return value
    cls = getattr(k8s, type_name)
    assert isinstance(value, dict), f"{path}: expected an object"
    by_json = {json_name: attr for attr, json_name in cls.attribute_map.items()}
    unknown = set(value) - set(by_json)
    assert not unknown, f"{path}: unknown fields {sorted(unknown)} for {type_name}"
    kwargs = {by_json[k]: k8s_object(cls.openapi_types[by_json[k]], v, f"{path}.{k}") for k, v in value.items()}
    return cls(**kwargs)


def test_kubernetes_manifests_match_the_api_and_probe_the_scorer() -> None:
    import yaml

    documents = []
    for path in sorted((REPO / "deploy/k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["kind"] in K8S_KINDS, f"{path.name}: unexpected kind {doc['kind']}"
            k8s_object(K8S_KINDS[doc["kind"]], doc, f"{path.name}:{doc['kind']}")
            documents.append(doc)
    kinds = [d["kind"] for d in documents]
    assert {"StatefulSet", "CronJob", "Secret", "ConfigMap"} <= set(kinds)
    scorer_set = next(d for d in documents if d["kind"] == "StatefulSet")
    scorer = scorer_set["spec"]["template"]["spec"]["containers"][0]
    assert scorer["command"] == ["seqscore", "serve"]
    # a restarted pod keeps its name, its instance id and so its transactional id (audit B1)
    assert {"name": "SEQSCORE_INSTANCE_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in scorer["env"]
    assert any(d["kind"] == "Service" and d["metadata"]["name"] == scorer_set["spec"]["serviceName"] for d in documents)
    assert scorer["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert scorer["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_the_manifest_check_rejects_what_the_api_would() -> None:
    import yaml

    bad = yaml.safe_load("""
apiVersion: apps/v1
kind: Deployment
metadata: {name: x}
spec:
  selector: {matchLabels: {a: b}}
  template:
    spec:
      containers:
        - name: c
          image: i
          readinessProbe: {httpGet: {path: /readyz, port: 9464}, periodSecond: 5}
""")
    with pytest.raises(AssertionError, match="periodSecond"):
        k8s_object("V1Deployment", bad, "bad")
    del bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    del bad["spec"]["selector"]
    with pytest.raises(ValueError, match="selector"):
        k8s_object("V1Deployment", bad, "bad")
