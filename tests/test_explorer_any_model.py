"""The explorer with models other than the book's 1x28x28 digits in 2-D (issue #15), in a real
headless Chromium against `python -m service` (the machinery of tests/test_page.py).

Beside a tiny digit VAE (`vae`, the default) the server serves `rgb` (3x32x32, z_dim 8, with
class names and a fitted prior; its latent points carry a principal plane), `tall` (1x36x20,
z_dim 4, its plane removed: the page falls back to z1, z2) and `line` (z_dim 1). Screenshots go
to the test's tmp dir and to artifacts/screenshots/any-model/ (git-ignored); the paths are
printed.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from test_page import (
    CHROMIUM,
    REPO,
    WAIT_MS,
    Session,
    _skip_reason,
    chromium_browser,
    serve,
)

pytestmark = pytest.mark.browser
CLASS_NAMES = [f"class-{i}" for i in range(10)]
SHOTS = REPO / "artifacts" / "screenshots" / "any-model"


@pytest.fixture(scope="module")
def any_models(tmp_path_factory) -> Path:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    from harness.models import export_tiny_model

    root = tmp_path_factory.mktemp("any-models")
    export_tiny_model(root / "vae", "vae")
    # a fitted prior with per-label fits (the class names name them); the others have none
    export_tiny_model(
        root / "rgb", "vae", z_dim=8, shape=(3, 32, 32), prior=True, label_names=CLASS_NAMES
    )
    export_tiny_model(root / "tall", "vae", z_dim=4, shape=(1, 36, 20))
    points = json.loads((root / "tall" / "latent_points.json").read_text())
    del points["plane"]  # a z_dim > 2 model exported before planes: the fallback
    (root / "tall" / "latent_points.json").write_text(json.dumps(points))
    export_tiny_model(root / "line", "vae", z_dim=1)
    return root


@pytest.fixture(scope="module")
def server(any_models: Path, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("any-model-server") / "server.log"
    with serve(any_models, log_path, VAE_WORKERS="1") as base:
        yield base


@pytest.fixture(scope="module")
def api(server: str):
    with httpx.Client(base_url=server, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def browser(server: str):
    assert CHROMIUM.exists()
    with chromium_browser() as chromium:
        yield chromium


@pytest.fixture
def session(browser, server):
    s = Session(browser, server)
    yield s
    s.close()
    assert not s.errors, s.errors


def shot(page, tmp_path: Path, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    (SHOTS / path.name).write_bytes(path.read_bytes())
    print(f"screenshot: {path} (and {SHOTS / path.name})")
    return path


def choose(session: Session, name: str, projection: str) -> None:
    session.page.click(f"label[for=model-{name}]")
    session.wait(
        "([n, p]) => explorer.maps()[0].model === n &&"
        " document.getElementById('map').dataset.projection === p",
        [name, projection],
    )


def decode_bodies(session: Session) -> list[list[list[float]]]:
    return [json.loads(r.post_data)["z"] for r in session.requests if "/decode?" in r.url]


def hover_and_decode(session: Session, model: str, fx: float, fy: float) -> list[float]:
    """Hover the main map at (fx, fy) of its plot; wait for `model`'s decode to be shown."""
    session.page.mouse.move(*session.map_point("#map", fx, fy))
    session.wait(
        "(m) => { const img = document.getElementById('probe-img');"
        " return explorer.probeIdle() && img.dataset.model === m && img.complete"
        " && img.naturalWidth > 0; }",
        model,
    )
    return json.loads(session.page.get_attribute("#probe-img", "data-z"))


def shown_rgb(session: Session, selector: str) -> np.ndarray:
    """An <img> as Chromium decoded it: (H, W, 3)."""
    data = session.js(
        """(sel) => {
          const img = document.querySelector(sel);
          const c = document.createElement('canvas');
          c.width = img.naturalWidth; c.height = img.naturalHeight;
          const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
          return { w: c.width, h: c.height,
                   d: Array.from(ctx.getImageData(0, 0, c.width, c.height).data) };
        }""",
        selector,
    )
    return np.asarray(data["d"], np.uint8).reshape(data["h"], data["w"], 4)[..., :3]


