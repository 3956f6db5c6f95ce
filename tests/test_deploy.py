"""Deployment artefacts: Kubernetes manifests against the Kubernetes schemas (offline), their
consistency with each other and with the image, the Dockerfile's promises, and the container
entrypoint, which only execs the server (run with a stand-in `python`, no container)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import textwrap
import time
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
ENTRYPOINT = ROOT / "deploy" / "container" / "entrypoint.sh"
DOCKERFILE = ROOT / "Dockerfile"
# The oldest Kubernetes the manifests promise to work on, and the newest schema bundled.
K8S_VERSIONS = ["1.27.0", kubernetes_validate.latest_version() + ".0"]
APP_UID = 10001


def manifests() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def by_kind() -> dict[str, dict]:
    found = {doc["kind"]: doc for doc in manifests()}
    assert len(found) == len(manifests()), "one object of each kind expected"
    return found


@pytest.fixture
def no_network(monkeypatch):
    """Fail any attempt to open a socket: the validation must be offline."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access during schema validation")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_validate_against_kubernetes_schemas(version, no_network):
    docs = manifests()
    assert {d["kind"] for d in docs} == {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Secret",
    }
    for doc in docs:
        # strict: unknown fields (typos) are errors too.
        kubernetes_validate.validate(doc, version, strict=True)


def test_validator_rejects_a_broken_manifest(no_network):
    deployment = by_kind()["Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["livenessProbe"]["httpGet"]["pathh"] = "/healthz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def _container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container["env"]}


def test_objects_select_the_deployments_pods():
    kinds = by_kind()
    deployment = kinds["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selectors = [
        deployment["spec"]["selector"]["matchLabels"],
        kinds["Service"]["spec"]["selector"],
        kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
    ]
    for selector in selectors:
        assert selector.items() <= pod_labels.items()
    target = kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


