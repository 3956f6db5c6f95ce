"""The API through FastAPI's TestClient: every endpoint's success path and contract."""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import re

import numpy as np
import pytest
from conftest import digit_array, make_client, png_bytes
from PIL import Image

from service.imaging.prepare import preprocess_bytes

CELL = 28


def decode_png(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.mode == "L"
    return np.asarray(image)


def grid_size(n: int, scale: int = 1) -> tuple[int, int]:
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    cell = CELL * scale
    return cols * cell + 2 * (cols - 1), rows * cell + 2 * (rows - 1)  # (width, height)


def registry(client):
    return client.app.state.registry


def metric(client, name: str, **labels: str) -> float:
    text = client.get("/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{"):
            got = ",".join(sorted(line[line.index("{") + 1 : line.index("}")].split(",")))
            if got == want:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


# --- /encode ---------------------------------------------------------------------------


def test_encode_vae_multipart(client, digit_png) -> None:
    r = client.post("/encode", files={"file": ("digit.png", digit_png, "image/png")})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"model", "mu", "log_var"} and body["model"] == "vae"
    assert len(body["mu"]) == len(body["log_var"]) == 2
    # Exactly what the registry computes on the shared preprocessing.
    model = registry(client).get("vae")
    x = preprocess_bytes(digit_png)[None, None]
    codes = model.encode_batch(x)
    assert np.allclose(body["mu"], codes["mu"][0]) and np.allclose(
        body["log_var"], codes["log_var"][0]
    )


def test_encode_ae(client, digit_png) -> None:
    r = client.post("/encode?model=ae", files={"file": ("d.png", digit_png)})
    assert r.status_code == 200
    assert set(r.json()) == {"model", "z"} and len(r.json()["z"]) == 2


@pytest.mark.parametrize("content_type", ["image/png", "image/jpeg", "application/octet-stream"])
def test_encode_raw_body_any_declared_type(client, digit_png, content_type) -> None:
    """The format comes from the bytes: a PNG declared as JPEG (or nothing) is still a PNG."""
    r = client.post("/encode", content=digit_png, headers={"Content-Type": content_type})
    assert r.status_code == 200
    assert r.json() == client.post("/encode", files={"file": ("x", digit_png)}).json()


def test_encode_multipart_ignores_part_type_and_name(client) -> None:
    jpeg = io.BytesIO()
    Image.fromarray(digit_array(56)).save(jpeg, "JPEG")
    files = {"file": ("digit", jpeg.getvalue(), "application/octet-stream")}
    assert client.post("/encode", files=files).status_code == 200
    files = {"file": ("digit.txt", jpeg.getvalue(), "text/plain")}
    assert client.post("/encode", files=files).status_code == 200


def test_encode_preprocess_none_differs(client) -> None:
    small = png_bytes(np.pad(digit_array(14), 7))  # a digit at half size: auto rescales it
    auto = client.post("/encode", files={"file": ("d.png", small)}).json()
    none = client.post("/encode?preprocess=none", files={"file": ("d.png", small)}).json()
    assert auto["mu"] != none["mu"]


# --- /encode/batch ---------------------------------------------------------------------


def test_encode_batch_in_order_and_one_inference(client) -> None:
    images = [png_bytes(np.rot90(digit_array(), k).copy()) for k in range(3)]
    calls = metric(client, "vae_inference_batch_size_count", model="vae", graph="encoder")
    total = metric(client, "vae_inference_batch_size_sum", model="vae", graph="encoder")
    r = client.post(
        "/encode/batch", files=[("files", (f"{i}.png", b)) for i, b in enumerate(images)]
    )
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "vae" and len(body["items"]) == 3
    # One onnxruntime call for the three images.
    assert (
        metric(client, "vae_inference_batch_size_count", model="vae", graph="encoder") == calls + 1
    )
    assert metric(client, "vae_inference_batch_size_sum", model="vae", graph="encoder") == total + 3
    for item, data in zip(body["items"], images, strict=True):
        single = client.post("/encode", files={"file": ("x.png", data)}).json()
        assert np.allclose(item["mu"], single["mu"], atol=1e-6)


def test_encode_batch_ae(client, digit_png) -> None:
    r = client.post("/encode/batch?model=ae", files=[("files", ("a.png", digit_png))] * 2)
    assert r.status_code == 200
    assert [set(i) for i in r.json()["items"]] == [{"model", "z"}] * 2


# --- /decode ---------------------------------------------------------------------------


def test_decode_png_grid(client) -> None:
    r = client.post("/decode", json={"z": [[0, 0], [1.5, -0.5], [0.1, 0.2]]})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    grid = decode_png(r.content)
    assert grid.shape[::-1] == grid_size(3)  # 2 columns, 2 rows, 2 px gaps