def test_model_picker_lists_every_served_model(session, api) -> None:
    session.open()
    served = [m["name"] for m in api.get("/models").json()["models"]]
    listed = session.js("[...document.querySelectorAll('input[name=model]')].map((i) => i.value)")
    assert sorted(listed) == sorted(served) and len(served) == 4
    assert listed[0] == "vae"  # the default first
    assert session.page.is_checked("#model-vae")
    # the default digit model: as before, z1 and z2
    assert session.js("explorer.maps()[0].axisLabels()") == ["z₁", "z₂"]
    assert session.page.get_attribute("#map", "data-projection") == "dims"


def test_rgb_model_on_its_principal_plane(session, api, any_models, tmp_path) -> None:
    session.open()
    page = session.page
    choose(session, "rgb", "plane")
    points = json.loads((any_models / "rgb" / "latent_points.json").read_text())
    plane = points["plane"]
    origin, axes = np.asarray(plane["origin"]), np.asarray(plane["axes"])
    # axes labelled with the principal components and their shares of the variance
    labels = session.js("explorer.maps()[0].axisLabels()")
    assert labels == [
        f"PC{k + 1} ({round(e * 100)}% of variance)" for k, e in enumerate(plane["explained"])
    ]
    info = page.inner_text("#model-info")
    assert "RGB 32\u00d732" in info and "z_dim 8" in info and "principal plane" in info
    # the held-out points drawn at u, v = (z - origin) . axes
    uv = np.asarray(session.js("explorer.maps()[0].uv"))
    np.testing.assert_allclose(uv, (np.asarray(points["z"]) - origin) @ axes.T, atol=1e-9)
    coloured = session.js(
        "(() => { const c = document.getElementById('map');"
        " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] !== d[i + 1]) n++;"
        " return n; })()"
    )
    assert coloured > 50, "no coloured points on the map"
    # the legend names the classes
    legend = page.locator("#legend .legend-item").all_inner_texts()
    assert legend == CLASS_NAMES
    assert "class-3" in page.get_attribute("#legend .legend-item >> nth=3", "title")
    # hover: decodes z = origin + u a1 + v a2, 8 numbers, into a 32x32 image shown as sent
    before = len(decode_bodies(session))
    z = hover_and_decode(session, "rgb", 0.3, 0.65)
    cursor = session.js("explorer.maps()[0].cursor")
    np.testing.assert_allclose(z, origin + cursor[0] * axes[0] + cursor[1] * axes[1], atol=1e-9)
    sent = decode_bodies(session)[before:]
    assert sent and all(len(vector) == 8 for body in sent for vector in body)
    assert sent[-1] == [z]
    size = session.js(
        "(() => { const i = document.getElementById('probe-img');"
        " return [i.naturalWidth, i.naturalHeight, i.clientWidth, i.clientHeight]; })()"
    )
    assert size[:2] == [32, 32] and size[2] == size[3]
    direct = api.post("/decode", params={"model": "rgb"}, json={"z": [z]}).content
    expected = np.asarray(Image.open(io.BytesIO(direct)).convert("RGB"))
    assert np.array_equal(shown_rgb(session, "#probe-img"), expected)
    assert "PC1" in page.inner_text("#probe-z")
    # click: pins an 8-D point
    page.mouse.click(*session.map_point("#map", 0.7, 0.3))
    page.wait_for_selector("#pins li img[src]")
    assert len(session.js("explorer.state.pins[0].z")) == 8
    assert session.js("document.documentElement.scrollWidth <= window.innerWidth")
    path = shot(page, tmp_path, "rgb-plane")
    assert path.stat().st_size > 10_000

    # interpolation between two map points: 8-D ends
    page.click("label[for=view-interp]")
    page.wait_for_selector("#interp:not([hidden])")
    page.mouse.click(*session.map_point("#map", 0.2, 0.75))
    page.mouse.click(*session.map_point("#map", 0.8, 0.3))
    session.wait("explorer.analysis.interp.result?.model === 'rgb'")
    bodies = [json.loads(r.post_data) for r in session.requests if "/interpolate?" in r.url]
    assert bodies and all(len(b["start"]) == len(b["end"]) == 8 for b in bodies)
    session.wait("[...document.querySelectorAll('.strip img')].every((i) => i.complete)")
    assert session.js("document.querySelector('#strip-linear img').naturalWidth") == 64
    shot(page, tmp_path, "rgb-interpolate")

    # the manifold: 400 decodes on the plane, z = origin + q_c a1 + q_r a2
    before = len(decode_bodies(session))
    page.click("label[for=view-manifold]")
    page.wait_for_selector("#map[data-ready=manifold]", timeout=WAIT_MS)
    grid = [v for body in decode_bodies(session)[before:] if len(body) > 1 for v in body]
    assert len(grid) == 400 and all(len(v) == 8 for v in grid)
    q = np.asarray(session.js("explorer.manifoldAxis()"))
    expected = np.asarray(sorted(tuple(origin + a * axes[0] + b * axes[1]) for a in q for b in q))
    np.testing.assert_allclose(np.asarray(sorted(map(tuple, grid))), expected, atol=1e-9)
    shot(page, tmp_path, "rgb-manifold")


