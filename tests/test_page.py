"""The latent-space explorer (GET /, service/static/): served as it should be, and driven in a
real headless Chromium (Playwright) against `python -m service` on a loopback port.

The browser tests skip, saying why, without Playwright or /usr/bin/chromium (CI installs both).
Screenshots go to artifacts/screenshots/<model dir name>/ (git-ignored); the paths are printed.
EXPLORER_MODEL_DIR=models runs the browser tests against another model folder (the shipped
models, say) instead of the tiny untrained test models.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import posixpath
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import free_port, stop, wait_ready
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
STATIC = REPO / "service" / "static"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PAGE_BUDGET = 300_000  # bytes: the page, its assets and the data it loads at start
START_TIMEOUT = 60.0
WAIT_MS = 20_000
MANIFOLD_P = np.linspace(0.05, 0.95, 20)


# --------------------------------------------------------------------------- no browser


def test_index_is_the_explorer(client) -> None:
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    html = r.text
    needles = ('id="draw"', 'id="map"', '<script type="module" src="static/app.js">')
    for needle in (*needles, 'href="static/style.css"'):
        assert needle in html


IMPORT = re.compile(r'^import (?:\{[^}]*\} from )?"(\./[^"]+)";$', re.MULTILINE)


def _assets(html: str) -> list[str]:
    """What the page loads: its src/href assets and, from each module, what it imports
    (relative `import ... from "./x.js"`), as paths under static/."""
    found = re.findall(r'(?:src|href)="(static/[^"]+)"', html)
    todo = [a for a in found if a.endswith(".js")]
    while todo:
        module = todo.pop()
        text = (STATIC / module.removeprefix("static/")).read_text(encoding="utf-8")
        for target in IMPORT.findall(text):
            path = posixpath.normpath(posixpath.join(posixpath.dirname(module), target))
            if path not in found:
                found.append(path)
                todo.append(path)
    return found


EXPECTED_TYPES = {".js": ("text/javascript", "application/javascript"), ".css": ("text/css",)}


def test_static_assets_are_served_with_their_types(client) -> None:
    """Every asset the page loads, modules included, is served with its type (a browser runs
    a module script only when served as JavaScript), and nothing in static/ is left unused."""
    assets = _assets(client.get("/").text)
    assert {"static/app.js", "static/style.css", "static/js/map.js"} <= set(assets)
    for asset in assets:
        r = client.get("/" + asset)
        assert r.status_code == 200, asset
        kind = r.headers["content-type"].split(";")[0].strip()
        assert kind in EXPECTED_TYPES[Path(asset).suffix], (asset, kind)
        assert r.content == (STATIC / asset.removeprefix("static/")).read_bytes()
    on_disk = {
        "static/" + p.relative_to(STATIC).as_posix()
        for p in STATIC.rglob("*")
        if p.is_file() and p.name != "index.html"
    }
    assert on_disk == set(assets), on_disk ^ set(assets)


def test_page_and_its_start_up_data_weigh_under_300_kb(client) -> None:
    """What a first visit downloads: the page, its assets, /models and every model's latent
    points (the VAE vs AE view loads both)."""
    html = client.get("/")
    sizes = {"/": len(html.content)}
    for asset in _assets(html.text):
        sizes[asset] = len(client.get("/" + asset).content)
    models = client.get("/models")
    sizes["/models"] = len(models.content)
    for info in models.json()["models"]:
        if info.get("latent_points"):
            path = f"/models/{info['name']}/latent-points"
            sizes[path] = len(client.get(path).content)
    total = sum(sizes.values())
    print(f"page weight: {total} bytes {sizes}")
    assert total < PAGE_BUDGET, sizes


def test_static_files_make_no_external_requests() -> None:
    """No CDN, no web fonts, no analytics: nothing in service/static names another host."""
    for path in (p for p in STATIC.rglob("*") if p.is_file()):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.IGNORECASE), path
        assert "@import" not in text and "import(" not in text, path


# --------------------------------------------------------------------------- the browser

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None


def _skip_reason() -> str | None:
    if sync_playwright is None:
        return "Playwright for Python is not installed (pip install -e '.[dev]')"
    if not CHROMIUM.exists():
        return f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)"
    return None


def with_typicality(model_dir: Path, out: Path) -> Path:
    """A copy of the tiny models with a held-out reference (metadata `typicality`), so the
    page's typicality gauge has something to show."""
    import shutil

    from conftest import digit_array

    from training.typicality import add_typicality

    shutil.copytree(model_dir, out, dirs_exist_ok=True)
    images = np.stack([np.roll(digit_array(), s, axis=1) for s in range(-6, 7)])
    for folder in sorted(p for p in out.iterdir() if (p / "metadata.json").is_file()):
        add_typicality(folder, images[:, None] / 255.0, "13 shifted synthetic digits (test)", k=8)
    return out


@pytest.fixture(scope="module")
def explorer_models(tmp_path_factory) -> Path:
    chosen = os.environ.get("EXPLORER_MODEL_DIR")
    if chosen:
        return Path(chosen).resolve()
    from harness.models import export_tiny_model

    # the book's pair, each with a fitted prior (per-label fits): the VAE samples N(0, I) by
    # default, the AE its fitted prior (it has no other)
    tiny = tmp_path_factory.mktemp("tiny-with-priors")
    export_tiny_model(tiny / "vae", "vae", prior=True)
    export_tiny_model(tiny / "ae", "ae", prior=True, prior_default="fitted")
    return with_typicality(tiny, tmp_path_factory.mktemp("explorer-models"))