def test_probes_ports_and_service():
    kinds = by_kind()
    container = _container(kinds["Deployment"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000, "grpc": 8001}
    assert _env(container)["PORT"]["value"] == "8000"
    assert _env(container)["VAE_GRPC_PORT"]["value"] == "8001"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ports
    # readiness: gRPC's health service (grpc.health.v1), driven by the models' readiness
    assert container["readinessProbe"]["grpc"] == {"port": ports["grpc"]}
    service_ports = {p["name"]: p for p in kinds["Service"]["spec"]["ports"]}
    assert set(service_ports) == {"http", "grpc"}
    for name, port in service_ports.items():
        assert port["targetPort"] == name
    assert service_ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"


def test_resources_match_the_thread_settings():
    deployment = by_kind()["Deployment"]
    container = _container(deployment)
    resources = container["resources"]
    env = _env(container)
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"]
    cpus = int(resources["limits"]["cpu"])
    assert env["VAE_INTRA_OP_THREADS"]["value"] == "1"
    # One worker per CPU, read from this container's own CPU limit, so they always match.
    field = env["VAE_WORKERS"]["valueFrom"]["resourceFieldRef"]
    assert field == {"containerName": container["name"], "resource": "limits.cpu", "divisor": "1"}
    assert cpus >= 1
    for key in ("requests", "limits"):
        assert re.fullmatch(r"\d+Mi", resources[key]["memory"])
    assert int(resources["requests"]["memory"][:-2]) <= int(resources["limits"]["memory"][:-2])


def test_scaling_and_disruption_budget_agree():
    kinds = by_kind()
    hpa, pdb = kinds["HorizontalPodAutoscaler"]["spec"], kinds["PodDisruptionBudget"]["spec"]
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert 0 < metric["resource"]["target"]["averageUtilization"] <= 100
    assert 2 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    # A drain must leave at least one replica serving.
    assert pdb["maxUnavailable"] < hpa["minReplicas"]
    assert kinds["Deployment"]["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_pod_runs_as_the_images_non_root_user():
    spec = by_kind()["Deployment"]["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == APP_UID
    container = _container(by_kind()["Deployment"])
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # A grace period longer than the preStop pause leaves time for the drain.
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert spec["terminationGracePeriodSeconds"] > pause + 10


def test_api_keys_come_from_the_secret_mounted_as_a_file():
    """Auth on (service/api/auth.py): VAE_API_KEYS_FILE names the file that the Secret's
    `keys` item is mounted as, read-only, readable by the pod's group; the placeholder holds
    no key, so the manifests as shipped refuse to start rather than serve with a known key."""
    from service.process.api_keys import read_key_file

    kinds = by_kind()
    secret, deployment = kinds["Secret"], kinds["Deployment"]
    spec = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    path = Path(_env(container)["VAE_API_KEYS_FILE"]["value"])
    assert "VAE_API_KEYS" not in _env(container), "keys never in the manifest's environment"
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(path.parent)]
    assert mount["readOnly"] is True
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    source = volume["secret"]
    assert source["secretName"] == secret["metadata"]["name"]
    assert source["items"] == [{"key": "keys", "path": path.name}]
    assert source["defaultMode"] == 0o440
    assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsGroup"]
    assert secret["type"] == "Opaque" and set(secret["stringData"]) == {"keys"}
    assert read_key_file(secret["stringData"]["keys"]) == []  # a placeholder, not a key
    # Probes stay open: the kubelet sends no key.
    env = _env(container)
    assert "VAE_AUTH_PROBES" not in env or env["VAE_AUTH_PROBES"]["value"] == "false"


# --- Dockerfile and .dockerignore ------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile_is_multi_stage_slim_and_non_root():
    instructions = dockerfile_instructions()
    froms = [arg for op, arg in instructions if op == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]
    args = dict(a.split("=", 1) for op, a in instructions if op == "ARG" and "=" in a)
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    runtime = instructions[last_from:]
    copies = [arg for op, arg in runtime if op == "COPY"]
    assert any(c.startswith("--from=build /opt/venv") for c in copies)
    assert {c.split()[-1] for c in copies if not c.startswith("--from")} == {
        "/usr/local/bin/vae-entrypoint",
        "/app/service/",
        "/app/models/",
    }
    # No package installs in the runtime stage: everything comes from the build stage.
    assert not any(op == "RUN" and "pip" in arg for op, arg in runtime)
    for op, arg in instructions:
        assert not re.search(r"\btorch\b|apt-get install|curl", arg), (op, arg)
    (user,) = [arg for op, arg in runtime if op == "USER"]
    assert user == "${APP_UID}:${APP_UID}" and args["APP_UID"] == str(APP_UID)
    (stop,) = [arg for op, arg in runtime if op == "STOPSIGNAL"]
    assert stop == "SIGTERM"
    assert ("EXPOSE", "8000 8001") in runtime  # HTTP, and gRPC (VAE_GRPC_PORT)
    env = " ".join(arg for op, arg in runtime if op == "ENV")
    assert "VAE_GRPC_PORT=8001" in env
    (health,) = [arg for op, arg in runtime if op == "HEALTHCHECK"]
    assert "/healthz" in health and "urllib" in health and "curl" not in health


def test_dockerignore_keeps_the_context_small():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "allow-list: everything out unless named"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert allowed == {
        "requirements/serve.lock",
        "service",
        "models",
        "deploy/container/entrypoint.sh",
    }
    for name in (".venv", "runs", "tests", ".git", "**/__pycache__"):
        assert name in patterns


# --- the entrypoint, with a stand-in `python` ----------------------------------------------

FAKE_PYTHON = """\
#!/bin/sh
# Stand-in for `python -m service`: report what it was given, then serve until SIGTERM.
echo "pid=$$ args=$*" >"$FAKE_OUT"
echo "env=${VAE_WORKERS-unset},${VAE_INTRA_OP_THREADS-unset},${WEB_CONCURRENCY-unset}" >>"$FAKE_OUT"
trap 'echo drained >>"$FAKE_OUT"; exit 0' TERM
while :; do sleep 0.05; done
"""


@pytest.fixture
def fake_python(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python = bin_dir / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    return tmp_path


def start_entrypoint(fake: Path, *args: str, **env: str) -> tuple[subprocess.Popen, list[str]]:
    out = fake / "out.txt"
    environ = {
        "PATH": f"{fake / 'bin'}:{os.environ['PATH']}",
        "FAKE_OUT": str(out),
        **env,
    }
    proc = subprocess.Popen(
        ["sh", str(ENTRYPOINT), *args], env=environ, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 10
    while not out.exists() or len(out.read_text().splitlines()) < 2:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "entrypoint did not start python"
        time.sleep(0.02)
    return proc, out.read_text().splitlines()


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=10)
    finally:
        proc.stderr.close()


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX sh")
@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ((), {}, "-m service --host 0.0.0.0 --port 8000"),
        ((), {"PORT": "8123"}, "-m service --host 0.0.0.0 --port 8123"),
        ((), {"HOST": "::", "PORT": "9000"}, "-m service --host :: --port 9000"),
        (("--port", "7000"), {}, "-m service --host 0.0.0.0 --port 8000 --port 7000"),
    ],
)
def test_entrypoint_execs_the_server(fake_python, args, env, expected):
    proc, lines = start_entrypoint(fake_python, *args, **env)
    # exec: the server is the entrypoint's own process (the container's first), not a child.
    assert lines[0] == f"pid={proc.pid} args={expected}"
    assert stop(proc) == 0  # SIGTERM reached the server itself, which exited 0
    assert (fake_python / "out.txt").read_text().splitlines()[-1] == "drained"


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX sh")
@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "env=unset,unset,unset"),
        ({"VAE_WORKERS": "3", "VAE_INTRA_OP_THREADS": "2"}, "env=3,2,unset"),
        ({"VAE_CPUS": "4", "WEB_CONCURRENCY": "5"}, "env=unset,unset,5"),
    ],
)
def test_entrypoint_leaves_sizing_to_the_service(fake_python, env, expected):
    # The service sizes itself (service/process/cpus.py): the entrypoint sets nothing.
    proc, lines = start_entrypoint(fake_python, **env)
    assert lines[1] == expected
    assert stop(proc) == 0
    text = ENTRYPOINT.read_text()
    assert not re.search(r"cgroup|nproc|cpu\.max|cfs_quota", text.split("set -eu", 1)[1])


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX sh")
def test_entrypoint_passes_on_a_crash(fake_python):
    crash = fake_python / "bin" / "python"
    crash.write_text('#!/bin/sh\necho started >"$FAKE_OUT"\nexit 3\n')
    environ = {"PATH": f"{fake_python / 'bin'}:{os.environ['PATH']}"}
    environ["FAKE_OUT"] = str(fake_python / "out.txt")
    result = subprocess.run(
        ["sh", str(ENTRYPOINT)], env=environ, capture_output=True, text=True, timeout=10
    )
    assert result.returncode == 3


def test_container_test_script_is_wired_into_make_and_ci():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^container-test:", makefile, re.M)
    assert "container-test" in re.search(r"^\.PHONY:.*$", makefile, re.M).group(0)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ci.index("make container-test") > ci.index("make test")
    script = textwrap.dedent((ROOT / "scripts" / "container_test.sh").read_text())
    assert "--pull=never" in script and "python:3.11-slim" in script