def test_rgb_model_decodes_and_reconstructs_in_colour(session, api, tmp_path) -> None:
    """The decoded RGB PNGs' colours reach the page (nothing converts them to grey), and an
    uploaded colour image is encoded to an 8-D mean drawn on the plane."""
    session.open()
    page = session.page
    choose(session, "rgb", "plane")
    z = hover_and_decode(session, "rgb", 0.5, 0.5)
    decoded = api.post("/decode", params={"model": "rgb"}, json={"z": [z]})
    direct = Image.open(io.BytesIO(decoded.content))
    assert direct.mode == "RGB", f"the server decodes the 3-channel model to {direct.mode}"
    shown = shown_rgb(session, "#probe-img").astype(int)
    assert np.array_equal(shown, np.asarray(direct))
    assert np.abs(shown[..., 0] - shown[..., 1]).max() > 0, "the page shows grey"
    # an uploaded colour image (48x40): the 32x32 input it became, its reconstruction, mu
    rng = np.random.default_rng(1)
    picture = np.zeros((40, 48, 3), np.uint8)
    picture[..., 0] = np.linspace(0, 255, 48)[None, :]
    picture[..., 2] = np.linspace(255, 0, 40)[:, None]
    picture[10:30, 12:36, 1] = rng.integers(100, 255, (20, 24))
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, "PNG")
    page.set_input_files(
        "#file",
        files=[{"name": "colour.png", "mimeType": "image/png", "buffer": buffer.getvalue()}],
    )
    session.wait("explorer.state.result?.model === 'rgb'")
    session.wait("['seen', 'recon'].every((id) => document.getElementById(id).complete)")
    for selector in ("#seen", "#recon"):
        assert session.js(f"document.querySelector('{selector}').naturalWidth") == 32
    seen = shown_rgb(session, "#seen").astype(int)
    assert np.abs(seen[..., 0] - seen[..., 2]).max() > 50, "the input shows no colour"
    mu = session.js("explorer.state.result.mu")
    assert len(mu) == 8
    assert session.js("explorer.maps()[0].encoding.mu.length") == 8
    assert len(page.inner_text("#mu").split(",")) == 8
    shot(page, tmp_path, "rgb-upload")


def test_fallbacks_without_a_plane_and_for_one_dimension(session, tmp_path) -> None:
    session.open()
    page = session.page
    # z_dim 4 without a plane: z1, z2, the other dimensions at 0, and the page says so
    choose(session, "tall", "dims")
    assert session.js("explorer.maps()[0].axisLabels()") == ["z₁", "z₂"]
    info = page.inner_text("#model-info")
    assert "no principal plane" in info and "other dimensions at 0" in info
    assert "20\u00d736" in info  # W x H
    z = hover_and_decode(session, "tall", 0.3, 0.3)
    assert len(z) == 4 and z[2:] == [0, 0]
    # a non-square image keeps its shape: 20 wide, 36 high, and so is its box
    size = session.js(
        "(() => { const i = document.getElementById('probe-img');"
        " return [i.naturalWidth, i.naturalHeight, i.clientWidth, i.clientHeight]; })()"
    )
    assert size[:2] == [20, 36]
    assert size[2] / size[3] == pytest.approx(20 / 36, abs=0.02)
    shot(page, tmp_path, "tall-fallback")
    # z_dim 1: one axis; the points sit on it, decodes send one number
    choose(session, "line", "line")
    uv = np.asarray(session.js("explorer.maps()[0].uv"))
    assert uv.shape == (10, 2) and not uv[:, 1].any()
    assert "z_dim 1" in page.inner_text("#model-info")
    z = hover_and_decode(session, "line", 0.8, 0.2)
    assert len(z) == 1
    assert session.js("explorer.maps()[0].cursor[1]") == 0
    assert decode_bodies(session)[-1] == [z]
    shot(page, tmp_path, "line-1d")


