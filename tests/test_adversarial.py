"""A corpus of hostile and malformed requests, built here (no downloads), against every
endpoint: each must get a 4xx with a JSON `detail` that leaks nothing about the server, and
the service must still answer correctly afterwards, with no 5xx counted in its metrics.

tests/test_service_errors.py checks particular statuses and messages; this module checks
breadth: several hundred distinct bad requests, each asserted the same way.
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from conftest import digit_array, make_client, png_bytes
from PIL import Image

# Words that would mean an internal detail leaked into a response.
LEAKS = ("Traceback", "site-packages", "/work/", "/usr/", '.py"', ".py:", " at 0x", 'File "')


@dataclass
class Case:
    id: str
    method: str
    path: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    statuses: tuple[int, ...] = ()  # expected; empty = any 4xx
    loc: str | None = None  # a validation error must name this field
    tight: bool = False  # against the client with small limits


def _encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _png_chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def _png_header(width: int, height: int, depth: int = 8, color: int = 0) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    idat = _png_chunk(b"IDAT", zlib.compress(b"\0"))
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + idat


def bad_images() -> Iterator[tuple[str, bytes, tuple[int, ...]]]:
    """(name, bytes, allowed statuses) for uploads that are not usable digit images."""
    digit = Image.fromarray(digit_array(64))
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    yield "empty", b"", (400,)
    yield "text", b"hello, this is not an image", (415,)
    yield "html", b"<!doctype html><html><body>7</body></html>", (415,)
    yield "svg", b'<svg xmlns="http://www.w3.org/2000/svg"><text>7</text></svg>', (415,)
    yield "svg-xml", b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', (415,)
    yield "pdf", b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n%%EOF", (415,)
    yield "eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\nshowpage", (415,)
    yield "eps-binary", b"\xc5\xd0\xd3\xc6" + b"\x00" * 40, (415,)
    yield "ico", _encode(digit, "ICO"), (415,)
    yield "psd", b"8BPS\x00\x01" + b"\x00" * 60, (415,)
    yield "jpeg2000", b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00" * 40, (415,)
    yield "pcx", _encode(digit, "PCX"), (415,)
    yield "tga", _encode(digit.convert("RGB"), "TGA"), (415,)
    yield "ppm", _encode(digit, "PPM"), (415,)
    yield "zip", b"PK\x03\x04" + b"\x00" * 60, (415,)
    yield "gzip-png", gzip.compress(png_bytes(digit_array())), (415,)
    yield "elf", b"\x7fELF\x02\x01\x01" + b"\x00" * 60, (415,)
    yield "json", b'{"z": [[0, 0]]}', (415,)
    yield "nul", b"\x00" * 1000, (415,)
    full = {
        "png": _encode(noise, "PNG"),
        "jpeg": _encode(noise, "JPEG", quality=90),
        "gif": _encode(noise, "GIF"),
        "bmp": _encode(noise, "BMP"),
        "webp": _encode(noise, "WEBP", quality=90),
        "tiff": _encode(noise, "TIFF", compression="tiff_lzw"),
    }
    for fmt, data in full.items():
        for keep in (0.1, 0.5, 0.9):
            yield f"truncated-{fmt}-{keep}", data[: int(len(data) * keep)], (400,)
        yield f"signature-only-{fmt}", data[:16], (400,)
    png = full["png"]
    yield "png-bad-crc", png[:29] + bytes([png[29] ^ 0xFF]) + png[30:], (400,)
    yield "png-garbage-idat", _png_header(64, 64)[:-20] + b"\xff" * 40, (400,)
    yield "png-zero-size", _png_header(0, 10), (400,)
    yield "bomb-png-100k", _png_header(100_000, 100_000), (413,)
    yield "bomb-png-wide", _png_header(2**31 - 1, 1), (400, 413)
    yield "bomb-png-16bit", _png_header(20_000, 20_000, depth=16), (413,)
    yield (
        "bomb-gif",
        b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00\x00\x00" + b";",
        (
            400,
            413,
        ),
    )
    yield (
        "bomb-bmp",
        b"BM"
        + struct.pack("<IHHI", 0, 0, 0, 54)
        + struct.pack("<IiiHHIIiiII", 40, 50_000, 50_000, 1, 24, 0, 0, 0, 0, 0, 0),
        (400, 413),
    )
    yield "bomb-tiff", _tiff_header(60_000, 60_000), (400, 413)
    yield "blank-white", png_bytes(np.full((40, 40), 255, np.uint8)), (422,)
    yield "blank-black", png_bytes(np.zeros((40, 40), np.uint8)), (422,)
    yield "blank-grey-jpeg", _encode(Image.new("L", (64, 64), 128), "JPEG"), (422,)
    yield "one-pixel", png_bytes(np.full((1, 1), 255, np.uint8)), (422,)
    yield "line-1x10000", png_bytes(np.zeros((1, 10_000), np.uint8)), (422,)
    transparent = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    yield "fully-transparent", _encode(transparent, "PNG"), (422,)
    yield "random-bytes-png-sig", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, (400,)
    yield "random-bytes-jpeg-sig", b"\xff\xd8\xff" + bytes(range(255, 0, -1)) * 4, (400,)


def _tiff_header(width: int, height: int) -> bytes:
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (262, 3, 1, 1)]
    ifd = (
        struct.pack("<H", len(entries))
        + b"".join(
            struct.pack("<HHII", tag, kind, count, value) for tag, kind, count, value in entries
        )
        + b"\x00\x00\x00\x00"
    )
    return b"II*\x00" + struct.pack("<I", 8) + ifd


def image_cases() -> Iterator[Case]:
    for name, data, statuses in bad_images():
        yield Case(
            f"raw-encode-{name}",
            "POST",
            "/encode",
            {"content": data, "headers": {"content-type": "image/png"}},
            statuses,
        )
        yield Case(
            f"multipart-reconstruct-{name}",
            "POST",
            "/reconstruct?format=json",
            {"files": {"file": ("digit.png", data, "image/png")}},
            statuses,
        )
        if data:
            good = png_bytes(digit_array())
            yield Case(
                f"batch-{name}",
                "POST",
                "/encode/batch",
                {"files": [("files", ("a.png", good)), ("files", ("b.png", data))]},
                statuses,
            )


def multipart(parts: list[bytes], boundary: bytes = b"xyz", closed: bool = True) -> bytes:
    body = b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts)
    return body + (b"--" + boundary + b"--\r\n" if closed else b"")


def file_part(name: bytes = b"file", data: bytes = b"", filename: bytes = b"d.png") -> bytes:
    return (
        b'Content-Disposition: form-data; name="'
        + name
        + b'"; filename="'
        + filename
        + b'"'
        + b"\r\nContent-Type: image/png\r\n\r\n"
        + data
    )


def text_part(name: bytes, value: bytes) -> bytes:
    return b'Content-Disposition: form-data; name="' + name + b'"\r\n\r\n' + value


def multipart_cases() -> Iterator[Case]:
    digit = png_bytes(digit_array())
    ctype = "multipart/form-data; boundary=xyz"

    def case(
        name: str,
        body: bytes,
        content_type: str = ctype,
        path: str = "/encode",
        statuses: tuple[int, ...] = (),
    ) -> Case:
        return Case(
            f"multipart-{name}",
            "POST",
            path,
            {"content": body, "headers": {"content-type": content_type}},
            statuses,
        )

    yield case("no-boundary", multipart([file_part(data=digit)]), "multipart/form-data")
    one = multipart([file_part(data=digit)])
    yield case("wrong-boundary", one, "multipart/form-data; boundary=abc")
    yield case("empty-boundary", one, "multipart/form-data; boundary=")
    yield case(
        "huge-boundary",
        multipart([file_part(data=digit)]),
        "multipart/form-data; boundary=" + "b" * 5000,
    )
    yield case("unclosed", multipart([file_part(data=digit[:40])], closed=False))
    yield case("garbage", b"\x00\xff" * 500)
    yield case("only-closing", b"--xyz--\r\n")
    yield case("empty-body", b"")
    yield case("no-disposition", multipart([b"Content-Type: image/png\r\n\r\n" + digit]))
    nameless = b'Content-Disposition: form-data; filename="a"\r\n\r\n'
    yield case("no-name", multipart([nameless + digit]))
    yield case("wrong-field", multipart([file_part(b"image", digit)]), statuses=(422,))
    yield case("text-not-file", multipart([text_part(b"file", b"abc")]), statuses=(422,))
    yield case("two-files", multipart([file_part(data=digit)] * 2), statuses=(422,))
    yield case("many-fields", multipart([text_part(b"f%d" % i, b"x") for i in range(40)]))
    yield case("big-text-field", multipart([text_part(b"note", b"x" * 10_000)]))
    yield case("header-no-colon", multipart([b"Content-Disposition form-data\r\n\r\n" + digit]))
    yield case("header-binary", multipart([b"\x00\x01\x02: \xff\r\n\r\n" + digit]))
    yield case(
        "many-part-headers",
        multipart([b"".join(b"X-H%d: v\r\n" % i for i in range(2000)) + file_part(data=digit)]),
    )
    yield case("lf-only", multipart([file_part(data=digit)]).replace(b"\r\n", b"\n"))
    yield case(
        "batch-no-files",
        multipart([text_part(b"files", b"x")]),
        path="/encode/batch",
        statuses=(422,),
    )
    yield case(
        "batch-wrong-field",
        multipart([file_part(b"file", digit)]),
        path="/encode/batch",
        statuses=(422,),
    )
    yield case(
        "batch-unclosed",
        multipart([file_part(b"files", digit[:50])], closed=False),
        path="/encode/batch",
    )
    yield Case(
        "multipart-batch-too-many",
        "POST",
        "/encode/batch",
        {
            "content": multipart([file_part(b"files", digit)] * 5),
            "headers": {"content-type": ctype},
        },
        (422,),
        tight=True,
    )
    yield case("empty-file", multipart([file_part(data=b"")]), statuses=(400,))


def content_type_cases() -> Iterator[Case]:
    digit = png_bytes(digit_array())
    for ctype in (
        "text/plain",
        "application/json",
        "application/x-www-form-urlencoded",
        "application/xml",
        "video/mp4",
        "multipart/mixed; boundary=x",
        "*/*",
    ):
        yield Case(
            f"ctype-encode-{ctype.split(';')[0]}",
            "POST",
            "/encode",
            {"content": digit, "headers": {"content-type": ctype}},
            (415, 400, 422),
        )
    yield Case(
        "ctype-batch-raw-png",
        "POST",
        "/encode/batch",
        {"content": digit, "headers": {"content-type": "image/png"}},
        (415,),
    )
    yield Case(
        "ctype-decode-png",
        "POST",
        "/decode",
        {"content": digit, "headers": {"content-type": "image/png"}},
        (422,),
    )
    yield Case("ctype-decode-form", "POST", "/decode", {"data": {"z": "0,0"}}, (422,))
    yield Case(
        "ctype-decode-multipart",
        "POST",
        "/decode",
        {"files": {"z": ("z.json", b'{"z": [[0, 0]]}')}},
        (422,),
    )
    yield Case("no-body-encode", "POST", "/encode", {}, (400,))
    yield Case("no-body-reconstruct", "POST", "/reconstruct", {}, (400,))
    yield Case("no-body-batch", "POST", "/encode/batch", {}, (400,))
    yield Case("no-body-decode", "POST", "/decode", {}, (422,))


def json_cases() -> Iterator[Case]:
    raw = {
        "nan": '{"z": [[NaN, 0]]}',
        "infinity": '{"z": [[Infinity, 0]]}',
        "neg-infinity": '{"z": [[0, -Infinity]]}',
        "overflow": '{"z": [[1e999, 0]]}',
        "str-nan": '{"z": [["NaN", 0]]}',
        "str-inf": '{"z": [["inf", 0]]}',
        "str-number": '{"z": [["0.5", 0]]}',
        "bool": '{"z": [[true, false]]}',
        "null-value": '{"z": [[null, 0]]}',
        "object-value": '{"z": [[{}, 0]]}',
        "too-big": '{"z": [[10000.5, 0]]}',
        "too-small": '{"z": [[0, -2e4]]}',
        "huge-int": '{"z": [[' + "9" * 5000 + ", 0]]}",
        "long-float-overflow": '{"z": [[1' + "0" * 400 + ".0, 0]]}",
        "flat": '{"z": [0, 0]}',
        "string": '{"z": "0,0"}',
        "null": '{"z": null}',
        "empty": '{"z": []}',
        "empty-vector": '{"z": [[]]}',
        "short": '{"z": [[0]]}',
        "long": '{"z": [[0, 0, 0]]}',
        "ragged": '{"z": [[0, 0], [0]]}',
        "deeper": '{"z": [[[0, 0]]]}',
        "deep-500": '{"z": ' + "[" * 500 + "]" * 500 + "}",
        "deep-100k": '{"z": ' + "[" * 100_000 + "]" * 100_000 + "}",
        "object-z": '{"z": {"0": [0, 0]}}',
        "extra-field": '{"z": [[0, 0]], "model": "vae"}',
        "missing-z": '{"y": [[0, 0]]}',
        "top-array": "[[0, 0]]",
        "top-number": "42",
        "top-string": '"z"',
        "top-null": "null",
        "trailing-comma": '{"z": [[0, 0],]}',
        "single-quotes": "{'z': [[0, 0]]}",
        "comment": '{"z": [[0, 0]] /* hi */}',
        "truncated": '{"z": [[0, 0]',
        "many-vectors": '{"z": [' + ",".join(["[0, 0]"] * 5000) + "]}",
        "long-vector": '{"z": [[' + ",".join(["0"] * 5000) + "]]}",
        "duplicate-z": '{"z": [[0, 0]], "z": "x"}',
        "unicode-key": '{"\\u007a": [[NaN, 0]]}',
    }
    for name, body in raw.items():
        yield Case(
            f"json-{name}",
            "POST",
            "/decode",
            {"content": body, "headers": {"content-type": "application/json"}},
            (422,),
            loc="body",
        )
    yield Case(
        "json-bad-utf8",
        "POST",
        "/decode",
        {"content": b'{"z": [[0, 0]]}\xff\xfe', "headers": {"content-type": "application/json"}},
        (422,),
        loc="body",
    )
    yield Case(
        "json-latin1",
        "POST",
        "/decode",
        {
            "content": '{"z": [[0, 0]], "\u00e9": 1}'.encode("latin-1"),
            "headers": {"content-type": "application/json"},
        },
        (422,),
        loc="body",
    )
    yield Case(
        "json-over-batch",
        "POST",
        "/decode",
        {"json": {"z": [[0, 0]] * 5}},
        (422,),
        loc="z",
        tight=True,
    )
    yield Case(
        "json-over-size",
        "POST",
        "/decode",
        {"json": {"z": [[0.123456, 0]] * 400}},
        (413,),
        tight=True,
    )


QUERIES = {
    "/sample": [
        ("n", ["0", "-1", "257", "1e3", "abc", "", "1.5", "99999999999999999999"]),
        ("scale", ["0", "17", "-3", "x", "2.5"]),
        ("temperature", ["-0.1", "10.5", "nan", "inf", "-inf", "NaN", "1e400", "x"]),
        ("seed", ["-1", "18446744073709551616", "x", "1.5"]),
        ("format", ["gif", "PNG ", ""]),
        ("model", ["nope", "%00", "../vae", "VAE"]),
    ],
    "/decode": [("scale", ["0", "99"]), ("format", ["jpeg"]), ("model", ["nope"])],
    "/encode": [("preprocess", ["magic", ""]), ("model", ["nope", " vae"])],
    "/reconstruct": [
        ("sample", ["maybe", "2"]),
        ("seed", ["-5"]),
        ("format", ["svg"]),
        ("scale", ["100"]),
        ("preprocess", ["MNIST"]),
    ],
    "/encode/batch": [("preprocess", ["x"]), ("model", ["nope"])],
}


def query_cases() -> Iterator[Case]:
    digit = png_bytes(digit_array())
    for path, params in QUERIES.items():
        for param, values in params:
            for value in values:
                if path == "/sample":
                    kwargs: dict[str, Any] = {}
                    method = "GET"
                elif path == "/decode":
                    method, kwargs = "POST", {"json": {"z": [[0, 0]]}}
                elif path == "/encode/batch":
                    method, kwargs = "POST", {"files": [("files", ("d.png", digit))]}
                else:
                    method, kwargs = "POST", {"files": {"file": ("d.png", digit)}}
                statuses = (404,) if param == "model" else (422,)
                yield Case(
                    f"query-{path}-{param}={value!r}",
                    method,
                    f"{path}?{param}={value}",
                    kwargs,
                    statuses,
                    loc=None if param == "model" else param,
                )
    yield Case(
        "query-ae-sample",
        "POST",
        "/reconstruct?model=ae&sample=true",
        {"files": {"file": ("d.png", digit)}},
        (422,),
        loc="sample",
    )


def route_cases() -> Iterator[Case]:
    for method, path in [
        ("GET", "/encode"),
        ("PUT", "/encode"),
        ("DELETE", "/decode"),
        ("GET", "/decode"),
        ("POST", "/sample"),
        ("PATCH", "/reconstruct"),
        ("POST", "/models"),
        ("DELETE", "/models/vae"),
        ("POST", "/healthz"),
        ("PUT", "/metrics"),
    ]:
        yield Case(f"method-{method}-{path}", method, path, {}, (405,))
    for path in [
        "/nope",
        "/encode/",
        "/models/nope",
        "/models/nope/latent-points",
        "/models/nope/figures/training_curves.png",
        "/models/vae/figures/metadata.json",
        "/models/vae/figures/encoder.onnx",
        "/models/vae/figures/..%2Fmetadata.json",
        "/models/vae/figures/%2e%2e%2f%2e%2e%2fpyproject.toml",
        "/models/vae/figures/.hidden",
        "/models/..%2F..%2Fetc/latent-points",
        "/static/../service/app.py",
        "/static/..%2f..%2fpyproject.toml",
        "/static/%2e%2e/%2e%2e/README.md",
        "/static/nope.js",
        "/models/%00",
        "/" + "a" * 2000,
        "/models/vae/figures/" + "x" * 300,
    ]:
        yield Case(f"path-{path[:60]}", "GET", path, {}, (404, 405))


def corpus() -> list[Case]:
    cases = [
        *image_cases(),
        *multipart_cases(),
        *content_type_cases(),
        *json_cases(),
        *query_cases(),
        *route_cases(),
    ]
    ids = [case.id for case in cases]
    assert len(ids) == len(set(ids)), [i for i in ids if ids.count(i) > 1]
    return cases


CORPUS = corpus()


@pytest.fixture(scope="module")
def tight_client(model_dir):
    """Small limits: 4 items per request, 4 KiB bodies, 10,000 pixels."""
    with make_client(model_dir, max_batch=4, max_upload_bytes=4096, max_pixels=10_000) as c:
        yield c


@pytest.fixture(scope="module")
def adversarial_client(model_dir):
    """A client of its own, so that its metrics count only this corpus."""
    with make_client(model_dir) as c:
        yield c


def test_the_corpus_is_big_and_covers_every_endpoint() -> None:
    assert len(CORPUS) >= 200, len(CORPUS)
    paths = {case.path.split("?")[0] for case in CORPUS}
    for endpoint in (
        "/encode",
        "/encode/batch",
        "/decode",
        "/sample",
        "/reconstruct",
        "/models/nope",
        "/healthz",
        "/metrics",
    ):
        assert endpoint in paths, endpoint


def assert_clean_4xx(response, case: Case) -> None:
    status = response.status_code
    assert 400 <= status < 500, (case.id, status, response.text[:300])
    if case.statuses:
        assert status in case.statuses, (case.id, status, response.text[:300])
    assert response.headers["content-type"] == "application/json", case.id
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"detail"}, body
    text = response.text
    for leak in LEAKS:
        assert leak not in text, (case.id, leak, text[:300])
    if case.loc is not None and isinstance(body["detail"], list):
        names = [str(part) for error in body["detail"] for part in error["loc"]]
        assert case.loc in names, (case.id, body)
    if status == 422 and isinstance(body["detail"], list):
        for error in body["detail"]:
            assert set(error) == {"type", "loc", "msg"} and error["loc"], error


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's warnings on corrupt EXIF
@pytest.mark.parametrize("case", CORPUS, ids=[case.id for case in CORPUS])
def test_malformed_request_is_a_clean_4xx(case: Case, adversarial_client, tight_client) -> None:
    client = tight_client if case.tight else adversarial_client
    response = client.request(case.method, case.path, **case.kwargs)
    assert_clean_4xx(response, case)


def test_service_still_answers_and_counted_no_5xx(adversarial_client, tight_client) -> None:
    """Runs after the corpus (file order): the same clients still answer good requests, and
    their metrics never counted a 5xx."""
    digit = png_bytes(digit_array())
    for client in (adversarial_client, tight_client):
        r = client.post("/encode", files={"file": ("d.png", digit)})
        assert r.status_code == 200 and len(r.json()["mu"]) == 2
        assert client.get("/sample?n=2&seed=1").status_code == 200
        assert client.post("/decode", json={"z": [[0, 0]]}).status_code == 200
        assert client.get("/readyz").status_code == 200
        metrics = client.get("/metrics").text
        served = [ln for ln in metrics.splitlines() if ln.startswith("vae_http_requests_total")]
        assert served, metrics[:500]
        assert not [ln for ln in served if 'status="5' in ln], served


def test_a_crash_inside_a_handler_is_a_bare_json_500(model_dir, monkeypatch) -> None:
    """The last line of defence: an unexpected exception gives a JSON 500 with the request id,
    and no exception text, trace or path."""
    from service.inference.model import Model

    def boom(self, z):
        raise RuntimeError("secret at /work/main/service/models.py line 1")

    monkeypatch.setattr(Model, "decode_batch", boom)
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.process.settings import Settings

    app = create_app(Settings(model_dir=model_dir, access_log=False))
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/sample?n=1", headers={"X-Request-ID": "crash-1"})
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    assert r.json() == {"detail": "internal server error (request id crash-1)"}
    assert r.headers["x-content-type-options"] == "nosniff"
    for leak in (*LEAKS, "secret", "RuntimeError"):
        assert leak not in r.text


def test_probes_are_async_so_a_full_thread_pool_cannot_starve_them(client) -> None:
    """Sync handlers queue for FastAPI's thread pool behind inference; probes must not."""
    import inspect

    for route in client.app.routes:
        if getattr(route, "path", None) in ("/healthz", "/readyz", "/metrics"):
            assert inspect.iscoroutinefunction(route.endpoint), route.path


def test_image_responses_say_nosniff_and_cors_is_off(client) -> None:
    r = client.get("/sample?n=1", headers={"Origin": "https://evil.example"})
    assert r.headers["content-type"] == "image/png"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "access-control-allow-origin" not in r.headers
    r = client.options(
        "/decode",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in r.headers