def test_decode_json_is_lossless_8_bit(client) -> None:
    z = [[0.0, 0.0], [2.0, -1.0]]
    r = client.post("/decode?format=json", json={"z": z})
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "vae" and body["z"] == z and len(body["images"]) == 2
    expected = registry(client).get("vae").decode_batch(np.array(z, np.float32))[:, 0]
    for b64, image in zip(body["images"], expected, strict=True):
        pixels = decode_png(base64.b64decode(b64))
        assert pixels.shape == (28, 28)
        assert np.array_equal(pixels, (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8))


def test_decode_scale(client) -> None:
    r = client.post("/decode?scale=3", json={"z": [[0, 0]]})
    assert decode_png(r.content).shape == (84, 84)
    r = client.post("/decode?format=json&scale=2", json={"z": [[0, 0]]})
    assert decode_png(base64.b64decode(r.json()["images"][0])).shape == (56, 56)


def test_decode_ae(client) -> None:
    assert client.post("/decode?model=ae", json={"z": [[0, 0]]}).status_code == 200


# --- /sample ---------------------------------------------------------------------------


def test_sample_default_is_16_in_a_4x4_grid(client) -> None:
    r = client.get("/sample")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert decode_png(r.content).shape[::-1] == grid_size(16)


def test_sample_seed_is_byte_identical(client) -> None:
    a = client.get("/sample?n=5&seed=42")
    b = client.get("/sample?n=5&seed=42")
    c = client.get("/sample?n=5&seed=43")
    assert a.content == b.content and a.content != c.content


def test_sample_without_seed_differs(client) -> None:
    a = client.get("/sample?n=4&format=json").json()
    b = client.get("/sample?n=4&format=json").json()
    assert a["z"] != b["z"]


def test_sample_temperature(client) -> None:
    cold = client.get("/sample?n=64&seed=1&temperature=0&format=json").json()
    assert not np.any(cold["z"])
    warm = np.array(client.get("/sample?n=256&seed=1&temperature=2&format=json").json()["z"])
    assert 1.6 < warm.std() < 2.4


def test_sample_ae_is_allowed_and_says_what_it_is(client) -> None:
    r = client.get("/sample?model=ae&n=4")
    assert r.status_code == 200 and "no prior" in r.headers["x-note"]
    body = client.get("/sample?model=ae&n=4&format=json").json()
    assert "no prior" in body["note"] and len(body["images"]) == 4
    assert client.get("/sample?n=4&format=json").json()["note"] is None


def test_sample_scale_and_max_batch(client) -> None:
    r = client.get("/sample?n=256&scale=2&seed=0")
    assert decode_png(r.content).shape[::-1] == grid_size(256, 2)


# --- /reconstruct ----------------------------------------------------------------------


def test_reconstruct_png_is_deterministic(client, digit_png) -> None:
    a = client.post("/reconstruct", files={"file": ("d.png", digit_png)})
    b = client.post("/reconstruct", content=digit_png, headers={"Content-Type": "image/png"})
    assert a.status_code == 200 and a.headers["content-type"] == "image/png"
    assert a.content == b.content and decode_png(a.content).shape == (28, 28)


def test_reconstruct_json(client, digit_png) -> None:
    r = client.post("/reconstruct?format=json&scale=2", files={"file": ("d.png", digit_png)})
    body = r.json()
    assert set(body) >= {"model", "images", "z", "mu", "log_var", "input", "mse"}
    assert body["z"] == [body["mu"]]  # decoded from the mean
    seen = decode_png(base64.b64decode(body["input"])) / 255
    out = decode_png(base64.b64decode(body["images"][0])) / 255
    assert seen.shape == out.shape == (56, 56)
    assert body["mse"] == pytest.approx(np.mean((seen - out) ** 2), abs=2e-3)


def test_reconstruct_sample(client, digit_png) -> None:
    files = {"file": ("d.png", digit_png)}
    a = client.post("/reconstruct?sample=true&seed=3&format=json", files=files).json()
    b = client.post("/reconstruct?sample=true&seed=3&format=json", files=files).json()
    c = client.post("/reconstruct?sample=true&seed=4&format=json", files=files).json()
    assert a == b and a["z"] != c["z"] and a["z"] != [a["mu"]]


def test_reconstruct_ae(client, digit_png) -> None:
    body = client.post("/reconstruct?model=ae&format=json", files={"file": ("d", digit_png)}).json()
    assert body["mu"] is None and body["log_var"] is None and len(body["z"][0]) == 2


# --- models, figures, latent points ----------------------------------------------------


def test_models(client, model_dir) -> None:
    body = client.get("/models").json()
    assert body["default"] == "vae"
    assert [m["name"] for m in body["models"]] == ["ae", "vae"]
    on_disk = json.loads((model_dir / "vae" / "metadata.json").read_text())
    vae = client.get("/models/vae").json()
    # metadata.json as it is, and the priors /sample can draw from (no prior file: N(0, I)).
    assert vae.pop("priors") == {
        "available": ["normal"],
        "default": "normal",
        "per_label": False,
        "labels": [],
    }
    assert vae == on_disk