def test_fitted_prior_on_the_principal_plane_and_by_class_names(session, api, tmp_path) -> None:
    """z_dim 8 with a prior: each component drawn as its marginal on the map's plane (mean
    and covariance projected on PC1, PC2); the class panel's rows carry the class names."""
    session.open()
    page = session.page
    choose(session, "rgb", "plane")
    page.wait_for_selector("#map[data-prior=drawn]", timeout=WAIT_MS)
    plane = session.js("explorer.maps()[0].proj")
    origin, axes = np.asarray(plane["origin"]), np.asarray(plane["axes"])
    prior = api.get("/models/rgb/prior").json()
    drawn = session.js("explorer.maps()[0].priorEllipses")
    assert len(drawn) == len(prior["components"])
    for ellipse, component in zip(drawn, prior["components"], strict=True):
        cov = np.asarray(component["covariance"])
        np.testing.assert_allclose(
            ellipse["mean"], (np.asarray(component["mean"]) - origin) @ axes.T, atol=1e-9
        )
        on_plane = axes @ cov @ axes.T
        np.testing.assert_allclose(ellipse["covariance"], on_plane, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(
            ellipse["sd"], np.sqrt(np.linalg.eigvalsh(on_plane))[::-1], rtol=1e-6
        )
    assert "projected on the map's plane" in page.inner_text("#prior-toggle-note")
    # sampling: the picker offers the fitted prior, the classes by name
    assert page.is_enabled("#prior-fitted")
    assert page.locator("#sample-label option").all_inner_texts() == ["any", *CLASS_NAMES]
    page.click("#class-go")
    page.wait_for_selector("#class-panel[data-ready=true]", timeout=WAIT_MS)
    names = page.locator("#class-rows .class-name b").all_inner_texts()
    assert names == CLASS_NAMES
    cells = page.locator("#class-rows .class-row >> nth=0").locator("img")
    assert cells.count() == 8
    session.wait("[...document.querySelectorAll('#class-rows img')].every((i) => i.complete)")
    assert session.js("document.querySelector('#class-rows img').naturalWidth") == 64  # 32 x 2
    shot(page, tmp_path, "rgb-prior")


def test_without_a_fitted_prior_the_controls_say_why(session, api) -> None:
    """`tall` has no prior: N(0, I) only, no classes, no ellipses, each with its reason."""
    session.open()
    page = session.page
    assert api.get("/models/tall").json()["priors"]["available"] == ["normal"]
    choose(session, "tall", "dims")
    assert page.get_attribute("#map", "data-prior") == "none"
    assert page.is_disabled("#prior-fitted") and page.is_checked("#prior-normal")
    assert "no fitted prior" in page.get_attribute("label[for=prior-fitted]", "title")
    assert "no fitted prior" in page.inner_text("#prior-note")
    assert page.is_disabled("#sample-label")
    assert page.is_disabled("#prior-toggle")
    assert page.inner_text("#prior-toggle-note") == "this model has no fitted prior"
    assert page.is_disabled("#class-go")
    assert "no fitted prior" in page.inner_text("#class-reason")
    # sampling still works, from N(0, I)
    page.click("#sample-go")
    page.wait_for_selector("#samples[data-prior=normal]", timeout=WAIT_MS)
    assert "prior=normal" in page.get_attribute("#samples", "data-query")
    assert not any("/prior" in r.url for r in session.requests if "/models/tall" in r.url)
