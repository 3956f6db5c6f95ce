"""Every bad input gets a clear JSON error with the right status, never a 500."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import digit_array, make_client, png_bytes
from PIL import Image


def assert_error(response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"detail"}
    text = str(body["detail"]).lower()
    for word in words:
        assert word.lower() in text, text
    return body


def locs(body: dict) -> list[tuple]:
    return [tuple(e["loc"]) for e in body["detail"]]


@pytest.fixture(scope="module")
def small_client(model_dir):
    """Tight limits: 4 images/vectors per request, 2 KiB bodies, 10,000 pixels."""
    with make_client(model_dir, max_batch=4, max_upload_bytes=2048, max_pixels=10_000) as c:
        yield c


# --- 415 -------------------------------------------------------------------------------


def test_415_not_an_image(client) -> None:
    r = client.post("/encode", files={"file": ("digit.png", b"just some text", "image/png")})
    assert_error(r, 415, "not an image", "PNG")


def test_415_type_not_allowed(client) -> None:
    ico = io.BytesIO()
    Image.fromarray(digit_array()).save(ico, "ICO")
    assert_error(client.post("/encode", files={"file": ("d.ico", ico.getvalue())}), 415)


def test_415_raw_body_with_a_non_image_content_type(client, digit_png) -> None:
    r = client.post("/encode", content=digit_png, headers={"Content-Type": "text/plain"})
    assert_error(r, 415, "text/plain", "multipart")


def test_415_batch_needs_multipart(client, digit_png) -> None:
    r = client.post("/encode/batch", content=digit_png, headers={"Content-Type": "image/png"})
    assert_error(r, 415, "files")


# --- 400 -------------------------------------------------------------------------------


def test_400_truncated(client, digit_png) -> None:
    r = client.post("/encode", files={"file": ("d.png", digit_png[: len(digit_png) // 2])})
    assert_error(r, 400, "truncated")


def test_400_truncated_gif(client) -> None:
    noise = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    gif = io.BytesIO()
    Image.fromarray(noise).save(gif, "GIF")
    r = client.post(
        "/reconstruct", content=gif.getvalue()[:200], headers={"Content-Type": "image/gif"}
    )
    assert_error(r, 400, "GIF")


def test_400_empty_body(client) -> None:
    assert_error(client.post("/encode"), 400, "empty")
    r = client.post("/encode", content=b"", headers={"Content-Type": "image/png"})
    assert_error(r, 400, "empty")


def test_400_empty_file(client) -> None:
    assert_error(client.post("/encode", files={"file": ("d.png", b"")}), 400, "empty")


def test_400_batch_reports_which_file(client, digit_png) -> None:
    files = [("files", ("a.png", digit_png)), ("files", ("b.png", digit_png[:60]))]
    assert_error(client.post("/encode/batch", files=files), 400, "files[1]")


# --- 404 -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/encode?model=nope"),
        ("POST", "/encode/batch?model=nope"),
        ("POST", "/decode?model=nope"),
        ("GET", "/sample?model=nope"),
        ("POST", "/reconstruct?model=nope"),
        ("GET", "/models/nope"),
        ("GET", "/models/nope/latent-points"),
        ("GET", "/models/nope/figures/training_curves.png"),
    ],
)
def test_404_unknown_model_lists_the_known_ones(client, digit_png, method, path) -> None:
    kwargs = {"json": {"z": [[0, 0]]}} if path.startswith("/decode") else {}
    if method == "POST" and not kwargs:
        field = "files" if "batch" in path else "file"
        kwargs = {"files": [(field, ("d.png", digit_png))]}
    assert_error(client.request(method, path, **kwargs), 404, "nope", "'ae'", "'vae'")


# --- 413 -------------------------------------------------------------------------------


def test_413_content_length_over_the_limit(small_client) -> None:
    big = png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    assert len(big) > 2048
    r = small_client.post("/encode", content=big, headers={"Content-Type": "image/png"})
    assert_error(r, 413, "2048")
    r = small_client.post("/encode", files={"file": ("big.png", big)})
    assert_error(r, 413)
    assert_error(small_client.post("/decode", json={"z": [[0.0, 0.0]] * 300}), 413)


def test_413_before_routing_is_counted_under_its_route(model_dir) -> None:
    """A Content-Length over the limit is refused before routing; metrics and the access log
    still name the route template it was for, not `<unmatched>`."""
    with make_client(model_dir, max_upload_bytes=1024) as client:
        r = client.post("/encode", content=b"\x00" * 2048, headers={"Content-Type": "image/png"})
        assert r.status_code == 413
        metrics = client.get("/metrics").text
    assert 'route="/encode",status="413"' in metrics, metrics
    assert "<unmatched>" not in metrics


def test_413_streamed_body_without_content_length(small_client) -> None:
    sent = []

    def chunks():
        for _ in range(100):
            sent.append(1)
            yield b"\x89PNG" + b"\x00" * 1020

    r = small_client.post("/encode", content=chunks(), headers={"Content-Type": "image/png"})
    assert_error(r, 413, "2048")


def test_413_too_many_pixels(small_client) -> None:
    data = png_bytes(np.zeros((101, 100), np.uint8))  # compresses to well under 2 KiB
    assert_error(small_client.post("/encode", files={"file": ("d.png", data)}), 413, "pixels")


# --- 422 -------------------------------------------------------------------------------


def test_422_missing_field(client, digit_png) -> None:
    body = assert_error(client.post("/encode", files={"image": ("d.png", digit_png)}), 422)
    assert locs(body) == [("body", "file")]
    body = assert_error(client.post("/encode/batch", files={"file": ("d.png", digit_png)}), 422)
    assert locs(body) == [("body", "files")]
    assert locs(assert_error(client.post("/decode", json={}), 422)) == [("body", "z")]


def test_422_text_field_instead_of_a_file(client) -> None:
    files = {"other": ("x.png", b"1")}  # forces multipart/form-data
    r = client.post("/encode", data={"file": "not a file"}, files=files)
    body = assert_error(r, 422, "file upload")
    assert locs(body) == [("body", "file")]


@pytest.mark.parametrize("value", [0, 255])
def test_422_no_digit(client, value) -> None:
    blank = png_bytes(np.full((40, 40), value, np.uint8))
    assert_error(client.post("/encode", files={"file": ("b.png", blank)}), 422, "no digit found")
    r = client.post("/reconstruct", content=blank, headers={"Content-Type": "image/png"})
    assert_error(r, 422, "no digit found")


@pytest.mark.parametrize(
    ("raw", "loc"),
    [
        ('{"z": [[NaN, 0]]}', ("body", "z", 0, 0)),
        ('{"z": [[0, Infinity]]}', ("body", "z", 0, 1)),
        ('{"z": [[-Infinity, 0]]}', ("body", "z", 0, 0)),
        ('{"z": [[1e999, 0]]}', ("body", "z", 0, 0)),
        ('{"z": [["NaN", 0]]}', ("body", "z", 0, 0)),
        ('{"z": [["inf", 0]]}', ("body", "z", 0, 0)),
        ('{"z": [["1.5", 0]]}', ("body", "z", 0, 0)),
        ('{"z": [[true, 0]]}', ("body", "z", 0, 0)),
        ('{"z": [[10001, 0]]}', ("body", "z", 0, 0)),
        ('{"z": [[0, -1e5]]}', ("body", "z", 0, 1)),
        ('{"z": [0, 0]}', ("body", "z", 0)),
        ('{"z": "0,0"}', ("body", "z")),
        ('{"z": []}', ("body", "z")),
        ('{"z": [[0, 0, 0]]}', ("body", "z", 0)),
        ('{"z": [[0]]}', ("body", "z", 0)),
        ('{"z": [[0, 0]], "extra": 1}', ("body", "extra")),
        ("[[0, 0]]", ("body",)),
    ],
)
def test_422_bad_z(client, raw, loc) -> None:
    r = client.post("/decode", content=raw, headers={"Content-Type": "application/json"})
    body = assert_error(r, 422)
    assert loc in locs(body)
    # The offending input is never echoed (a NaN in it could not even be serialised).
    assert all(set(error) == {"type", "loc", "msg"} for error in body["detail"])
    assert "nan" not in r.text.lower() and "infinity" not in r.text.lower()


def test_422_too_many_vectors(small_client) -> None:
    body = assert_error(small_client.post("/decode", json={"z": [[0, 0]] * 5}), 422, "at most 4")
    assert locs(body) == [("body", "z")]


def test_422_too_many_files(small_client) -> None:
    tiny = png_bytes(digit_array(8))
    body = assert_error(small_client.post("/encode/batch", files=[("files", ("d", tiny))] * 5), 422)
    assert locs(body) == [("body", "files")]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("n=0", "n"),
        ("n=257", "n"),
        ("n=abc", "n"),
        ("scale=0", "scale"),
        ("scale=17", "scale"),
        ("temperature=-1", "temperature"),
        ("temperature=11", "temperature"),
        ("temperature=nan", "temperature"),
        ("temperature=inf", "temperature"),
        ("seed=-1", "seed"),
        ("format=gif", "format"),
    ],
)
def test_422_sample_query(client, query, field) -> None:
    body = assert_error(client.get(f"/sample?{query}"), 422)
    assert ("query", field) in locs(body)


def test_422_other_query(client, digit_png) -> None:
    files = {"file": ("d.png", digit_png)}
    body = assert_error(client.post("/encode?preprocess=magic", files=files), 422)
    assert ("query", "preprocess") in locs(body)
    body = assert_error(client.post("/decode?scale=99", json={"z": [[0, 0]]}), 422)
    assert ("query", "scale") in locs(body)


def test_422_sampling_a_plain_ae(client, digit_png) -> None:
    r = client.post("/reconstruct?model=ae&sample=true", files={"file": ("d.png", digit_png)})
    body = assert_error(r, 422, "no posterior")
    assert locs(body) == [("query", "sample")]


# --- never a 500 -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"\x00" * 10,
        b"\x89PNG\r\n\x1a\n",
        b"\xff\xd8\xff\xe0" + b"\x00" * 40,
        b"GIF89a\x01\x00\x01\x00",
        b"BM" + b"\xff" * 60,
        b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 20,
        b"II*\x00" + b"\xff" * 40,
        b"MM\x00*" + b"\x00\x00\x00\x08" + b"\xff" * 20,
    ],
)
@pytest.mark.parametrize("path", ["/encode", "/reconstruct?format=json"])
@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow's, on the TIFF junk
def test_junk_is_never_a_500(client, data, path) -> None:
    r = client.post(path, content=data, headers={"Content-Type": "image/png"})
    assert r.status_code in (400, 413, 415, 422), r.text
    assert "detail" in r.json()


def test_unknown_route_is_json(client) -> None:
    assert_error(client.get("/nope"), 404)