def test_latent_points(client, model_dir) -> None:
    r = client.get("/models/ae/latent-points")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == json.loads((model_dir / "ae" / "latent_points.json").read_text())


def test_figures(client, model_dir) -> None:
    r = client.get("/models/vae/figures/training_curves.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == (model_dir / "vae" / "training_curves.png").read_bytes()


@pytest.mark.parametrize("name", ["metadata.json", "encoder.onnx", "..%2Fae%2Fmetadata.json"])
def test_figures_only_listed_files(client, name) -> None:
    assert client.get(f"/models/vae/figures/{name}").status_code == 404


# --- probes, metrics, headers, logs, docs ----------------------------------------------


def test_root_leads_somewhere(client) -> None:
    r = client.get("/", follow_redirects=False)
    assert r.status_code in (200, 307)
    assert client.get("/").status_code == 200
    r = client.get("/static/no-such-file.js")
    assert r.status_code == 404 and r.headers["x-content-type-options"] == "nosniff"
    assert client.get("/static/../app.py").status_code == 404


def test_healthz_and_readyz(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "models": ["ae", "vae"]}


def test_readyz_is_503_before_start_up(model_dir) -> None:
    not_started = make_client(model_dir)  # no `with`: the lifespan has not run
    r = not_started.get("/readyz")
    assert r.status_code == 503 and "not ready" in r.json()["detail"]
    assert not_started.get("/healthz").status_code == 200
    assert not_started.get("/sample").status_code == 503


def test_metrics(client) -> None:
    client.get("/models/vae")
    client.get("/sample?n=3")
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'vae_http_requests_total{method="GET",route="/models/{name}",status="200"}' in text
    assert 'route="/models/vae"' not in text  # templates, not raw paths
    assert "vae_http_request_duration_seconds_bucket" in text
    assert 'vae_inference_duration_seconds_count{graph="decoder",model="vae"}' in text
    assert "vae_models_loaded 2.0" in text


def test_request_id(client) -> None:
    r = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    generated = client.get("/healthz").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    hostile = client.get("/healthz", headers={"X-Request-ID": "a b\tc" * 50})
    assert re.fullmatch(r"[0-9a-f]{32}", hostile.headers["x-request-id"])


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/healthz"), ("GET", "/sample?n=1"), ("GET", "/nope"), ("POST", "/encode")],
)
def test_nosniff_everywhere(client, method, path) -> None:
    assert client.request(method, path).headers["x-content-type-options"] == "nosniff"


def test_access_log_is_one_json_line(client, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="service.access"):
        client.get("/models/ae", headers={"X-Request-ID": "log-me"})
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "service.access"]
    assert len(lines) == 1
    entry = lines[0]
    assert entry["request_id"] == "log-me" and entry["route"] == "/models/{name}"
    assert entry["status"] == 200 and entry["method"] == "GET" and entry["duration_ms"] >= 0


def test_cors_off_by_default(client) -> None:
    r = client.get("/healthz", headers={"Origin": "https://example.org"})
    assert "access-control-allow-origin" not in r.headers


def test_cors_on(model_dir) -> None:
    with make_client(model_dir, cors_origins=["https://example.org"]) as c:
        r = c.get("/healthz", headers={"Origin": "https://example.org"})
        assert r.headers["access-control-allow-origin"] == "https://example.org"
        r = c.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers


def test_openapi_describes_the_api(client) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    expected = {
        "/encode", "/encode/batch", "/decode", "/sample", "/reconstruct", "/models",
        "/models/{name}", "/models/{name}/latent-points", "/models/{name}/figures/{file}",
        "/healthz", "/readyz", "/metrics",
    }  # fmt: skip
    assert expected <= set(paths)
    upload = paths["/encode"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "image/*"} <= set(upload)
    assert "files" in paths["/encode/batch"]["post"]["requestBody"]["content"][
        "multipart/form-data"]["schema"]["properties"]  # fmt: skip
    for path, method in [("/sample", "get"), ("/decode", "post"), ("/reconstruct", "post")]:
        content = paths[path][method]["responses"]["200"]["content"]
        assert {"image/png", "application/json"} <= set(content)
    decode_body = paths["/decode"]["post"]["requestBody"]["content"]["application/json"]
    assert decode_body["schema"]["$ref"].endswith("/DecodeRequest")
    n = next(p for p in paths["/sample"]["get"]["parameters"] if p["name"] == "n")
    assert n["schema"]["maximum"] == 256 and n["schema"]["default"] == 16
    assert client.get("/docs").status_code == 200
