"""deploy/kserve/: the two InferenceServices, offline. Field names against the KServe SDK's
models of the v1beta1 API (generated from its CRDs), the pod part against the Kubernetes
schemas, and the custom predictor's port and probes against the service itself."""

from __future__ import annotations

import socket
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
KSERVE = ROOT / "deploy" / "kserve"
CUSTOM = KSERVE / "inferenceservice.yaml"
TRITON = KSERVE / "inferenceservice-triton.yaml"
GRPC = KSERVE / "inferenceservice-grpc.yaml"
DEPLOYMENT = ROOT / "deploy" / "kubernetes" / "deployment.yaml"
# The PodSpec part of a predictor (the rest are KServe's own fields).
POD_FIELDS = {
    "containers",
    "volumes",
    "securityContext",
    "terminationGracePeriodSeconds",
    "automountServiceAccountToken",
}


def load(path: Path) -> dict:
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return doc


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access during validation")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def check_fields(value: object, model: type, where: str) -> None:
    """Every key of `value` is a field of the KServe SDK model `model` (camelCase), recursively
    through the SDK's nested models; Kubernetes types (V1...) are left to kubernetes-validate."""
    import kserve

    assert isinstance(value, dict), where
    fields = {json_name: attr for attr, json_name in model.attribute_map.items()}
    for key, item in value.items():
        assert key in fields, f"{where}.{key}: not a field of {model.__name__}"
        kind = model.openapi_types[fields[key]]
        nested = getattr(kserve, kind, None) if kind.startswith("V1beta1") else None
        if nested is not None and isinstance(item, dict):
            check_fields(item, nested, f"{where}.{key}")


@pytest.mark.parametrize("path", [CUSTOM, GRPC, TRITON], ids=lambda p: p.name)
def test_fields_are_kserve_v1beta1(path, no_network) -> None:
    kserve = pytest.importorskip("kserve", reason="kserve's SDK: requirements/kserve-client.txt")
    doc = load(path)
    assert doc["apiVersion"] == "serving.kserve.io/v1beta1" and doc["kind"] == "InferenceService"
    check_fields(doc, kserve.V1beta1InferenceService, "")
    annotations = doc["metadata"].get("annotations", {})
    assert all(isinstance(v, str) for v in annotations.values())
    assert annotations["serving.kserve.io/deploymentMode"] == "RawDeployment"


def test_a_typo_is_caught(no_network) -> None:
    kserve = pytest.importorskip("kserve", reason="kserve's SDK: requirements/kserve-client.txt")
    doc = load(TRITON)
    doc["spec"]["predictor"]["model"]["storageUrl"] = doc["spec"]["predictor"]["model"].pop(
        "storageUri"
    )
    with pytest.raises(AssertionError, match="storageUrl"):
        check_fields(doc, kserve.V1beta1InferenceService, "")


@pytest.mark.parametrize("path", [CUSTOM, GRPC, TRITON], ids=lambda p: p.name)
def test_pod_part_is_a_valid_pod(path, no_network) -> None:
    predictor = load(path)["spec"]["predictor"]
    spec = {k: v for k, v in predictor.items() if k in POD_FIELDS}
    if "model" in predictor:  # the model spec is a container (KServe fills name and image)
        container = {"name": "kserve-container", "image": "runtime", **predictor["model"]}
        for key in ("modelFormat", "protocolVersion", "runtime", "storageUri"):
            container.pop(key, None)
        spec["containers"] = [container]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, "spec": spec}
    kubernetes_validate.validate(pod, kubernetes_validate.latest_version() + ".0", strict=True)


def test_custom_predictor_matches_the_image_and_the_service(client) -> None:
    (container,) = load(CUSTOM)["spec"]["predictor"]["containers"]
    (deployed,) = load(DEPLOYMENT)["spec"]["template"]["spec"]["containers"]
    assert container["image"] == deployed["image"]
    assert container["resources"] == deployed["resources"]
    (port,) = container["ports"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert port["containerPort"] == int(env["PORT"]) == 8000
    assert "EXPOSE 8000" in (ROOT / "Dockerfile").read_text()
    workers = next(e for e in container["env"] if e["name"] == "VAE_WORKERS")
    assert workers["valueFrom"]["resourceFieldRef"]["containerName"] == container["name"]
    probes = {
        k: container[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert probes["livenessProbe"]["path"] == "/v2/health/live"
    assert probes["readinessProbe"]["path"] == "/v2/health/ready"
    for probe in probes.values():
        assert probe["port"] == port["containerPort"]
        assert client.get(probe["path"]).status_code == 200  # the service answers them


def test_grpc_predictor_declares_one_h2c_port_and_probes_grpc_health() -> None:
    """KServe routes HTTP/2 to a custom predictor whose one declared port is named h2c."""
    (container,) = load(GRPC)["spec"]["predictor"]["containers"]
    (custom,) = load(CUSTOM)["spec"]["predictor"]["containers"]
    assert container["image"] == custom["image"]
    assert container["resources"] == custom["resources"]
    (port,) = container["ports"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert port["name"] == "h2c" and port["containerPort"] == int(env["VAE_GRPC_PORT"]) == 8001
    assert "EXPOSE 8000 8001" in (ROOT / "Dockerfile").read_text()
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["grpc"] == {"port": 8001}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8000}


def test_triton_predictor_serves_the_vae_triton_repository() -> None:
    model = load(TRITON)["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "triton" and model["protocolVersion"] == "v2"
    assert model["runtime"] == "kserve-tritonserver" and model["storageUri"]
    text = TRITON.read_text()
    assert "vae-triton models --out" in text


def test_readme_says_how_to_validate_against_the_cluster() -> None:
    text = (KSERVE / "README.md").read_text()
    assert "kubectl apply --dry-run=server -f deploy/kserve/" in text
    for path in (CUSTOM, TRITON):
        assert path.name in text