@contextlib.contextmanager
def serve(model_dir: Path, log_path: Path, **env: str) -> Iterator[str]:
    """`python -m service` on a free loopback port serving `model_dir`; yields its base URL
    (shared with tests/test_explorer_any_model.py)."""
    port = free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env={**os.environ, "VAE_MODEL_DIR": str(model_dir), "VAE_ACCESS_LOG": "false", **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(process, base, log_path, START_TIMEOUT)
            yield base
        finally:
            stop(process)


@contextlib.contextmanager
def chromium_browser() -> Iterator[Any]:
    """Headless Chromium (Debian's), closed afterwards."""
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server(explorer_models: Path, tmp_path_factory) -> Iterator[str]:
    """`python -m service` on a free loopback port; yields its base URL."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    with serve(explorer_models, tmp_path_factory.mktemp("explorer-server") / "server.log") as base:
        yield base


@pytest.fixture(scope="module")
def api(server: str):
    with httpx.Client(base_url=server, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def browser(server: str):
    with chromium_browser() as chromium:
        yield chromium


@pytest.fixture(scope="module")
def shots(explorer_models: Path) -> Path:
    name = "tiny-models" if "EXPLORER_MODEL_DIR" not in os.environ else explorer_models.name
    folder = REPO / "artifacts" / "screenshots" / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def screenshot(page, folder: Path, name: str) -> None:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


class Session:
    """One page of the explorer, with what it asked for and what went wrong."""

    def __init__(self, browser, base: str, **context) -> None:
        context = {"viewport": {"width": 1360, "height": 900}, **context}
        self.context = browser.new_context(**context)
        self.page = self.context.new_page()
        self.base = base
        self.errors: list[str] = []
        self.requests: list = []
        self.responses: list = []
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on("console", self._console)
        self.page.on("request", lambda r: self.requests.append(r))
        self.page.on("response", lambda r: self.responses.append(r))

    def _console(self, message) -> None:
        if message.type == "error":
            self.errors.append(f"console error: {message.text}")

    def open(self) -> None:
        self.page.goto(self.base + "/")
        self.page.wait_for_selector("body[data-ready=true]", timeout=WAIT_MS)

    def js(self, expression: str, arg=None):
        return self.page.evaluate(expression, arg)

    def wait(self, expression: str, arg=None) -> None:
        self.page.wait_for_function(expression, arg=arg, timeout=WAIT_MS)

    def box(self, selector: str) -> dict:
        box = self.page.locator(selector).bounding_box()
        assert box, f"{selector} is not visible"
        return box

    def map_point(self, selector: str, fx: float, fy: float) -> tuple[float, float]:
        """Page coordinates of the point at fractions (fx, fy) of a map's plot area."""
        b = self.box(selector)
        plot = self.js(
            "(sel) => { const m = explorer.maps().find((m) => '#' + m.canvas.id === sel);"
            " return m.plot(); }",
            selector,
        )
        return (
            b["x"] + plot["left"] + fx * plot["side"],
            b["y"] + plot["top"] + fy * plot["side"],
        )

    def image_pixels(self, selector: str) -> list[int]:
        """The grey levels of an <img> as the page shows it (decoded by Chromium)."""
        return self.js(
            """(sel) => {
              const img = document.querySelector(sel);
              const c = document.createElement('canvas');
              c.width = img.naturalWidth; c.height = img.naturalHeight;
              const ctx = c.getContext('2d');
              ctx.drawImage(img, 0, 0);
              const d = ctx.getImageData(0, 0, c.width, c.height).data;
              return Array.from(d.filter((_, i) => i % 4 === 0));
            }""",
            selector,
        )

    def draw_stroke(self) -> None:
        """A '7' on the drawing pad with the mouse: two strokes."""
        b = self.box("#draw")
        at = lambda fx, fy: (b["x"] + fx * b["width"], b["y"] + fy * b["height"])  # noqa: E731
        mouse = self.page.mouse
        for stroke in ([(0.3, 0.25), (0.7, 0.25), (0.42, 0.8)], [(0.4, 0.5), (0.62, 0.5)]):
            mouse.move(*at(*stroke[0]))
            mouse.down()
            for point in stroke[1:]:
                mouse.move(*at(*point), steps=12)
            mouse.up()

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def session(browser, server):
    s = Session(browser, server)
    yield s
    s.close()
    assert not s.errors, s.errors


def _shown_vector(text: str) -> list[float]:
    """'(0.123, -1.500)' -> [0.123, -1.5]"""
    assert re.fullmatch(r"\((-?\d+\.\d{3})(, -?\d+\.\d{3})*\)", text), text
    return [float(v) for v in text.strip("()").split(", ")]


def _png_gray(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"))


@pytest.mark.browser
def test_page_loads_fast_and_draws_the_map(session, shots) -> None:
    session.open()
    page = session.page
    # every request stayed on the server; the bytes fit the budget
    hosts = {re.sub(r"^https?://([^/]+)/.*$", r"\1", r.url) for r in session.requests}
    assert hosts == {session.base.split("//")[1]}, hosts
    page.wait_for_load_state("networkidle")
    weight = sum(len(r.body()) for r in session.responses if r.status == 200)
    print(f"page weight in the browser: {weight} bytes over {len(session.responses)} responses")
    assert weight < PAGE_BUDGET
    # the map: points drawn, a legend with one entry per digit present, axes in latent units
    points = session.js("explorer.state.points.get(explorer.state.model)")
    if points and points.get("labels"):
        legend = page.locator("#legend li").all_inner_texts()
        digits = sorted(set(points["labels"]))
        assert legend[: len(digits)] == [str(d) for d in digits]
        first = page.locator("#legend .legend-item").first
        first.click()  # highlights that digit's points
        assert first.get_attribute("aria-pressed") == "true"
        first.click()
        assert first.get_attribute("aria-pressed") == "false"
    drawn = session.js(
        "(() => { const c = document.getElementById('map');"
        " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] !== d[i + 1]) n++;"
        " return n; })()"
    )
    if points:
        assert drawn > 50, "no coloured points on the map"
    assert session.js("document.documentElement.scrollWidth <= window.innerWidth")
    screenshot(page, shots, "01-load")


@pytest.mark.browser
def test_drawing_shows_input_reconstruction_and_latent_point(session, api, shots) -> None:
    session.open()
    session.draw_stroke()
    page = session.page
    session.wait("explorer.state.result !== null")
    page.wait_for_selector("#result:not([hidden])")
    session.wait("document.getElementById('recon').complete")
    state = session.js(
        "({ model: explorer.state.model, result: explorer.state.result,"
        "   sent: explorer.state.inputBase64 })"
    )
    result = state["result"]
    # the page shows the input the model saw and its reconstruction, both 28x28
    for selector in ("#seen", "#recon"):
        assert session.js(f"document.querySelector('{selector}').naturalWidth") == 28
    seen = session.image_pixels("#seen")
    assert max(seen) > 200, "the preprocessed input shows no ink"
    # mu from the page == mu from /encode of the exact bytes the page sent
    sent = base64.b64decode(state["sent"])
    assert sent[:8] == b"\x89PNG\r\n\x1a\n"
    direct = api.post(
        "/encode", params={"model": state["model"]}, files={"file": ("d.png", sent, "image/png")}
    ).json()
    kind = "mu" if "mu" in direct else "z"
    page_code = result["mu"] if kind == "mu" else result["z"][0]
    np.testing.assert_allclose(page_code, direct[kind], rtol=0, atol=1e-6)
    # the numbers shown, to their 3 decimals
    np.testing.assert_allclose(_shown_vector(page.inner_text("#mu")), page_code, atol=5.1e-4)
    if kind == "mu":
        sigma = np.exp(0.5 * np.asarray(direct["log_var"]))
        np.testing.assert_allclose(_shown_vector(page.inner_text("#sigma")), sigma, atol=5.1e-4)
    # ... and lands on the map: the marker's dark ring is drawn where mu is
    ring = session.js(
        """(() => {
          const m = explorer.maps()[0];
          const e = m.encoding; const [x, y] = m.toPx(e.mu || e.z);
          const dpr = window.devicePixelRatio || 1;
          const px = m.ctx.getImageData(Math.round((x + 6) * dpr), Math.round(y * dpr), 1, 1).data;
          return { inside: x > 0 && y > 0 && x < m.size && y < m.size, px: Array.from(px) };
        })()"""
    )
    np.testing.assert_allclose(
        session.js("(explorer.maps()[0].encoding.mu || explorer.maps()[0].encoding.z)"),
        page_code,
    )
    if ring["inside"]:
        assert max(ring["px"][:3]) < 80, f"no marker ring at mu: {ring}"
    assert session.js("document.documentElement.scrollWidth <= window.innerWidth")
    screenshot(page, shots, "02-drawn")


@pytest.mark.browser
def test_uploaded_file_is_sent_as_is(session, api, digit_png) -> None:
    session.open()
    session.page.set_input_files(
        "#file", files=[{"name": "seven.png", "mimeType": "image/png", "buffer": digit_png}]
    )
    session.wait("explorer.state.result !== null")
    assert base64.b64decode(session.js("explorer.state.inputBase64")) == digit_png
    direct = api.post("/reconstruct", params={"format": "json"}, files={"file": digit_png}).json()
    result = session.js("explorer.state.result")
    assert result["input"] == direct["input"] and result["images"] == direct["images"]


@pytest.mark.browser
def test_map_hover_drag_click_and_keys_decode(session, api, shots) -> None:
    session.open()
    page = session.page
    mouse = page.mouse
    # hover: decodes the point under the pointer
    mouse.move(*session.map_point("#map", 0.1, 0.1))
    session.wait("explorer.state.decodes >= 1 && !!document.getElementById('probe-img').src")
    session.wait("document.getElementById('probe-img').complete")
    first_z = json.loads(page.get_attribute("#probe-img", "data-z"))
    first = session.image_pixels("#probe-img")
    # drag to the far corner: the decoded image follows
    mouse.down()
    mouse.move(*session.map_point("#map", 0.9, 0.9), steps=8)
    mouse.up()
    session.wait(
        "(z) => { const img = document.getElementById('probe-img');"
        " return img.complete && img.dataset.z !== JSON.stringify(z); }",
        first_z,
    )
    session.wait("explorer.probeIdle() && document.getElementById('probe-img').complete")
    last_z = json.loads(page.get_attribute("#probe-img", "data-z"))
    assert last_z[0] > first_z[0] and last_z[1] < first_z[1]  # right and down on the map
    assert session.image_pixels("#probe-img") != first, "the decoded image did not change"
    # the probe shows exactly what /decode gives for that z
    direct = api.post(
        "/decode", json={"z": [last_z]}, params={"model": session.js("explorer.state.model")}
    ).content
    assert np.array_equal(np.asarray(session.image_pixels("#probe-img")), _png_gray(direct).ravel())
    assert session.js("explorer.state.pins.length") == 0, "a drag must not pin"
    # click: pins the point
    mouse.click(*session.map_point("#map", 0.5, 0.3))
    page.wait_for_selector("#pins li img[src]")
    assert page.locator("#pins li").count() == 1
    # keyboard: focus the map, arrows move the probe, Enter pins
    page.focus("#map")
    before = json.loads(page.get_attribute("#probe-img", "data-z") or "null")
    for _ in range(3):
        page.keyboard.press("ArrowRight")
    page.keyboard.press("Shift+ArrowUp")
    session.wait(
        "(z) => document.getElementById('probe-img').dataset.z !== JSON.stringify(z)", before
    )
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelectorAll('#pins li img[src]').length === 2")
    pins = session.js("explorer.state.pins.map((p) => p.z)")
    assert pins[1][0] > pins[0][0] - 1e9  # both pinned, in order
    screenshot(page, shots, "03-map-probe-pins")
    page.keyboard.press("Delete")
    assert page.locator("#pins li").count() == 1


@pytest.mark.browser
def test_switching_models_reencodes_the_input(session, api, shots) -> None:
    session.open()
    names = session.js("explorer.state.models.map((m) => m.name)")
    if len(names) < 2:
        pytest.skip("needs two models")
    session.draw_stroke()
    session.wait("explorer.state.result !== null")
    first = session.js("explorer.state.model")
    other = next(n for n in names if n != first)
    session.page.click(f"label[for=model-{other}]")
    session.wait("(m) => explorer.state.result && explorer.state.result.model === m", other)
    sent = base64.b64decode(session.js("explorer.state.inputBase64"))
    direct = api.post(
        "/encode", params={"model": other}, files={"file": ("d.png", sent, "image/png")}
    ).json()
    result = session.js("explorer.state.result")
    if "z" in direct:  # a plain AE: z, no sigma
        np.testing.assert_allclose(result["z"][0], direct["z"], atol=1e-6)
        assert session.page.inner_text("#mu-label") == "z"
        assert session.page.is_hidden("#sigma")
    else:
        np.testing.assert_allclose(result["mu"], direct["mu"], atol=1e-6)
    assert session.js("explorer.maps()[0].model") == other
    assert session.page.is_checked(f"#model-{other}")
    screenshot(session.page, shots, f"04-model-{other}")


@pytest.mark.browser
def test_manifold_is_the_decoded_quantile_grid(session, shots) -> None:
    norm = pytest.importorskip("scipy.stats").norm

    session.open()
    axis = session.js("explorer.manifoldAxis()")
    np.testing.assert_allclose(axis, norm.ppf(MANIFOLD_P), atol=1e-6)
    session.page.click("label[for=view-manifold]")
    session.page.wait_for_selector("#map[data-ready=manifold]", timeout=WAIT_MS)
    decodes = [
        json.loads(r.post_data)["z"]
        for r in session.requests
        if "/decode?" in r.url and r.post_data
    ]
    grid = [z for chunk in decodes if len(chunk) > 1 for z in chunk]
    assert len(grid) == 400
    q = norm.ppf(MANIFOLD_P)
    expected = sorted((x, y) for y in q for x in q)
    np.testing.assert_allclose(sorted(tuple(z[:2]) for z in grid), expected, atol=1e-6)
    # every cell was drawn: the picture is not one flat colour
    spread = session.js(
        "(() => { const c = explorer.maps()[0].manifold.canvas;"
        " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " let lo = 255, hi = 0; for (let i = 0; i < d.length; i += 4) {"
        " lo = Math.min(lo, d[i]); hi = Math.max(hi, d[i]); } return hi - lo; })()"
    )
    assert spread > 10
    screenshot(session.page, shots, "05-manifold")


@pytest.mark.browser
def test_manifold_fits_a_smaller_max_batch(browser, server) -> None:
    """A server with VAE_MAX_BATCH under the page's chunk answers 422: the page splits."""
    s = Session(browser, server)
    try:
        sizes: list[int] = []

        def limit(route) -> None:
            count = len(json.loads(route.request.post_data)["z"])
            if count > 30:
                detail = [{"type": "value_error", "loc": ["body", "z"], "msg": "at most 30"}]
                route.fulfill(status=422, json={"detail": detail})
            else:
                sizes.append(count)
                route.continue_()

        s.page.route("**/decode?*", limit)
        s.open()
        s.page.click("label[for=view-manifold]")
        s.page.wait_for_selector("#map[data-ready=manifold]", timeout=WAIT_MS)
        assert sum(sizes) == 400 and max(sizes) <= 30
        unexpected = [e for e in s.errors if "status of 422" not in e]
        assert not unexpected, unexpected
    finally:
        s.close()


@pytest.mark.browser
def test_vae_and_ae_side_by_side(session, shots) -> None:
    session.open()
    kinds = session.js("explorer.state.models.map((m) => m.kind)")
    if not {"vae", "ae"} <= set(kinds):
        pytest.skip("needs a VAE and an AE")
    session.draw_stroke()
    session.wait("explorer.state.result !== null")
    page = session.page
    page.click("label[for=view-compare]")
    page.wait_for_selector("#map-a[data-ready=compare]", timeout=WAIT_MS)
    assert page.is_hidden("#single-view") and page.is_visible("#compare-view")
    models = session.js("explorer.maps().slice(1).map((m) => m.model)")
    kinds_shown = [
        session.js(f"explorer.state.models.find((m) => m.name === '{n}').kind") for n in models
    ]
    assert kinds_shown == ["vae", "ae"]
    # the input is placed on both maps
    session.wait("explorer.maps().slice(1).every((m) => m.encoding !== null)")
    for selector in ("#map-a", "#map-b"):
        assert session.box(selector)["width"] > 200
    # hovering the AE map decodes with the AE
    page.mouse.move(*session.map_point("#map-b", 0.4, 0.6))
    session.wait("(m) => document.getElementById('probe-img').dataset.model === m", models[1])
    assert session.js("document.documentElement.scrollWidth <= window.innerWidth")
    screenshot(page, shots, "06-vae-vs-ae")


@pytest.mark.browser
def test_sample_panel_shows_the_sample_grid(session, api) -> None:
    session.open()
    page = session.page
    page.fill("#sample-n", "9")
    page.fill("#sample-seed", "3")
    page.click("#sample-go")
    page.wait_for_selector("#samples:not([hidden])")
    session.wait("document.getElementById('samples').complete")
    shown = session.image_pixels("#samples")
    model = session.js("explorer.state.model")
    direct = api.get(
        "/sample", params={"model": model, "n": 9, "seed": 3, "temperature": 1, "scale": 2}
    ).content
    assert np.array_equal(np.asarray(shown), _png_gray(direct).ravel())
    assert session.js("document.getElementById('samples').naturalWidth") == 3 * 56 + 2 * 2


@pytest.mark.browser
def test_model_without_latent_points_still_explores(browser, server) -> None:
    """A model exported without latent points: the map has axes but no points; decoding works."""
    s = Session(browser, server)
    try:

        def strip(route) -> None:
            body = route.fetch().json()
            for info in body["models"]:
                info["latent_points"] = None
            route.fulfill(json=body)

        s.page.route("**/models", strip)
        s.open()
        assert not any("latent-points" in r.url for r in s.requests)
        assert s.page.locator("#legend li").count() == 0
        assert "no held-out" in s.page.inner_text("#model-info")
        s.page.mouse.move(*s.map_point("#map", 0.5, 0.5))
        s.wait("explorer.state.decodes >= 1")
        assert not s.errors, s.errors
    finally:
        s.close()


@pytest.mark.browser
def test_phone_screen_and_keyboard_only(browser, server, shots) -> None:
    """390x844, touch: nothing wider than the screen; the page works from the keyboard."""
    s = Session(
        browser,
        server,
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    try:
        s.open()
        page = s.page
        assert s.js("document.documentElement.scrollWidth") <= 390
        # keyboard only: Tab to the example button, Enter
        for _ in range(30):
            page.keyboard.press("Tab")
            if s.js("document.activeElement.id") == "example":
                break
        assert s.js("document.activeElement.id") == "example"
        page.keyboard.press("Enter")
        s.wait("explorer.state.result !== null")
        page.wait_for_selector("#result:not([hidden])")
        # a tap on the map pins (touch)
        page.locator("#map").scroll_into_view_if_needed()
        page.touchscreen.tap(*s.map_point("#map", 0.5, 0.5))
        page.wait_for_selector("#pins li")
        assert s.js("document.documentElement.scrollWidth") <= 390
        screenshot(page, shots, "07-phone")
        assert not s.errors, s.errors
    finally:
        s.close()


API_KEY = "explorer-test-key-5f1c9a"


@pytest.fixture(scope="module")
def keyed_server(explorer_models: Path, tmp_path_factory) -> str:
    """A server with VAE_API_KEYS set; yields its base URL."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    port = free_port()
    log_path = tmp_path_factory.mktemp("explorer-keyed") / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env={
                **os.environ,
                "VAE_MODEL_DIR": str(explorer_models),
                "VAE_ACCESS_LOG": "false",
                "VAE_WORKERS": "1",
                "VAE_API_KEYS": API_KEY,
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(process, base, log_path, START_TIMEOUT)
            yield base
        finally:
            stop(process)


@pytest.mark.browser
def test_page_asks_for_the_api_key_and_then_loads(browser, keyed_server, shots) -> None:
    """With keys on, the page itself loads, its first API call gets a 401, and a dialog asks
    for the key: a wrong one is asked again for, the right one is kept for the tab
    (sessionStorage), sent as a Bearer token, and the map loads."""
    s = Session(browser, keyed_server)
    try:
        page = s.page
        page.goto(keyed_server + "/")
        page.wait_for_selector("#key-dialog[open]", timeout=WAIT_MS)
        assert s.js("document.body.dataset.ready") is None
        assert "needs an API key" in page.locator("#key-note").inner_text()
        page.fill("#api-key", "not-the-key")
        page.click("#key-go")
        page.wait_for_function(
            "document.querySelector('#key-dialog[open] #key-note')?.textContent"
            ".includes('did not accept')",
            timeout=WAIT_MS,
        )
        screenshot(page, shots, "08-api-key")
        page.fill("#api-key", API_KEY)
        page.keyboard.press("Enter")
        page.wait_for_selector("body[data-ready=true]", timeout=WAIT_MS)
        assert s.js("sessionStorage.getItem('vae-api-key')") == API_KEY
        assert s.js("document.getElementById('key-dialog')") is None
        api_calls = [r for r in s.requests if "/models" in r.url]
        assert api_calls and api_calls[-1].headers.get("authorization") == f"Bearer {API_KEY}"
        # the explorer works: the example digit is encoded and shown
        page.click("#example")
        s.wait("explorer.state.result !== null")
        # a reload in the same tab asks for nothing
        page.reload()
        page.wait_for_selector("body[data-ready=true]", timeout=WAIT_MS)
        assert s.js("document.getElementById('key-dialog')") is None
        # the only errors were the refused requests themselves
        refused = [e for e in s.errors if "401" in e]
        assert s.errors == refused, s.errors
    finally:
        s.close()


# ------------------------------------------------------ js/interpolate.js, js/score.js


def _rgb_at(session, z: list[float]) -> list[int]:
    """The main map's canvas colour at latent point z."""
    return session.js(
        """(z) => {
          const m = explorer.maps()[0];
          const [x, y] = m.toPx(z);
          const d = window.devicePixelRatio || 1;
          return Array.from(m.ctx.getImageData(Math.round(x * d), Math.round(y * d), 1, 1).data);
        }""",
        z,
    )


@pytest.mark.browser
def test_interpolate_view_between_two_map_points(session, api, shots) -> None:
    session.open()
    page = session.page
    page.click("label[for=view-interp]")
    page.wait_for_selector("#interp:not([hidden])")
    page.mouse.click(*session.map_point("#map", 0.2, 0.75))
    page.mouse.click(*session.map_point("#map", 0.8, 0.3))
    session.wait("explorer.analysis.interp.result !== null")
    page.wait_for_selector("#map[data-ready=interp]", timeout=WAIT_MS)
    assert session.js("explorer.state.pins.length") == 0, "picking ends must not pin"
    result = session.js("explorer.analysis.interp.result")
    model = session.js("explorer.state.model")
    start, end = result["linear"]["z"][0], result["linear"]["z"][-1]
    assert start[0] < end[0] and start[1] < end[1]  # A lower left, B upper right
    # linear and slerp side by side: exactly what the API gives for those two points
    for method in ("linear", "slerp"):
        direct = api.post(
            "/interpolate",
            params={"model": model, "method": method, "steps": 10, "format": "json", "scale": 2},
            json={"start": start, "end": end},
        ).json()
        assert result[method]["images"] == direct["images"] and result[method]["z"] == direct["z"]
        assert page.locator(f"#strip-{method} img").count() == 10
    assert result["linear"]["z"] != result["slerp"]["z"]
    # the first cell is decode(A), the last decode(B)
    session.wait("[...document.querySelectorAll('.strip img')].every((i) => i.complete)")
    for selector, z in (
        ("#strip-linear img:first-child", start),
        ("#strip-slerp img:last-child", end),
    ):
        decoded = api.post("/decode", params={"model": model, "scale": 2}, json={"z": [z]}).content
        assert np.array_equal(
            np.asarray(session.image_pixels(selector)), _png_gray(decoded).ravel()
        ), selector
    # both paths are drawn on the map: accent dots on the line, blue dots on the arc
    red = _rgb_at(session, result["linear"]["z"][4])
    blue = _rgb_at(session, result["slerp"]["z"][5])
    assert red[0] > red[2] + 40 and red[0] > red[1] + 60, red
    assert blue[2] > blue[0] + 60, blue
    screenshot(page, shots, "08-interpolate")
    # fewer steps: both strips follow
    page.fill("#interp-steps", "5")
    page.dispatch_event("#interp-steps", "change")
    session.wait("explorer.analysis.interp.result && explorer.analysis.interp.result.steps === 5")
    assert page.locator("#strip-slerp img").count() == 5
    assert session.js("document.documentElement.scrollWidth <= window.innerWidth")


@pytest.mark.browser
def test_interpolate_between_two_drawn_digits(session, api) -> None:
    session.open()
    page = session.page
    page.click("label[for=view-interp]")
    session.draw_stroke()
    session.wait("explorer.state.result !== null && explorer.state.encodings.size > 0")
    first = base64.b64decode(session.js("explorer.state.inputBase64"))
    page.click("#interp-from-a")
    page.click("#clear")
    page.click("#example")
    session.wait(
        "(b) => explorer.state.inputBase64 && explorer.state.inputBase64 !== b",
        base64.b64encode(first).decode(),
    )
    session.wait("explorer.state.result !== null")
    second = base64.b64decode(session.js("explorer.state.inputBase64"))
    page.click("#interp-from-b")
    session.wait("explorer.analysis.interp.result !== null")
    result = session.js("explorer.analysis.interp.result")
    assert result["linear"]["endpoints"] == "images"
    sent = [r for r in session.requests if "/interpolate?" in r.url]
    assert len(sent) >= 2
    for request in sent[-2:]:  # both methods, as multipart image fields start and end
        assert request.headers.get("content-type", "").startswith("multipart/form-data")
    model = session.js("explorer.state.model")
    direct = api.post(
        "/interpolate",
        params={"model": model, "steps": 10, "format": "json", "scale": 2},
        files={"start": ("a.png", first, "image/png"), "end": ("b.png", second, "image/png")},
    ).json()
    assert direct["images"] == result["linear"]["images"]
    assert "your digit" in page.inner_text("#interp-a")


@pytest.mark.browser
def test_score_shows_log_px_gauge_and_error_map(session, api, shots) -> None:
    session.open()
    page = session.page
    session.draw_stroke()
    session.wait("explorer.analysis.scores.result !== null")
    page.wait_for_selector("#score:not([hidden])")
    session.wait("document.getElementById('errmap').complete")
    model = session.js("explorer.state.model")
    sent = base64.b64decode(session.js("explorer.state.inputBase64"))
    direct = api.post(
        "/score",
        params={"model": model, "format": "json", "seed": 0},
        files={"file": ("d.png", sent, "image/png")},
    ).json()
    shown = session.js("explorer.analysis.scores.result")
    assert shown == direct  # seeded: the page's numbers are the API's, exactly
    assert session.js("document.getElementById('errmap').naturalWidth") == 28
    emap = session.js(
        """(() => { const img = document.getElementById('errmap');
          const c = document.createElement('canvas'); c.width = c.height = 28;
          const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
          return Array.from(ctx.getImageData(0, 0, 28, 28).data); })()"""
    )
    emap = np.asarray(emap).reshape(28, 28, 4)
    expected = np.asarray(Image.open(io.BytesIO(base64.b64decode(direct["error_map"]))))
    assert np.array_equal(emap[..., :3], expected)
    if direct["kind"] == "vae":
        assert page.inner_text("#logpx") == f"{direct['log_px']:.1f} nats"
        assert page.inner_text("#bpd") == f"{direct['bits_per_dim']:.3f}"
    verdict = direct["typicality"]
    assert verdict is not None  # the page's models carry a reference (explorer_models)
    gauge = page.locator("#gauge")
    assert float(gauge.get_attribute("data-percentile")) == pytest.approx(verdict["percentile"])
    assert gauge.get_attribute("aria-valuenow") is not None
    label = page.inner_text("#gauge-label")
    assert label.startswith("Typical" if verdict["typical"] else "Atypical"), label
    # the three pictures side by side, inside the panel
    boxes = [session.box(s) for s in ("#seen", "#recon", "#errmap")]
    assert boxes[0]["y"] == boxes[1]["y"] == boxes[2]["y"]
    assert session.js("document.documentElement.scrollWidth <= window.innerWidth")
    screenshot(page, shots, "09-score")
    names = session.js("explorer.state.models.map((m) => m.name + ':' + m.kind)")
    ae = next((n.split(":")[0] for n in names if n.endswith(":ae")), None)
    if ae:
        page.click(f"label[for=model-{ae}]")
        session.wait("(m) => explorer.analysis.scores.result?.model === m", ae)
        assert page.is_hidden("#logpx")
        assert "reconstruction error only" in page.inner_text("#score-note")


# ----------------------------------------- fitted priors: js/sample.js, classes.js, priors.js


def _priors(session) -> dict:
    return session.js("explorer.state.models.find((m) => m.name === explorer.state.model).priors")


def _needs_fitted(session, per_label: bool = False) -> dict:
    priors = _priors(session)
    if not priors or "fitted" not in priors["available"]:
        pytest.skip("the default model has no fitted prior")
    if per_label and not priors["per_label"]:
        pytest.skip("the default model's prior has no per-label fits")
    return priors


def _last_query(session, path: str) -> dict[str, str]:
    sent = [r.url for r in session.requests if f"/{path}?" in r.url]
    assert sent, f"no /{path} request"
    return dict(httpx.URL(sent[-1]).params)


def _sample_shown(session, api, **params) -> None:
    """The sample panel's image is exactly GET /sample with `params` (and scale 2)."""
    session.page.wait_for_selector("#samples:not([hidden])")
    session.wait(
        "(q) => { const i = document.getElementById('samples');"
        " return i.dataset.query === q && i.complete; }",
        str(httpx.QueryParams(params)),
    )
    direct = api.get("/sample", params=params)
    assert direct.status_code == 200, direct.text
    shown = np.asarray(session.image_pixels("#samples"))
    assert np.array_equal(shown, _png_gray(direct.content).ravel())
    assert session.page.get_attribute("#samples", "data-prior") == direct.headers["X-Prior"]


@pytest.mark.browser
def test_prior_picker_and_class_change_the_sample_request(session, api) -> None:
    session.open()
    priors = _needs_fitted(session, per_label=True)
    page = session.page
    model = session.js("explorer.state.model")
    # the picker starts at the model's default, and the first request asks for it
    assert page.is_checked(f"#prior-{priors['default']}")
    base = {"model": model, "n": "9", "seed": "3", "temperature": "1"}
    page.fill("#sample-n", "9")
    page.fill("#sample-seed", "3")
    page.click("label[for=prior-fitted]")
    assert "fitted prior" in page.inner_text("#sample-title")
    page.click("#sample-go")
    fitted = {**base, "prior": "fitted", "format": "png", "scale": "2"}
    _sample_shown(session, api, **fitted)
    assert _last_query(session, "sample") == fitted
    fitted_pixels = session.image_pixels("#samples")
    # one class: label= (its own fit), the options named as /models lists the labels
    options = page.locator("#sample-label option").all_inner_texts()
    assert options == ["any", *[str(entry["name"]) for entry in priors["labels"]]]
    third = priors["labels"][3]
    page.select_option("#sample-label", str(third["label"]))
    assert page.inner_text("#sample-title") == f"Sample class {third['name']}"
    page.click("#sample-go")
    one = {**base, "prior": "fitted", "label": str(third["label"]), "format": "png", "scale": "2"}
    _sample_shown(session, api, **one)
    assert _last_query(session, "sample") == one
    # back to N(0, I): the class goes back to "any" (a class is sampled from its fit)
    page.click("label[for=prior-normal]")
    assert page.input_value("#sample-label") == ""
    page.click("#sample-go")
    normal = {**base, "prior": "normal", "format": "png", "scale": "2"}
    _sample_shown(session, api, **normal)
    assert session.image_pixels("#samples") != fitted_pixels
    # choosing a class while on N(0, I) switches the picker to fitted
    page.select_option("#sample-label", str(third["label"]))
    assert page.is_checked("#prior-fitted")


@pytest.mark.browser
def test_sample_by_class_shows_one_row_per_label(session, api, shots) -> None:
    session.open()
    priors = _needs_fitted(session, per_label=True)
    page = session.page
    model = session.js("explorer.state.model")
    page.fill("#class-k", "6")
    page.fill("#class-seed", "5")
    page.click("#class-go")
    page.wait_for_selector("#class-panel[data-ready=true]", timeout=WAIT_MS)
    params = {"model": model, "per_label": "6", "seed": "5", "temperature": "1"}
    assert _last_query(session, "sample") == {**params, "format": "json", "scale": "2"}
    direct = api.get("/sample", params={**params, "format": "json", "scale": 2}).json()
    # one row per label, in label order, named and with its share, six images each
    rows = page.locator("#class-rows .class-row")
    labels = [entry["label"] for entry in priors["labels"]]
    assert rows.count() == len(labels) == len(direct["labels"])
    assert [int(rows.nth(i).get_attribute("data-label")) for i in range(rows.count())] == labels
    for i, entry in enumerate(direct["labels"]):
        row = rows.nth(i)
        assert row.locator(".class-name b").inner_text() == entry["name"]
        assert row.locator(".class-name small").inner_text() == f"{100 * entry['share']:.1f}%"
        srcs = row.locator("img").evaluate_all("(imgs) => imgs.map((i) => i.src)")
        assert srcs == [f"data:image/png;base64,{b64}" for b64 in entry["images"]]
    assert session.js("explorer.classes.result") == direct
    assert "X-Prior: fitted" in page.inner_text("#class-note")
    assert session.js("document.documentElement.scrollWidth <= window.innerWidth")
    screenshot(page, shots, "10-sample-by-class")


def _dark_pixels(session) -> int:
    return session.js(
        "(() => { const c = document.getElementById('map');"
        " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " let n = 0; for (let i = 0; i < d.length; i += 4)"
        " if (d[i] < 90 && d[i + 1] < 90 && d[i + 2] < 90 && d[i + 3] > 0) n++;"
        " return n; })()"
    )


@pytest.mark.browser
def test_fitted_prior_drawn_as_ellipses_on_a_2d_map(session, api, shots) -> None:
    session.open()
    _needs_fitted(session)
    page = session.page
    model = session.js("explorer.state.model")
    if session.js("explorer.state.models.find((m) => m.name === explorer.state.model).z_dim") != 2:
        pytest.skip("needs a 2-D model")
    page.wait_for_selector("#map[data-prior=drawn]", timeout=WAIT_MS)
    prior = api.get(f"/models/{model}/prior").json()
    drawn = session.js("explorer.maps()[0].priorEllipses")
    assert len(drawn) == len(prior["components"])
    for ellipse, component in zip(drawn, prior["components"], strict=True):
        # centred on the component's mean; 1-sigma half-axes along its covariance's eigenvectors
        np.testing.assert_allclose(ellipse["mean"], component["mean"], atol=1e-9)
        cov = np.asarray(component["covariance"])
        np.testing.assert_allclose(np.asarray(ellipse["covariance"]), cov, rtol=1e-9, atol=1e-12)
        sd = np.sqrt(np.linalg.eigvalsh(cov))[::-1]
        np.testing.assert_allclose(ellipse["sd"], sd, rtol=1e-6)
        c, s = np.cos(ellipse["angle"]), np.sin(ellipse["angle"])
        rotation = np.array([[c, -s], [s, c]])
        rebuilt = rotation @ np.diag(np.square(ellipse["sd"])) @ rotation.T
        np.testing.assert_allclose(rebuilt, cov, rtol=1e-6, atol=1e-9 * np.abs(cov).max())
        assert ellipse["weight"] == pytest.approx(component["weight"])
    assert "component" in page.inner_text("#prior-toggle-note")
    screenshot(page, shots, "11-prior-ellipses")
    # the checkbox takes them off the map and puts them back
    with_prior = _dark_pixels(session)
    page.uncheck("#prior-toggle")
    page.wait_for_selector("#map[data-prior=hidden]")
    assert session.js("explorer.maps()[0].priorEllipses.length") == 0
    assert _dark_pixels(session) < with_prior
    page.check("#prior-toggle")
    page.wait_for_selector("#map[data-prior=drawn]")
    assert _dark_pixels(session) == with_prior
    # a label picked in the legend: that label's own fit, in its colour
    if prior["labels"]:
        fit = prior["labels"][2]
        page.click(f"#legend .legend-item[data-label='{fit['label']}']")
        picked = session.js("explorer.maps()[0].priorEllipses")
        assert len(picked) == len(fit["components"])
        assert {e["label"] for e in picked} == {fit["label"]}
        means = [e["mean"] for e in picked]
        np.testing.assert_allclose(means, [c["mean"] for c in fit["components"]], atol=1e-9)
        assert "picked label" in page.inner_text("#prior-toggle-note")
