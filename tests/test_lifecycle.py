"""Models that change while the service runs (issue #25): version folders, load, unload and
rollback through the model repository extension with tritonclient, in every worker at once; a
bad version refused with the old one serving on; admin keys; nothing lost under load.

One real server, two workers, on loopback; tiny models (harness/models.py). Version 1 of `vae`
has z_dim 2 and version 2 has z_dim 3, so an answer shows which version made it, whatever its
X-Model-Version says.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from conftest import make_client, stop, wait_ready
from test_service_server import free_port, start
from test_workers import serving_pids
from tritonclient.utils import InferenceServerException

from harness.models import export_tiny_model

ADMIN = "adm1n-k3y-5c0ffee"
MODEL_KEY = "m0del-k3y-1234abcd"
WORKERS = 2
Z_DIM = {"1": 2, "2": 3}  # vae's versions


def publish(model_dir: Path, name: str, version: int, kind: str = "vae", z_dim: int = 2) -> Path:
    """The safe way to publish a version: export it elsewhere on the same filesystem, then
    rename it into place (one atomic step: a load never sees half of it)."""
    staging = model_dir / ".staging" / name
    shutil.rmtree(staging, ignore_errors=True)
    export_tiny_model(staging, kind, z_dim=z_dim)
    target = model_dir / name / str(version)
    os.rename(staging, target)
    return target


def ensure_version_2(model_dir: Path) -> None:
    """vae/2 (z_dim 3), unless an earlier test of the module published it."""
    if not (model_dir / "vae" / "2").is_dir():
        publish(model_dir, "vae", 2, z_dim=Z_DIM["2"])


def publish_broken(model_dir: Path, version: int) -> Path:
    """A version whose decoder.onnx is cut short (its sha256 no longer matches)."""
    target = publish(model_dir, "vae", version)
    onnx = target / "decoder.onnx"
    onnx.write_bytes(onnx.read_bytes()[:100])
    return target


@pytest.fixture(scope="module")
def versioned_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """vae with a version folder 1/ (z_dim 2), ae as a flat folder (one version)."""
    root = tmp_path_factory.mktemp("versioned")
    (root / "vae").mkdir()
    publish(root, "vae", 1, z_dim=Z_DIM["1"])
    export_tiny_model(root / "ae", "ae")
    return root


class Server:
    def __init__(self, process, base: str, log: Path) -> None:
        self.process, self.base, self.log = process, base, log
        self.url = base.removeprefix("http://")

    def admin(self) -> triton.InferenceServerClient:
        return triton.InferenceServerClient(self.url, network_timeout=120.0)

    def versions_seen(self, n: int = 16) -> Counter[str]:
        """X-Model-Version of `n` /sample answers, each on a new connection (so both workers
        answer some)."""
        seen: Counter[str] = Counter()
        for _ in range(n):
            r = httpx.get(f"{self.base}/sample?n=1&seed=1", headers=MODEL_HEADERS, timeout=30)
            assert r.status_code == 200, r.text
            seen[r.headers["x-model-version"]] += 1
        return seen

    def worker_pids(self) -> list[int]:
        """The workers serving now (multiprocessing's resource tracker is a child too)."""
        return sorted(serving_pids(self.process.pid))


MODEL_HEADERS = {"Authorization": f"Bearer {MODEL_KEY}"}
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def server(versioned_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    port = free_port()
    log = tmp_path_factory.mktemp("lifecycle") / "server.log"
    with open(log, "wb") as out:
        process = start(
            versioned_dir,
            port,
            out,
            VAE_WORKERS=str(WORKERS),
            VAE_ADMIN_KEYS=ADMIN,
            VAE_API_KEYS=MODEL_KEY,
            VAE_ACCESS_LOG="false",
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(process, base, log, 90)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and "serving" not in _workers_line(log):
                time.sleep(0.2)
            yield Server(process, base, log)
        finally:
            stop(process)


def _workers_line(log: Path) -> str:
    return log.read_text(errors="replace")


def load(server: Server, name: str, version: str | None = None) -> httpx.Response:
    body = {"parameters": {"version": version}} if version else {}
    return httpx.post(
        f"{server.base}/v2/repository/models/{name}/load",
        json=body,
        headers=ADMIN_HEADERS,
        timeout=120,
    )


def test_management_needs_an_admin_key(server: Server) -> None:
    url = f"{server.base}/v2/repository/index"
    no_key = httpx.post(url)
    assert no_key.status_code == 401 and no_key.headers["www-authenticate"] == "Bearer"
    assert httpx.post(url, headers=MODEL_HEADERS).status_code == 403
    # The admin key is not a model key: model routes still want an API key.
    assert httpx.get(f"{server.base}/models", headers=ADMIN_HEADERS).status_code == 401
    index = httpx.post(url, headers=ADMIN_HEADERS)
    assert index.status_code == 200
    states = {row["name"]: row["state"] for row in index.json()}  # one version each
    assert states == {"vae": "READY", "ae": "READY"}
    assert ADMIN not in server.log.read_text(errors="replace")


def test_publish_version_2_and_load_it_with_one_call(server: Server, versioned_dir: Path) -> None:
    assert server.versions_seen(4) == Counter({"1": 4})
    publish(versioned_dir, "vae", 2, z_dim=Z_DIM["2"])
    assert server.versions_seen(4) == Counter({"1": 4})  # published is not loaded
    client = server.admin()
    client.load_model("vae", headers=ADMIN_HEADERS)  # the version policy: the latest, 2
    assert server.versions_seen() == Counter({"2": 16})  # every worker, at once
    index = client.get_model_repository_index(headers=ADMIN_HEADERS)
    states = {row["version"]: row["state"] for row in index if row["name"] == "vae"}
    assert states == {"1": "UNAVAILABLE", "2": "READY"}
    # OIP: the answer names the version; per-version readiness.
    body = {"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, 3], "data": [0, 0, 0]}]}
    r = httpx.post(f"{server.base}/v2/models/vae-decoder/infer", json=body, headers=MODEL_HEADERS)
    assert r.status_code == 200 and r.json()["model_version"] == "2", r.text
    assert r.headers["x-model-version"] == "2"
    meta = httpx.get(f"{server.base}/v2/models/vae-decoder", headers=MODEL_HEADERS).json()
    assert meta["versions"] == ["2"]  # the loaded versions
    ready = f"{server.base}/v2/models/vae/versions/%s/ready"
    assert httpx.get(ready % "2", headers=MODEL_HEADERS).status_code == 200
    assert httpx.get(ready % "1", headers=MODEL_HEADERS).status_code == 404
    # REST: ?version= reaches a loaded version only.
    r = httpx.get(f"{server.base}/sample?n=1&version=2", headers=MODEL_HEADERS)
    assert r.status_code == 200 and r.headers["x-model-version"] == "2"
    r = httpx.get(f"{server.base}/sample?n=1&version=1", headers=MODEL_HEADERS)
    assert r.status_code == 404 and "not loaded" in r.json()["detail"]
    metrics = httpx.get(f"{server.base}/metrics").text
    assert 'vae_model_served_version{model="vae",version="2"} 1.0' in metrics
    assert 'vae_model_lifecycle_total{model="vae",operation="load",outcome="done"}' in metrics


def test_a_bad_version_is_refused_and_the_old_one_serves_on(
    server: Server, versioned_dir: Path
) -> None:
    ensure_version_2(versioned_dir)
    assert load(server, "vae", "2").status_code == 200
    publish_broken(versioned_dir, 3)
    client = server.admin()
    config = json.dumps({"version_policy": {"specific": {"versions": [3]}}})
    with pytest.raises(InferenceServerException) as refused:
        client.load_model("vae", headers=ADMIN_HEADERS, config=config)
    assert refused.value.status() == "400"
    assert "decoder.onnx" in refused.value.message() and "sha256" in refused.value.message()
    assert server.versions_seen() == Counter({"2": 16})
    assert httpx.get(f"{server.base}/readyz").status_code == 200
    # Rolling back is loading the previous version.
    r = load(server, "vae", "1")
    assert r.status_code == 200 and r.json()["served"] == "1", r.text
    assert server.versions_seen() == Counter({"1": 16})
    shutil.rmtree(versioned_dir / "vae" / "3")


def test_unload_and_load_a_model(server: Server) -> None:
    client = server.admin()
    client.unload_model("ae", headers=ADMIN_HEADERS)
    r = httpx.get(f"{server.base}/sample?model=ae&n=1", headers=MODEL_HEADERS)
    assert r.status_code == 404
    assert httpx.get(f"{server.base}/readyz").status_code == 200  # what is served is ready
    assert not client.is_model_ready("ae", headers=MODEL_HEADERS)
    client.load_model("ae", headers=ADMIN_HEADERS)
    assert client.is_model_ready("ae", headers=MODEL_HEADERS)
    r = httpx.get(f"{server.base}/sample?model=ae&n=1", headers=MODEL_HEADERS)
    assert r.status_code == 200


def test_a_replacement_worker_serves_the_versions_served_now(
    server: Server, versioned_dir: Path
) -> None:
    ensure_version_2(versioned_dir)
    assert load(server, "vae", "2").status_code == 200
    victim = server.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "(replacing" not in server.log.read_text():
        time.sleep(0.2)
    assert "(replacing" in server.log.read_text(), server.log.read_text()[-2000:]
    assert server.versions_seen() == Counter({"2": 16})


def _traffic(server: Server, stop_at: threading.Event, answers: list, digit_png: bytes) -> None:
    """One client's loop until told to stop: /sample, /encode, OIP infer on vae-encoder; (status,
    version, z length) of each answer."""
    pixels = np.zeros(28 * 28).tolist()
    tensor = {"name": "image", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": pixels}
    image = {"inputs": [tensor]}
    with httpx.Client(base_url=server.base, headers=MODEL_HEADERS, timeout=60) as client:
        while not stop_at.is_set():
            r = client.get("/sample", params={"n": 1, "seed": 1})
            answers.append((r.status_code, r.headers.get("x-model-version"), None))
            r = client.post("/encode", files={"file": ("d.png", digit_png, "image/png")})
            z = len(r.json()["mu"]) if r.status_code == 200 else None
            answers.append((r.status_code, r.headers.get("x-model-version"), z))
            r = client.post("/v2/models/vae-encoder/infer", json=image)
            ok = r.status_code == 200
            z = r.json()["outputs"][0]["shape"][1] if ok else None
            answers.append((r.status_code, r.json().get("model_version") if ok else None, z))


def test_nothing_is_lost_while_versions_change_under_load(
    server: Server, versioned_dir: Path, digit_png: bytes
) -> None:
    """Bounded: a few changes under four clients' traffic. `make chaos` runs the long one."""
    ensure_version_2(versioned_dir)
    assert load(server, "vae", "1").status_code == 200
    stop_at = threading.Event()
    answers: list[tuple[int, str | None, int | None]] = []
    clients = [
        threading.Thread(target=_traffic, args=(server, stop_at, answers, digit_png))
        for _ in range(4)
    ]
    for thread in clients:
        thread.start()
    changes = []
    try:
        time.sleep(1)
        for version in ("2", "1", "2"):
            r = load(server, "vae", version)
            changes.append((version, r.status_code, r.json().get("seconds")))
        publish_broken(versioned_dir, 4)
        r = load(server, "vae", "4")
        changes.append(("4", r.status_code, None))
        client = server.admin()
        client.unload_model("ae", headers=ADMIN_HEADERS)
        client.load_model("ae", headers=ADMIN_HEADERS)
        time.sleep(1)
    finally:
        stop_at.set()
        for thread in clients:
            thread.join(timeout=60)
        shutil.rmtree(versioned_dir / "vae" / "4", ignore_errors=True)
    assert [c[:2] for c in changes] == [("2", 200), ("1", 200), ("2", 200), ("4", 400)]
    statuses = Counter(status for status, _, _ in answers)
    assert set(statuses) == {200} and statuses[200] > 30, statuses
    assert {v for _, v, _ in answers if v is not None} <= {"1", "2"}
    for _, version, z in answers:
        if z is not None:
            assert z == Z_DIM[version]  # the version the header names made the answer


def test_wrong_keys_are_locked_out_for_a_while(versioned_dir: Path) -> None:
    with make_client(
        versioned_dir,
        admin_keys=[ADMIN],
        api_keys=[MODEL_KEY],
        auth_max_failures=3,
        auth_lockout=30,
    ) as client:
        wrong = {"Authorization": "Bearer not-the-key"}
        assert [client.get("/models", headers=wrong).status_code for _ in range(3)] == [401] * 3
        locked = client.get("/models", headers=MODEL_HEADERS)
        assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0
        index = client.post("/v2/repository/index", headers=ADMIN_HEADERS)
        assert index.status_code == 429  # the same address, whatever it sends


def test_management_is_off_without_admin_keys(versioned_dir: Path) -> None:
    with make_client(versioned_dir) as client:
        r = client.post("/v2/repository/index")
        assert r.status_code == 403 and "VAE_ADMIN_KEYS" in r.json()["error"]


def test_one_process_loads_and_unloads_too(versioned_dir: Path) -> None:
    with make_client(versioned_dir, admin_keys=[ADMIN]) as client:
        r = client.post("/v2/repository/models/vae/load", json={}, headers=ADMIN_HEADERS)
        assert r.status_code == 200 and r.json()["served"] in {"1", "2"}, r.text
        r = client.post(
            "/v2/repository/models/vae/load",
            json={"parameters": {"version": "7"}},
            headers=ADMIN_HEADERS,
        )
        assert r.status_code == 400 and "no version '7'" in r.json()["error"]
        z = np.zeros((1, Z_DIM["1"])).tolist()
        client.post(
            "/v2/repository/models/vae/load",
            json={"parameters": {"version": "1"}},
            headers=ADMIN_HEADERS,
        )
        assert client.post("/decode", json={"z": z}).headers["x-model-version"] == "1"


def test_version_policy_latest_or_pinned(versioned_dir: Path, tmp_path: Path) -> None:
    from service.inference.registry import ModelRegistry, parse_pins

    root = tmp_path / "models"
    (root / "vae").mkdir(parents=True)
    for version in ("1", "2"):
        shutil.copytree(versioned_dir / "vae" / "1", root / "vae" / version)
    latest = ModelRegistry.load(root, default="vae")
    assert latest.served_version("vae") == "2" and latest.get("vae").version == "2"
    pinned = ModelRegistry.load(root, default="vae", pins=parse_pins("vae=1"))
    assert pinned.served_version("vae") == "1"
    with pytest.raises(KeyError):
        pinned.get("vae", version="2")  # on disk, not loaded


def test_a_folder_with_a_model_and_version_folders_is_refused(tmp_path: Path) -> None:
    from service.inference.format import ModelLoadError
    from service.inference.registry import on_disk

    folder = tmp_path / "vae"
    export_tiny_model(folder, "vae")
    (folder / "2").mkdir()
    with pytest.raises(ModelLoadError, match="both a model"):
        on_disk(folder)


def test_a_version_named_unlike_its_folder_is_refused(tmp_path: Path) -> None:
    from service.inference.format import ModelLoadError
    from service.inference.registry import load_model

    export_tiny_model(tmp_path / "other", "vae")
    (tmp_path / "vae").mkdir()
    os.rename(tmp_path / "other", tmp_path / "vae" / "1")
    with pytest.raises(ModelLoadError, match="names the model 'other'"):
        load_model(tmp_path / "vae" / "1", version="1")
