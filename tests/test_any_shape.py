"""Models of any image shape (issue #15): RGB and non-square grayscale, z_dim > 2, through every
endpoint of a real `python -m service` with real PNG and JPEG uploads.

The model directory holds `rgb32` (VAE, 3x32x32, z_dim 8, with label names), `rgb64` (VAE,
3x64x64, z_dim 8) and `wide` (AE, 1x20x36, z_dim 8, preparation fit), all tiny untrained models
from harness.export_tiny_model (their latent points carry a principal plane). The digit models'
own behaviour is what the rest of the suite checks.
"""

from __future__ import annotations

import base64
import io
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from conftest import edit_metadata, free_port, stop, wait_ready
from PIL import Image, ImageDraw
from test_service_server import failed_start, start

from service.api.deps import chunk_for, max_images
from service.imaging.png import grid, png_bytes
from service.imaging.prepare import mnist_normalize, prepare_bytes, preprocess_bytes
from service.inference.format import ModelLoadError
from service.inference.registry import load_model

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 60.0
MAX_PIXELS = 2_000_000
Z_DIM = 8
SHAPES = {"rgb32": (3, 32, 32), "rgb64": (3, 64, 64), "wide": (1, 20, 36)}
KINDS = {"rgb32": "vae", "rgb64": "vae", "wide": "ae"}
LABELS = ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MODELS = sorted(SHAPES)


