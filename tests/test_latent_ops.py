"""Interpolation and the manifold: the numpy (service/inference/normal.py, latent.py) and the
routes (POST /interpolate, GET /manifold, service/api/latent_ops.py), on the tiny models."""

from __future__ import annotations

import base64
import io
import json
import math

import numpy as np
import pytest
from conftest import digit_array, make_client, png_bytes
from PIL import Image

from service.inference.latent import interpolate, lerp, manifold_grid, slerp, steps_t
from service.inference.normal import norm_cdf, norm_ppf

CELL = 28


def gray(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return np.asarray(image)


def b64_gray(text: str) -> np.ndarray:
    return gray(base64.b64decode(text))


def post_json(client, path: str, body: object, **params: object):
    raw = json.dumps(body, allow_nan=True)
    return client.post(
        path, params=params, content=raw, headers={"content-type": "application/json"}
    )


def error_locs(response) -> list[list]:
    assert response.status_code == 422, response.text
    return [e["loc"] for e in response.json()["detail"]]


# --- the normal quantile ----------------------------------------------------------------


def test_norm_ppf_matches_scipy() -> None:
    norm = pytest.importorskip("scipy.stats").norm
    p = np.concatenate(
        [
            np.logspace(-300, -1, 300),
            np.linspace(0.0005, 0.9995, 1999),
            1.0 - np.logspace(-16, -1, 100),
        ]
    )
    np.testing.assert_allclose(norm_ppf(p), norm.ppf(p), rtol=1e-12, atol=1e-14)
    # the manifold's default axis, the page's and the book's
    axis = np.linspace(0.05, 0.95, 20)
    np.testing.assert_allclose(norm_ppf(axis), norm.ppf(axis), rtol=0, atol=1e-14)


def test_norm_ppf_edges_and_symmetry() -> None:
    out = norm_ppf(np.array([0.0, 1.0, -0.1, 1.5, np.nan, 0.5]))
    assert out[0] == -np.inf and out[1] == np.inf
    assert np.isnan(out[2:5]).all() and out[5] == 0.0
    p = np.linspace(0.01, 0.49, 49)
    np.testing.assert_allclose(norm_ppf(p), -norm_ppf(1 - p), rtol=1e-13)
    np.testing.assert_allclose(norm_cdf(norm_ppf(p)), p, rtol=1e-14)


# --- interpolation, numpy ---------------------------------------------------------------


def test_linear_path_is_a_straight_line() -> None:
    a, b = np.array([1.0, -2.0, 0.5]), np.array([-3.0, 0.0, 2.0])
    path = lerp(a, b, steps_t(5))
    np.testing.assert_allclose(path[2], (a + b) / 2)
    np.testing.assert_allclose(np.diff(path, axis=0), np.tile((b - a) / 4, (4, 1)))


@pytest.mark.parametrize("z_dim", [2, 8, 64])
def test_slerp_keeps_the_norm_of_equal_norm_endpoints(z_dim: int) -> None:
    """Two points at the typical radius of N(0, I), sqrt(z_dim): the spherical path stays on
    it; the straight line cuts inside."""
    rng = np.random.default_rng(z_dim)
    a, b = rng.standard_normal((2, z_dim))
    radius = math.sqrt(z_dim)
    a, b = a / np.linalg.norm(a) * radius, b / np.linalg.norm(b) * radius
    t = steps_t(11)
    norms = np.linalg.norm(slerp(a, b, t), axis=1)
    np.testing.assert_allclose(norms, radius, rtol=1e-12)
    assert np.linalg.norm(lerp(a, b, t), axis=1)[5] < radius * 0.999


def test_slerp_norm_is_linear_and_the_angle_even() -> None:
    a, b = np.array([3.0, 0.0, 0.0]), np.array([0.0, 1.0, 1.0])
    t = steps_t(9)
    path = slerp(a, b, t)
    np.testing.assert_allclose(
        np.linalg.norm(path, axis=1), (1 - t) * 3.0 + t * math.sqrt(2), rtol=1e-12
    )
    units = path / np.linalg.norm(path, axis=1, keepdims=True)
    angles = np.arccos(np.clip(np.sum(units[:-1] * units[1:], axis=1), -1, 1))
    np.testing.assert_allclose(angles, (math.pi / 2) / 8, rtol=1e-9)
    # on the plane of a and b
    normal = np.cross(a, b)
    np.testing.assert_allclose(path @ normal, 0.0, atol=1e-12)


@pytest.mark.parametrize(
    ("a", "b", "why"),
    [
        ([1.0, 2.0], [-2.0, -4.0], "antiparallel"),
        ([1.0, 2.0], [2.0, 4.0], "parallel"),
        ([0.0, 0.0], [1.0, 1.0], "start is (near) zero"),
        ([1.0, 1.0], [1e-9, 0.0], "end is (near) zero"),
        ([3.0], [-1.0], "antiparallel"),
    ],
)
def test_slerp_falls_back_to_linear_and_says_so(a, b, why) -> None:
    path, used, note = interpolate(np.array(a), np.array(b), 7, "slerp")
    assert used == "linear" and note is not None and why in note
    np.testing.assert_allclose(path, lerp(np.array(a), np.array(b), steps_t(7)), rtol=1e-6)


def test_interpolate_ends_exactly_at_the_endpoints() -> None:
    rng = np.random.default_rng(1)
    for method in ("linear", "slerp"):
        a, b = rng.standard_normal((2, 5)).astype(np.float32)
        path, used, note = interpolate(a, b, 13, method)
        assert path.dtype == np.float32 and path.shape == (13, 5)
        assert used == method and note is None
        assert path[0].tobytes() == a.tobytes() and path[-1].tobytes() == b.tobytes()


# --- the manifold, numpy ------------------------------------------------------------------


def test_manifold_grid_order_and_shape() -> None:
    grid, axis = manifold_grid(2, 4, 0.1, 0.9)
    assert grid.shape == (4, 4, 2) and np.all(np.diff(axis) > 0)
    for r in range(4):
        for c in range(4):
            np.testing.assert_allclose(grid[r, c], [axis[c], axis[3 - r]], rtol=1e-6)


def test_manifold_grid_other_dimensions() -> None:
    base = np.array([0.5, -0.25, 1.0, 2.0])
    grid, axis = manifold_grid(4, 3, dims=(3, 1), base=base)
    np.testing.assert_allclose(grid[..., 0], 0.5)
    np.testing.assert_allclose(grid[..., 2], 1.0)
    np.testing.assert_allclose(grid[0, :, 3], axis, rtol=1e-6)  # along the row: dims[0]
    np.testing.assert_allclose(grid[:, 0, 1], axis[::-1], rtol=1e-6)  # down: dims[1], falling


# --- POST /interpolate ------------------------------------------------------------------


@pytest.mark.parametrize("model", ["vae", "ae"])
@pytest.mark.parametrize("method", ["linear", "slerp"])
def test_interpolate_decodes_exactly_to_decoded_start_and_end(client, model, method) -> None:
    start, end = [-1.2, 0.4], [0.9, 1.3]
    r = post_json(
        client,
        "/interpolate",
        {"start": start, "end": end},
        model=model,
        method=method,
        steps=6,
        format="json",
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == model and body["method"] == body["used"] == method
    assert body["endpoints"] == "latent" and body["note"] is None
    assert len(body["z"]) == len(body["images"]) == len(body["t"]) == 6
    np.testing.assert_allclose(body["t"], np.linspace(0, 1, 6))
    assert body["z"][0] == np.float32(start).tolist() and body["z"][-1] == np.float32(end).tolist()
    np.testing.assert_allclose(body["norms"], np.linalg.norm(body["z"], axis=1), rtol=1e-6)
    decoded = client.post(
        "/decode", params={"model": model, "format": "json"}, json={"z": [start, end]}
    ).json()
    assert body["images"][0] == decoded["images"][0]
    assert body["images"][-1] == decoded["images"][1]
    # the PNG strip: one row, in path order, the same pixels
    strip = post_json(
        client, "/interpolate", {"start": start, "end": end}, model=model, method=method, steps=6
    )
    assert strip.status_code == 200 and strip.headers["content-type"] == "image/png"
    picture = gray(strip.content)
    assert picture.shape == (CELL, 6 * CELL + 5 * 2)
    for i, image in enumerate(body["images"]):
        left = i * (CELL + 2)
        np.testing.assert_array_equal(picture[:, left : left + CELL], b64_gray(image))


def test_interpolate_slerp_differs_from_linear_and_keeps_the_radius(client) -> None:
    start, end = [1.5, 0.0], [0.0, -1.5]
    bodies = {
        m: post_json(
            client, "/interpolate", {"start": start, "end": end}, method=m, format="json", steps=5
        ).json()
        for m in ("linear", "slerp")
    }
    np.testing.assert_allclose(bodies["slerp"]["norms"], 1.5, rtol=1e-6)
    assert bodies["linear"]["norms"][2] == pytest.approx(1.5 / math.sqrt(2), rel=1e-6)


def test_interpolate_antiparallel_slerp_says_it_fell_back(client) -> None:
    r = post_json(client, "/interpolate", {"start": [1, 1], "end": [-2, -2]}, method="slerp")
    assert r.status_code == 200 and "antiparallel" in r.headers["x-note"]
    body = post_json(
        client, "/interpolate", {"start": [1, 1], "end": [-2, -2]}, method="slerp", format="json"
    ).json()
    assert body["method"] == "slerp" and body["used"] == "linear" and "antiparallel" in body["note"]


@pytest.mark.parametrize("model", ["vae", "ae"])
def test_interpolate_between_images_starts_at_their_mean(client, model) -> None:
    """Images are prepared as for /encode and encoded to their mean (VAE mu, AE z): the
    path's ends are /encode's answer and decode to /reconstruct's image."""
    first = png_bytes(digit_array())
    second = png_bytes(np.rot90(digit_array()).copy())
    files = {"start": ("a.png", first, "image/png"), "end": ("b.png", second, "image/png")}
    r = client.post("/interpolate", params={"model": model, "format": "json"}, files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["endpoints"] == "images" and len(body["z"]) == 10
    key = "mu" if model == "vae" else "z"
    for z, data in ((body["z"][0], first), (body["z"][-1], second)):
        code = client.post("/encode", params={"model": model}, files={"file": data}).json()[key]
        np.testing.assert_allclose(z, code, rtol=0, atol=1e-6)
    recon = client.post(
        "/reconstruct", params={"model": model, "format": "json"}, files={"file": first}
    ).json()
    assert body["images"][0] == recon["images"][0]


def test_interpolate_scale(client) -> None:
    r = post_json(client, "/interpolate", {"start": [0, 0], "end": [1, 1]}, steps=3, scale=2)
    assert gray(r.content).shape == (2 * CELL, 3 * 2 * CELL + 2 * 2)


@pytest.mark.parametrize(
    ("params", "body", "loc"),
    [
        ({"steps": 1}, {"start": [0, 0], "end": [1, 1]}, ["query", "steps"]),
        ({"steps": 65}, {"start": [0, 0], "end": [1, 1]}, ["query", "steps"]),
        ({"method": "cubic"}, {"start": [0, 0], "end": [1, 1]}, ["query", "method"]),
        ({}, {"start": [0, 0, 0], "end": [1, 1]}, ["body", "start"]),
        ({}, {"start": [0, 0], "end": [1]}, ["body", "end"]),
        ({}, {"start": [0, float("nan")], "end": [1, 1]}, ["body", "start", 1]),
        ({}, {"start": [0, 0], "end": [float("inf"), 1]}, ["body", "end", 0]),
        ({}, {"start": [0, 2e4], "end": [1, 1]}, ["body", "start", 1]),
        ({}, {"start": ["0", 0], "end": [1, 1]}, ["body", "start", 0]),
        ({}, {"start": [0, 0]}, ["body", "end"]),
        ({}, {"start": [0, 0], "end": [1, 1], "steps": 3}, ["body", "steps"]),
        ({}, [[0, 0], [1, 1]], ["body"]),
        ({"scale": 17}, {"start": [0, 0], "end": [1, 1]}, ["query", "scale"]),
    ],
)
def test_interpolate_bad_input_is_a_422_naming_the_field(client, params, body, loc) -> None:
    assert loc in error_locs(post_json(client, "/interpolate", body, **params))


def test_interpolate_one_image_missing_is_a_422_naming_it(client, digit_png) -> None:
    r = client.post("/interpolate", files={"start": ("a.png", digit_png)})
    assert error_locs(r) == [["body", "end"]]
    r = client.post("/interpolate", files={"other": ("a.png", digit_png)})
    assert error_locs(r) == [["body", "start"], ["body", "end"]]
    r = client.post("/interpolate", files={"start": (None, "text"), "end": ("b.png", digit_png)})
    assert error_locs(r) == [["body", "start"]]


def test_interpolate_other_failures(client, digit_png) -> None:
    r = client.post("/interpolate", content=b"{}", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "detail" in r.json()
    r = client.post("/interpolate", content=b"", headers={"content-type": "application/json"})
    assert error_locs(r) == [["body"]]
    r = client.post("/interpolate", content=b"{nope", headers={"content-type": "application/json"})
    assert error_locs(r) == [["body"]]
    blank = png_bytes(np.zeros((28, 28), np.uint8))
    r = client.post("/interpolate", files={"start": ("a", digit_png), "end": ("b", blank)})
    assert r.status_code == 422 and "no digit" in r.json()["detail"]
    r = post_json(client, "/interpolate", {"start": [0, 0], "end": [1, 1]}, model="nope")
    assert r.status_code == 404


# --- GET /manifold ----------------------------------------------------------------------


@pytest.mark.parametrize("model", ["vae", "ae"])
def test_manifold_json_order_shape_and_quantiles(client, model) -> None:
    norm = pytest.importorskip("scipy.stats").norm
    r = client.get("/manifold", params={"model": model, "n": 4, "format": "json"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["n"] == 4 and body["dims"] == [0, 1] and body["base"] == [0.0, 0.0]
    np.testing.assert_allclose(body["p"], np.linspace(0.05, 0.95, 4))
    np.testing.assert_allclose(body["axis"], norm.ppf(np.linspace(0.05, 0.95, 4)), atol=1e-12)
    z = np.asarray(body["z"])
    assert z.shape == (4, 4, 2) and len(body["images"]) == 16
    axis = np.asarray(body["axis"], np.float32)
    for r_ in range(4):
        for c in range(4):
            assert z[r_, c].tolist() == [axis[c], axis[3 - r_]]
    # each cell is /decode of its z, row-major
    decoded = client.post(
        "/decode", params={"model": model, "format": "json"}, json={"z": z.reshape(16, 2).tolist()}
    ).json()
    assert decoded["images"] == body["images"]
    assert (model == "ae") == (body["note"] is not None)


def test_manifold_png_is_the_default_20x20_grid(client) -> None:
    r = client.get("/manifold")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    side = 20 * CELL + 19 * 2
    picture = gray(r.content)
    assert picture.shape == (side, side)
    cells = client.get("/manifold", params={"format": "json"}).json()["images"]
    np.testing.assert_array_equal(picture[:CELL, :CELL], b64_gray(cells[0]))  # top left
    np.testing.assert_array_equal(picture[-CELL:, -CELL:], b64_gray(cells[-1]))  # bottom right
    assert gray(client.get("/manifold", params={"n": 3, "scale": 3}).content).shape == (
        3 * 3 * CELL + 4,
        3 * 3 * CELL + 4,
    )


def test_manifold_range(client) -> None:
    norm = pytest.importorskip("scipy.stats").norm
    body = client.get(
        "/manifold", params={"n": 5, "p_min": 0.001, "p_max": 0.6, "format": "json"}
    ).json()
    np.testing.assert_allclose(body["axis"], norm.ppf(np.linspace(0.001, 0.6, 5)), atol=1e-12)


@pytest.fixture(scope="module")
def client3(tmp_path_factory):
    """A tiny VAE with z_dim = 3."""
    from harness.models import export_tiny_model

    root = tmp_path_factory.mktemp("z3")
    export_tiny_model(root / "vae", "vae", z_dim=3)
    with make_client(root) as test_client:
        yield test_client


def test_manifold_over_chosen_dimensions(client3) -> None:
    body = client3.get(
        "/manifold", params={"n": 3, "dims": "2,0", "base": "0.5,-0.25,7", "format": "json"}
    ).json()
    z = np.asarray(body["z"])
    axis = np.asarray(body["axis"], np.float32)
    assert z.shape == (3, 3, 3) and body["dims"] == [2, 0]
    np.testing.assert_array_equal(z[..., 1], np.float32(-0.25))
    np.testing.assert_array_equal(z[0, :, 2], axis)
    np.testing.assert_array_equal(z[:, 0, 0], axis[::-1])
    assert body["base"] == [0.5, -0.25, 7.0]
    default = client3.get("/manifold", params={"n": 2, "format": "json"}).json()
    assert np.asarray(default["z"])[..., 2].tolist() == [[0.0, 0.0], [0.0, 0.0]]
    r = client3.post("/interpolate", json={"start": [0, 0, 1], "end": [1, 0, 0]})
    assert r.status_code == 200


@pytest.mark.parametrize(
    ("params", "loc"),
    [
        ({"n": 1}, ["query", "n"]),
        ({"n": 31}, ["query", "n"]),
        ({"p_min": 0}, ["query", "p_min"]),
        ({"p_max": 1}, ["query", "p_max"]),
        ({"p_min": "nan"}, ["query", "p_min"]),
        ({"p_min": 0.6, "p_max": 0.4}, ["query", "p_max"]),
        ({"dims": "0,0"}, ["query", "dims"]),
        ({"dims": "0,2"}, ["query", "dims"]),
        ({"dims": "0;1"}, ["query", "dims"]),
        ({"dims": "-1,0"}, ["query", "dims"]),
        ({"base": "1"}, ["query", "base"]),
        ({"base": "1,x"}, ["query", "base"]),
        ({"base": "1,nan"}, ["query", "base"]),
        ({"base": "1,1e5"}, ["query", "base"]),
        ({"n": 30, "scale": 16}, ["query", "scale"]),
    ],
)
def test_manifold_bad_input_is_a_422_naming_the_field(client, params, loc) -> None:
    assert loc in error_locs(client.get("/manifold", params=params))


def test_openapi_documents_the_bodies(client) -> None:
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/interpolate"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert set(body["application/json"]["schema"]["properties"]) == {"start", "end"}
    assert body["multipart/form-data"]["schema"]["required"] == ["start", "end"]
    for path in ("/interpolate", "/manifold"):
        method = "post" if path == "/interpolate" else "get"
        responses = spec["paths"][path][method]["responses"]
        assert {"image/png", "application/json"} <= set(responses["200"]["content"])
        assert "422" in responses