# --- images ---------------------------------------------------------------------------------


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A photo-like RGB picture: a colour gradient, a few shapes, sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, 1.0 - x / width], axis=2) * 200.0 + 30.0
    image = Image.fromarray(base.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = rng.integers(0, width // 2), rng.integers(0, height // 2)
        x1, y1 = (
            x0 + rng.integers(width // 8, width // 2),
            y0 + rng.integers(height // 8, height // 2),
        )
        draw.ellipse((x0, y0, x1, y1), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    noisy = np.asarray(image, np.int16) + rng.integers(-12, 13, (height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def encoded(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def rgba_upload() -> bytes:
    """A dark shape on transparency (what a plain RGB conversion would turn all black)."""
    image = Image.new("RGBA", (120, 90), (0, 0, 0, 0))
    ImageDraw.Draw(image).rectangle((20, 15, 100, 75), fill=(40, 20, 90, 255))
    return encoded(image)


UPLOADS = {
    "jpeg": encoded(photo(160, 120, 1), "JPEG", quality=90),
    "png": encoded(photo(64, 80, 2)),
    "big-jpeg": encoded(photo(1000, 700, 3), "JPEG", quality=85),  # much larger than any model
    "gray": encoded(photo(90, 90, 4).convert("L")),
    "rgba": rgba_upload(),
}


def picture(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    image.load()
    return image


def b64_picture(text: str) -> Image.Image:
    return picture(base64.b64decode(text))


def mode_of(name: str) -> str:
    return "RGB" if SHAPES[name][0] == 3 else "L"


def cell_size(name: str, scale: int = 1) -> tuple[int, int]:
    """(width, height) of one image of the model, as PNG sizes are written."""
    _, height, width = SHAPES[name]
    return width * scale, height * scale


def grid_size(name: str, count: int, cols: int | None = None, scale: int = 1) -> tuple[int, int]:
    cols = cols or math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    width, height = cell_size(name, scale)
    return cols * (width + 2) - 2, rows * (height + 2) - 2


def files(*names: str, field: str = "files") -> list[tuple[str, tuple[str, bytes]]]:
    return [(field, (f"{name}.img", UPLOADS[name])) for name in names]


# --- the server -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def any_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from harness.models import export_tiny_model

    root = tmp_path_factory.mktemp("any-shape")
    for name, shape in SHAPES.items():
        preparation = "fit" if name == "wide" else None
        export_tiny_model(root / name, KINDS[name], Z_DIM, shape, preparation)
    edit_metadata(root / "rgb32", label_names=LABELS)
    return root


@pytest.fixture(scope="module")
def http(any_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    port = free_port()
    log_path = tmp_path_factory.mktemp("any-shape-server") / "server.log"
    with open(log_path, "wb") as log:
        process = start(
            any_dir,
            port,
            log,
            VAE_DEFAULT_MODEL="rgb32",
            VAE_MAX_PIXELS=str(MAX_PIXELS),
            VAE_ACCESS_LOG="false",
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(process, base, log_path, START_TIMEOUT)
            with httpx.Client(base_url=base, timeout=60) as client:
                yield client
        finally:
            stop(process)


def ok(response: httpx.Response) -> httpx.Response:
    assert response.status_code == 200, response.text[:2000]
    return response


def latent_plane(any_dir: Path, name: str) -> dict:
    return json.loads((any_dir / name / "latent_points.json").read_text())["plane"]


# --- what is served -------------------------------------------------------------------------


def test_models_lists_shapes_preparations_and_label_names(http) -> None:
    body = ok(http.get("/models")).json()
    assert body["default"] == "rgb32"
    listed = {m["name"]: m for m in body["models"]}
    assert sorted(listed) == MODELS
    for name, shape in SHAPES.items():
        meta = listed[name]
        assert meta["input"]["shape"] == list(shape) and meta["z_dim"] == Z_DIM
        assert meta["input"]["preparation"] == "fit"
    assert listed["rgb32"]["label_names"] == LABELS
    assert "label_names" not in listed["rgb64"]
    assert ok(http.get("/models/rgb32")).json()["label_names"] == LABELS
    points = ok(http.get("/models/rgb64/latent-points")).json()
    assert len(points["plane"]["origin"]) == Z_DIM and len(points["plane"]["axes"]) == 2
    assert ok(http.get("/models/wide/figures/training_curves.png")).content.startswith(b"\x89PNG")


# --- images out -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_sample_and_decode(http, name) -> None:
    r = ok(http.get("/sample", params={"model": name, "n": 5, "seed": 3}))
    image = picture(r.content)
    assert image.mode == mode_of(name) and image.size == grid_size(name, 5)
    if KINDS[name] == "ae":
        assert "plain autoencoder" in r.headers["x-note"]
    body = ok(
        http.get("/sample", params={"model": name, "n": 3, "format": "json", "scale": 2})
    ).json()
    assert len(body["z"]) == 3 and all(len(z) == Z_DIM for z in body["z"])
    for text in body["images"]:
        cell = b64_picture(text)
        assert cell.mode == mode_of(name) and cell.size == cell_size(name, 2)
    z = np.random.default_rng(0).normal(size=(4, Z_DIM)).round(3).tolist()
    r = ok(http.post("/decode", params={"model": name, "scale": 3}, json={"z": z}))
    image = picture(r.content)
    assert image.mode == mode_of(name) and image.size == grid_size(name, 4, scale=3)
    body = ok(http.post("/decode", params={"model": name, "format": "json"}, json={"z": z})).json()
    assert np.allclose(body["z"], z) and len(body["images"]) == 4
    r = http.post("/decode", params={"model": name}, json={"z": [[0.0, 0.0]]})
    assert r.status_code == 422 and "z_dim=8" in r.text


def test_an_answer_is_bounded_by_its_pixel_values(http) -> None:
    """A 3x64x64 model is 47 digits' worth of pixel values per image: the scale that is fine
    for 256 digits is refused for it, as a 422 naming the scale."""
    r = http.get("/sample", params={"model": "rgb64", "n": 256, "scale": 16})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "scale"]
    assert "3x64x64 (RGB)" in r.json()["detail"][0]["msg"]
    z = [[0.0] * Z_DIM] * 200
    r = http.post("/decode", params={"model": "rgb64", "scale": 16}, json={"z": z})
    assert r.status_code == 422
    r = http.get("/manifold", params={"model": "rgb64", "n": 30, "scale": 4})
    assert r.status_code == 422 and "pixel values" in r.text
    assert ok(http.get("/sample", params={"model": "rgb64", "n": 64, "scale": 2}))


def test_max_images_scales_with_pixel_values() -> None:
    def model(shape: tuple[int, int, int]) -> SimpleNamespace:
        return SimpleNamespace(image_values=math.prod(shape))

    assert max_images(model((1, 28, 28)), 256) == 256  # digits: VAE_MAX_BATCH, as always
    assert max_images(model((3, 64, 64)), 256) == 256
    assert max_images(model((3, 256, 256)), 256) == 16
    assert max_images(model((3, 256, 256)), 1) == 1
    assert chunk_for(model((1, 28, 28)), 256) == 256 == chunk_for(model((3, 64, 64)), 256)
    assert chunk_for(model((3, 256, 256)), 256) == 16


# --- images in ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_encode_every_kind_of_upload(http, name) -> None:
    key = "mu" if KINDS[name] == "vae" else "z"
    for upload, data in UPLOADS.items():
        body = ok(http.post("/encode", params={"model": name}, files={"file": ("x", data)})).json()
        assert len(body[key]) == Z_DIM, upload
        assert all(math.isfinite(v) for v in body[key]), upload
    raw = http.post(
        "/encode",
        params={"model": name},
        content=UPLOADS["big-jpeg"],
        headers={"Content-Type": "image/jpeg"},
    )
    assert (
        ok(raw).json()[key]
        == ok(
            http.post("/encode", params={"model": name}, files={"file": ("x", UPLOADS["big-jpeg"])})
        ).json()[key]
    )
    batch = ok(
        http.post("/encode/batch", params={"model": name}, files=files("jpeg", "gray", "rgba"))
    ).json()
    assert len(batch["items"]) == 3 and all(len(item[key]) == Z_DIM for item in batch["items"])
    one = ok(http.post("/encode", params={"model": name}, files={"file": ("x", UPLOADS["gray"])}))
    assert np.allclose(batch["items"][1][key], one.json()[key], atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_reconstruct(http, name) -> None:
    data = UPLOADS["big-jpeg"]
    r = ok(http.post("/reconstruct", params={"model": name}, files={"file": ("x", data)}))
    image = picture(r.content)
    assert image.mode == mode_of(name) and image.size == cell_size(name)
    body = ok(
        http.post(
            "/reconstruct",
            params={"model": name, "format": "json", "scale": 2},
            files={"file": ("x", data)},
        )
    ).json()
    seen, out = b64_picture(body["input"]), b64_picture(body["images"][0])
    assert seen.mode == out.mode == mode_of(name)
    assert seen.size == out.size == cell_size(name, 2)
    assert len(body["z"][0]) == Z_DIM and 0 <= body["mse"] <= 1
    if KINDS[name] == "vae":
        assert len(body["mu"]) == len(body["log_var"]) == Z_DIM
        sampled = http.post(
            "/reconstruct",
            params={"model": name, "sample": "true", "seed": 1},
            files={"file": ("x", data)},
        )
        assert picture(ok(sampled).content).size == cell_size(name)


def test_the_input_the_model_saw_is_the_upload_fitted(http) -> None:
    """fit keeps the centre at the model's aspect ratio; an RGB model sees colour, a grayscale
    upload to it three equal channels."""
    left = Image.new("RGB", (300, 100), (255, 0, 0))
    left.paste(Image.new("RGB", (100, 100), (0, 0, 255)), (100, 0))  # blue centre, red sides
    body = ok(
        http.post(
            "/reconstruct",
            params={"model": "rgb32", "format": "json"},
            files={"file": ("x", encoded(left))},
        )
    ).json()
    seen = np.asarray(b64_picture(body["input"]), np.int16)
    assert seen.shape == (32, 32, 3)
    assert (seen[..., 2] > 240).all() and (seen[..., 0] < 15).all()  # only the blue centre
    none = ok(
        http.post(
            "/reconstruct",
            params={"model": "rgb32", "format": "json", "preprocess": "none"},
            files={"file": ("x", encoded(left))},
        )
    ).json()
    squeezed = np.asarray(b64_picture(none["input"]), np.int16)
    assert squeezed[16, 2, 0] > 240 and squeezed[16, 16, 2] > 240  # red sides kept, squeezed
    gray = ok(
        http.post(
            "/reconstruct",
            params={"model": "rgb32", "format": "json"},
            files={"file": ("x", UPLOADS["gray"])},
        )
    ).json()
    channels = np.asarray(b64_picture(gray["input"]), np.int16)
    assert np.abs(channels[..., 0] - channels[..., 1]).max() <= 1
    assert np.abs(channels[..., 1] - channels[..., 2]).max() <= 1


def test_preprocess_choices_and_digit_on_rgb(http) -> None:
    data = UPLOADS["png"]
    for choice in ("auto", "fit", "none"):
        assert ok(http.post("/encode", params={"preprocess": choice}, files={"file": ("x", data)}))
    r = http.post("/encode", params={"preprocess": "digit"}, files={"file": ("x", data)})
    assert r.status_code == 422
    detail = r.json()["detail"][0]
    assert detail["loc"] == ["query", "preprocess"] and "1-channel" in detail["msg"]
    for path in ("/reconstruct", "/score"):
        r = http.post(path, params={"preprocess": "digit"}, files={"file": ("x", data)})
        assert r.status_code == 422, path
    r = http.post("/encode/batch", params={"preprocess": "digit"}, files=files("png", "jpeg"))
    assert r.status_code == 422
    # On the grayscale model digit is the MNIST recipe at 20x36: a light-on-dark stroke, centred.
    stroke = Image.new("L", (200, 120), 255)
    ImageDraw.Draw(stroke).line([(60, 20), (140, 100)], fill=0, width=12)
    seen = ok(
        http.post(
            "/reconstruct",
            params={"model": "wide", "preprocess": "digit", "format": "json"},
            files={"file": ("x", encoded(stroke))},
        )
    ).json()["input"]
    ink = np.asarray(b64_picture(seen), np.float64)
    assert ink.shape == (20, 36) and ink.max() == 255 and ink[0].max() == 0  # inverted, boxed


def test_uploads_over_max_pixels_are_refused(http) -> None:
    big = encoded(Image.new("RGB", (2000, 1100), (10, 200, 30)))  # 2.2 MP: tiny as a PNG
    for name in MODELS:
        r = http.post("/encode", params={"model": name}, files={"file": ("x", big)})
        assert r.status_code == 413 and str(MAX_PIXELS) in r.json()["detail"], r.text
    r = http.post("/encode/batch", files=[("files", ("a", UPLOADS["png"])), ("files", ("b", big))])
    assert r.status_code == 413 and r.json()["detail"].startswith("files[1]: ")


# --- the latent space -----------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_interpolate(http, name) -> None:
    start, end = [-1.0] * Z_DIM, [1.0] * Z_DIM
    r = ok(
        http.post(
            "/interpolate", params={"model": name, "steps": 5}, json={"start": start, "end": end}
        )
    )
    image = picture(r.content)
    assert image.mode == mode_of(name) and image.size == grid_size(name, 5, cols=5)
    body = ok(
        http.post(
            "/interpolate",
            params={"model": name, "steps": 4, "format": "json", "method": "slerp"},
            files=[*files("jpeg", field="start"), *files("big-jpeg", field="end")],
        )
    ).json()
    assert body["endpoints"] == "images" and len(body["z"]) == 4
    assert all(len(z) == Z_DIM for z in body["z"])
    assert b64_picture(body["images"][0]).size == cell_size(name)
    r = http.post("/interpolate", params={"model": name}, json={"start": [0, 0], "end": [1, 1]})
    assert r.status_code == 422


@pytest.mark.parametrize("name", MODELS)
def test_manifold_for_z_dim_8(http, any_dir, name) -> None:
    """Default: the book's grid over z[0], z[1] with the other six at 0 (the note says so);
    plane=principal: the grid over the latent points' principal plane."""
    r = ok(http.get("/manifold", params={"model": name, "n": 3}))
    assert r.headers["x-manifold-plane"] == "dims" and "z_dim 8" in r.headers["x-note"]
    image = picture(r.content)
    assert image.mode == mode_of(name) and image.size == grid_size(name, 9)
    body = ok(http.get("/manifold", params={"model": name, "n": 3, "format": "json"})).json()
    z = np.asarray(body["z"])
    assert z.shape == (3, 3, Z_DIM) and body["plane"] == "dims" and body["dims"] == [0, 1]
    assert (z[..., 2:] == 0).all() and "other 6 dimensions at 0" in body["note"]
    assert "plane=principal" in body["note"] and "origin" not in body and "axes" not in body

    body = ok(
        http.get(
            "/manifold", params={"model": name, "n": 4, "plane": "principal", "format": "json"}
        )
    ).json()
    plane = latent_plane(any_dir, name)
    origin, axes = np.asarray(plane["origin"]), np.asarray(plane["axes"])
    axis = np.asarray(body["axis"])
    expected = origin + axis[None, :, None] * axes[0] + axis[::-1, None, None] * axes[1]
    assert body["plane"] == "principal" and body["dims"] is None
    assert body["origin"] == plane["origin"] and body["axes"] == plane["axes"]
    assert body["explained"] == plane["explained"] and body["base"] == plane["origin"]
    np.testing.assert_allclose(np.asarray(body["z"]), expected, atol=1e-5)
    assert "principal plane" in body["note"] and len(body["images"]) == 16
    assert b64_picture(body["images"][0]).mode == mode_of(name)
    r = ok(http.get("/manifold", params={"model": name, "n": 4, "plane": "principal"}))
    assert r.headers["x-manifold-plane"] == "principal"
    assert picture(r.content).size == grid_size(name, 16)
    r = http.get("/manifold", params={"model": name, "plane": "principal", "dims": "0,2"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "dims"]


# --- scores ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_score(http, name) -> None:
    channels, height, width = SHAPES[name]
    dims = channels * height * width
    data = UPLOADS["jpeg"]
    body = ok(
        http.post("/score", params={"model": name, "k": 8, "seed": 2}, files={"file": ("x", data)})
    ).json()
    for field in ("input", "reconstruction"):
        image = b64_picture(body[field])
        assert image.mode == mode_of(name) and image.size == cell_size(name), field
    error_map = b64_picture(body["error_map"])
    assert error_map.mode == "RGB" and error_map.size == cell_size(name)
    seen = np.asarray(b64_picture(body["input"]), np.float64) / 255
    recon = np.asarray(b64_picture(body["reconstruction"]), np.float64) / 255
    assert body["mse"] == pytest.approx(np.mean((seen - recon) ** 2), abs=5e-3)
    if KINDS[name] == "vae":
        assert body["likelihood"]["dims"] == dims
        assert body["bits_per_dim"] == pytest.approx(-body["log_px"] / (dims * math.log(2)))
        assert all(math.isfinite(body[k]) for k in ("elbo", "kl", "log_px"))
    else:
        assert body["log_px"] is None and body["bits_per_dim"] is None
    batch = ok(
        http.post("/score/batch", params={"model": name, "k": 4}, files=files("png", "rgba"))
    ).json()
    assert len(batch["items"]) == 2
    r = ok(
        http.post("/score", params={"model": name, "format": "png"}, files={"file": ("x", data)})
    )
    assert picture(r.content).size == cell_size(name)
    r = ok(
        http.post(
            "/score/batch",
            params={"model": name, "format": "png", "scale": 2},
            files=files("png", "gray", "rgba"),
        )
    )
    image = picture(r.content)
    assert image.mode == "RGB" and image.size == grid_size(name, 3, scale=2)


# --- the Open Inference Protocol ------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_oip_shapes_from_metadata(http, name) -> None:
    shape = list(SHAPES[name])
    encoder = ok(http.get(f"/v2/models/{name}-encoder")).json()
    decoder = ok(http.get(f"/v2/models/{name}-decoder")).json()
    assert encoder["inputs"][0]["shape"] == [-1, *shape]
    assert all(t["shape"] == [-1, Z_DIM] for t in encoder["outputs"])
    assert decoder["inputs"][0]["shape"] == [-1, Z_DIM]
    assert decoder["outputs"][0]["shape"] == [-1, *shape]
    z = np.random.default_rng(1).normal(size=(2, Z_DIM)).astype(np.float32)
    tensor = {"name": decoder["inputs"][0]["name"], "shape": [2, Z_DIM], "datatype": "FP32"}
    r = ok(
        http.post(
            f"/v2/models/{name}-decoder/infer",
            json={"inputs": [{**tensor, "data": z.ravel().tolist()}]},
        )
    )
    out = r.json()["outputs"][0]
    assert out["shape"] == [2, *shape] and len(out["data"]) == 2 * math.prod(shape)
    x = np.asarray(out["data"], np.float32).reshape(2, *shape)
    image = {"name": encoder["inputs"][0]["name"], "shape": [2, *shape], "datatype": "FP32"}
    r = ok(
        http.post(
            f"/v2/models/{name}-encoder/infer",
            json={"inputs": [{**image, "data": x.ravel().tolist()}]},
        )
    )
    assert all(o["shape"] == [2, Z_DIM] for o in r.json()["outputs"])
    bad = {**image, "shape": [1, 1, 28, 28], "data": [0.0] * 784}
    r = http.post(f"/v2/models/{name}-encoder/infer", json={"inputs": [bad]})
    assert r.status_code == 400 and f"[-1, {', '.join(map(str, shape))}]" in r.json()["error"]

    def pipeline(preprocess: str | None = None) -> httpx.Response:
        body: dict = {
            "inputs": [
                {
                    "name": "file",
                    "shape": [2],
                    "datatype": "BYTES",
                    "parameters": {"content_type": "base64"},
                    "data": [base64.b64encode(UPLOADS[k]).decode() for k in ("jpeg", "rgba")],
                }
            ]
        }
        if preprocess:
            body["parameters"] = {"preprocess": preprocess}
        return http.post(f"/v2/models/{name}/infer", json=body)

    outputs = ok(pipeline()).json()["outputs"]
    key = "mu" if KINDS[name] == "vae" else "z"
    code = next(o for o in outputs if o["name"] == key)
    assert code["shape"] == [2, Z_DIM]
    rest = ok(http.post("/encode", params={"model": name}, files={"file": ("x", UPLOADS["jpeg"])}))
    assert np.allclose(code["data"][:Z_DIM], rest.json()[key], atol=1e-5)
    assert ok(pipeline("fit")) and ok(pipeline("none"))
    r = pipeline("digit")
    if SHAPES[name][0] == 3:
        assert r.status_code == 400 and "1-channel" in r.json()["error"]
    else:  # allowed on a grayscale model: these photos are just no digits
        assert r.status_code == 400 and "no digit found" in r.json()["error"]


# --- the pieces, without a server -----------------------------------------------------------


def test_preparations_give_the_model_shape() -> None:
    data = UPLOADS["big-jpeg"]
    for preparation in ("fit", "none"):
        for shape in ((3, 32, 32), (1, 20, 36), (3, 48, 16)):
            x = prepare_bytes(data, preparation, shape)
            assert x.shape == shape and x.dtype == np.float32 and 0 <= x.min() <= x.max() <= 1
    stroke = Image.new("RGB", (90, 90), (250, 250, 240))
    ImageDraw.Draw(stroke).line([(30, 10), (60, 80)], fill=(20, 20, 60), width=8)
    digit = prepare_bytes(encoded(stroke, "JPEG"), "digit", (1, 20, 36))
    assert digit.shape == (1, 20, 36) and digit.max() == 1
    with pytest.raises(ValueError, match="1-channel"):
        prepare_bytes(data, "digit", (3, 32, 32))


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"])
def test_fit_and_none_take_every_mode(mode) -> None:
    image = photo(45, 30, 6).convert("RGBA" if mode in ("LA", "RGBA") else "RGB")
    if mode in ("I;16", "I", "F"):
        gray = np.asarray(image.convert("L"), np.float64)
        scale = {"I;16": 257.0, "I": 257.0, "F": 1 / 255}[mode]
        dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
        image = Image.fromarray((gray * scale).astype(dtype))
        assert image.mode == mode
    else:
        image = image.convert(mode)
    for preparation in ("fit", "none"):
        for shape in ((3, 32, 32), (1, 20, 36)):
            x = prepare_bytes(encoded(image, "TIFF"), preparation, shape)
            assert x.shape == shape and np.isfinite(x).all() and 0 <= x.min() <= x.max() <= 1
            assert x.max() > 0.2, (mode, preparation, shape)  # not a black picture


def test_digit_preparation_is_unchanged_for_28x28_and_boxes_20_28_of_any_size() -> None:
    stroke = np.zeros((100, 60), np.float32)
    stroke[10:90, 25:35] = 1.0
    square = mnist_normalize(stroke)
    assert np.array_equal(square, mnist_normalize(stroke, (28, 28)))
    assert np.array_equal(
        preprocess_bytes(png_bytes((stroke * 255).astype(np.uint8)))[None],
        prepare_bytes(png_bytes((stroke * 255).astype(np.uint8)), "digit", (1, 28, 28)),
    )
    rows = np.flatnonzero(square.max(axis=1) > 0)
    assert rows[-1] - rows[0] + 1 == 20  # the box of 20 in 28
    tall = mnist_normalize(stroke, (56, 40))
    rows = np.flatnonzero(tall.max(axis=1) > 0)
    assert tall.shape == (56, 40) and rows[-1] - rows[0] + 1 == 40  # 20/28 of 56


def test_png_writes_grayscale_and_rgb() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    assert np.array_equal(np.asarray(picture(png_bytes(rgb))), rgb)
    assert picture(png_bytes(rgb)).mode == "RGB" and picture(png_bytes(gray)).mode == "L"
    assert np.array_equal(np.asarray(picture(png_bytes(gray))), gray)
    cells = rng.integers(0, 256, (3, 3, 4, 6), dtype=np.uint8)  # (N, C, H, W)
    out = grid(cells)
    assert out.shape == (2 * 4 + 2, 2 * 6 + 2, 3)
    assert np.array_equal(out[:4, :6], cells[0].transpose(1, 2, 0))
    assert np.array_equal(out[:4, 8:], cells[1].transpose(1, 2, 0))
    assert (out[6:, 8:] == 0).all() and (out[4:6] == 128).all()


# --- start-up ---------------------------------------------------------------------------------


def test_a_bad_plane_in_latent_points_stops_loading(any_dir, tmp_path) -> None:
    folder = tmp_path / "rgb64"
    shutil.copytree(any_dir / "rgb64", folder)
    path = folder / "latent_points.json"
    points = json.loads(path.read_text())
    for plane in (
        {**points["plane"], "origin": points["plane"]["origin"][:-1]},
        {**points["plane"], "axes": points["plane"]["axes"][:1]},
        {**points["plane"], "explained": [0.5, "x"]},
        {"origin": points["plane"]["origin"], "axes": points["plane"]["axes"]},
        "flat",
    ):
        path.write_text(json.dumps({**points, "plane": plane}))
        with pytest.raises(ModelLoadError, match=r"latent_points\.json: 'plane'"):
            load_model(folder)
    for bad in (math.inf, math.nan):
        plane = {**points["plane"], "origin": [0.0] * (Z_DIM - 1) + [bad]}
        path.write_text(json.dumps({**points, "plane": plane}))  # Infinity, NaN: not finite
        with pytest.raises(ModelLoadError, match="finite numbers"):
            load_model(folder)
    path.write_text(json.dumps(points))
    assert load_model(folder).plane is not None


@pytest.mark.parametrize("shape", [[2, 28, 28], [3, 300, 300]])
def test_a_shape_the_service_does_not_serve_stops_start_up(model_dir, tmp_path, shape) -> None:
    models = tmp_path / "models"
    shutil.copytree(model_dir / "vae", models / "vae")
    metadata = json.loads((models / "vae" / "metadata.json").read_text())
    edit_metadata(models / "vae", input={**metadata["input"], "shape": shape, "preparation": "fit"})
    output = failed_start(models, tmp_path / "server.log")
    assert str(models / "vae" / "metadata.json") in output, output[-3000:]
    assert str(shape) in output and "1-channel (grayscale) or 3-channel (RGB)" in output


def test_fit_inverts_a_light_background_for_dark_background_models() -> None:
    # A dark shirt photographed on white, for a model trained light-on-black (Fashion-MNIST's
    # metadata says background: dark): fit hands it over light on black, as digit would.
    shirt = Image.new("L", (120, 90), 245)
    ImageDraw.Draw(shirt).rectangle([(40, 20), (80, 80)], fill=30)
    data = encoded(shirt, "PNG")
    for preparation in ("fit", "none"):
        plain = prepare_bytes(data, preparation, (1, 28, 28))
        dark = prepare_bytes(data, preparation, (1, 28, 28), background="dark")
        assert plain[0, 0, 0] > 0.9 and dark[0, 0, 0] < 0.1  # the corner: background
        assert np.allclose(dark, 1.0 - plain)
        # already on a dark background: left as it is
        again = prepare_bytes(
            encoded(Image.fromarray(255 - np.asarray(shirt)), "PNG"),
            preparation,
            (1, 28, 28),
            background="dark",
        )
        assert np.allclose(again, dark, atol=1 / 255)
    rgb = prepare_bytes(encoded(shirt.convert("RGB"), "PNG"), "fit", (3, 28, 28), background="dark")
    assert rgb[:, 0, 0].min() > 0.9  # RGB models are never inverted
