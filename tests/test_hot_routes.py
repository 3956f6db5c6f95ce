"""service/api/hot_routes.py: POST /encode and GET /sample answered without FastAPI's routing
must answer exactly as FastAPI's routes do, and hand FastAPI everything they do not take."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_client

from service.api.deps import get_registry
from service.api.hot_routes import MAX_FAST_BODY, HotRoutesMiddleware, _one_file, _sample_values

BOUNDARY = "hot0123"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def body(data: bytes, field: str = "file", filename: str = "d.png") -> bytes:
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{filename}"\r\nContent-Type: image/png\r\n\r\n'
        ).encode()
        + data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


@pytest.fixture(scope="module")
def clients(model_dir: Path):
    """(hot, plain): the same app twice, the second with a dependency override, which sends
    every request through FastAPI's routes."""
    with make_client(model_dir) as hot, make_client(model_dir) as plain:
        plain.app.dependency_overrides[get_registry] = get_registry
        yield hot, plain


def answer(client, method: str, url: str, **kw) -> tuple[int, dict[str, str], bytes]:
    r = client.request(method, url, **kw)
    headers = {k: v for k, v in r.headers.items() if k not in ("x-request-id", "date")}
    return r.status_code, headers, r.content


ENCODE_CASES = [
    ("/encode", None),
    ("/encode?model=ae", None),
    ("/encode?preprocess=none", None),
    ("/encode?model=nope", None),
    ("/encode?preprocess=maybe", None),
    ("/encode?unknown=1", None),
    ("/encode", b"not an image"),
    ("/encode", b""),
    ("/encode", "field"),
    ("/encode", "two parts"),
]


@pytest.mark.parametrize(("url", "variant"), ENCODE_CASES)
def test_encode_same_as_fastapi(clients, digit_png, url, variant) -> None:
    hot, plain = clients
    if variant == "field":
        content = body(digit_png, field="files")
    elif variant == "two parts":
        content = body(digit_png).replace(f"--{BOUNDARY}--".encode(), b"") + body(digit_png)
    elif isinstance(variant, bytes):
        content = body(variant)
    else:
        content = body(digit_png)
    kw = {"content": content, "headers": {"content-type": CONTENT_TYPE}}
    assert answer(hot, "POST", url, **kw) == answer(plain, "POST", url, **kw)


@pytest.mark.parametrize(
    "query",
    [
        "n=16&seed=1",
        "n=4&seed=7&temperature=0.5&scale=2",
        "n=3&seed=2&format=json",
        "n=3&seed=2&model=ae&format=json",
        "n=0",
        "n=016&seed=1",
        "n=100000",
        "seed=-1",
        "seed=18446744073709551616",
        "temperature=11&seed=1",
        "temperature=nan",
        "temperature=1e0&seed=3",
        "format=gif",
        "scale=17",
        "model=nope",
        "n=2&n=3&seed=1",
        "prior=normal&seed=1&n=3",
        "prior=fitted&seed=1",  # no fitted prior: the 422
        "prior=uniform",
        "label=3",
    ],
)
def test_sample_same_as_fastapi(clients, query) -> None:
    hot, plain = clients
    assert answer(hot, "GET", "/sample?" + query) == answer(plain, "GET", "/sample?" + query)


@pytest.fixture(scope="module")
def prior_clients(prior_model_dir: Path):
    """(hot, plain) over tiny models with fitted priors."""
    with make_client(prior_model_dir) as hot, make_client(prior_model_dir) as plain:
        plain.app.dependency_overrides[get_registry] = get_registry
        yield hot, plain


@pytest.mark.parametrize(
    "query",
    [
        "seed=1&n=3",
        "prior=fitted&seed=1&n=3&format=json",
        "prior=normal&seed=1&n=3",
        "model=ae&seed=2&format=json",  # its metadata's default: fitted
        "model=ae&prior=normal&seed=2",  # the note
        "model=bare&prior=fitted",
        "label=3&seed=1",
        "per_label=2&seed=1&model=ae",
    ],
)
def test_sample_with_priors_same_as_fastapi(prior_clients, query) -> None:
    hot, plain = prior_clients
    assert answer(hot, "GET", "/sample?" + query) == answer(plain, "GET", "/sample?" + query)


def test_hot_requests_are_counted_by_route(clients, digit_png) -> None:
    hot, _ = clients
    hot.get("/sample?n=2&seed=1")
    hot.post("/encode", content=body(digit_png), headers={"content-type": CONTENT_TYPE})
    metrics = hot.get("/metrics").text
    assert 'method="GET",route="/sample",status="200"' in metrics
    assert 'method="POST",route="/encode",status="200"' in metrics


def test_only_plain_single_file_bodies_are_read_here(digit_png) -> None:
    ct = CONTENT_TYPE.encode()
    assert _one_file(ct, body(digit_png)) == digit_png
    assert _one_file(f'multipart/form-data; boundary="{BOUNDARY}"'.encode(), body(digit_png))
    assert _one_file(ct, body(digit_png)[:-2]) == digit_png  # no CRLF after the close
    assert _one_file(ct, b"preamble\r\n" + body(digit_png)) is None
    assert _one_file(ct, body(digit_png) + b"epilogue") is None
    assert _one_file(ct, body(digit_png, field="files")) is None
    assert _one_file(ct, body(digit_png, filename='a"b')) is None
    assert _one_file(ct + b"; charset=utf-8", body(digit_png)) is None
    assert _one_file(b"multipart/mixed; boundary=" + BOUNDARY.encode(), body(digit_png)) is None
    extra_header = body(digit_png).replace(b"\r\n\r\n", b"\r\nX-Extra: 1\r\n\r\n", 1)
    assert _one_file(ct, extra_header) is None


def test_big_bodies_go_to_fastapi(clients) -> None:
    """Over MAX_FAST_BODY the upload is FastAPI's (spooled to a file, not held here)."""
    hot, plain = clients
    content = body(b"\x89PNG\r\n\x1a\n" + bytes(MAX_FAST_BODY))
    kw = {"content": content, "headers": {"content-type": CONTENT_TYPE}}
    assert answer(hot, "POST", "/encode", **kw) == answer(plain, "POST", "/encode", **kw)


def test_sample_values_read_as_fastapi_would() -> None:
    assert _sample_values({}, 256) == (16, None, 1.0, _sample_values({}, 256)[3], 1)
    assert _sample_values({"n": "257"}, 256) is None
    assert _sample_values({"temperature": "10.0"}, 256) is not None
    assert _sample_values({"temperature": "10.5"}, 256) is None


def test_middleware_finds_both_routes(clients) -> None:
    hot, _ = clients
    layer = hot.app.middleware_stack
    while layer is not None and not isinstance(layer, HotRoutesMiddleware):
        layer = getattr(layer, "app", None)
    assert layer is not None, "HotRoutesMiddleware is not in the stack"
    assert layer.encode_route is not None and layer.sample_route is not None


def test_well_formed_requests_skip_fastapi(clients, digit_png) -> None:
    hot, _ = clients
    layer = hot.app.middleware_stack
    while not isinstance(layer, HotRoutesMiddleware):
        layer = layer.app
    inner, calls = layer.app, []

    async def counting(scope, receive, send):
        calls.append(scope["path"])
        await inner(scope, receive, send)

    layer.app = counting
    try:
        assert hot.get("/sample?n=2&seed=1").status_code == 200
        assert (
            hot.post(
                "/encode", content=body(digit_png), headers={"content-type": CONTENT_TYPE}
            ).status_code
            == 200
        )
        assert calls == []
        assert hot.get("/sample?n=0").status_code == 422  # FastAPI's to answer
        assert calls == ["/sample"]
    finally:
        layer.app = inner


def test_prior_requests_skip_fastapi_and_labels_go_to_it(prior_clients) -> None:
    """prior= (and a default of fitted) is answered here; label= and per_label= by FastAPI."""
    hot, _ = prior_clients
    layer = hot.app.middleware_stack
    while not isinstance(layer, HotRoutesMiddleware):
        layer = layer.app
    inner, calls = layer.app, []

    async def counting(scope, receive, send):
        calls.append(scope["query_string"])
        await inner(scope, receive, send)

    layer.app = counting
    try:
        for query in ("prior=fitted&n=2", "model=ae&n=2", "prior=normal&model=ae&n=2"):
            assert hot.get("/sample?" + query).status_code == 200
        assert calls == []
        assert hot.get("/sample?label=1&n=2").status_code == 200
        assert hot.get("/sample?model=bare&prior=fitted").status_code == 422
        assert calls == [b"label=1&n=2", b"model=bare&prior=fitted"]
    finally:
        layer.app = inner


def drive(client, content: bytes, tail: list[dict]) -> list[dict]:
    """Send POST /encode (multipart) straight to the app: `content` as a first, incomplete
    chunk, then the messages of `tail` (an empty tail: the client goes silent)."""
    import anyio

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/encode",
        "raw_path": b"/encode",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"test"),
            (b"content-type", CONTENT_TYPE.encode()),
            (b"content-length", str(len(content) + 100).encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    messages = [{"type": "http.request", "body": content, "more_body": True}, *tail]
    sent: list[dict] = []

    async def receive() -> dict:
        if messages:
            return messages.pop(0)
        await anyio.sleep(60)
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    async def run() -> None:
        await client.app(scope, receive, send)

    client.portal.call(run)
    return sent


def test_a_slow_multipart_body_is_a_408(model_dir, digit_png) -> None:
    with make_client(model_dir, body_timeout=0.5) as client:
        sent = drive(client, body(digit_png)[:50], [])
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 408
    assert (b"connection", b"close") in start["headers"]


def test_a_hang_up_mid_multipart_body_is_a_499(model_dir, digit_png) -> None:
    with make_client(model_dir) as client:
        sent = drive(client, body(digit_png)[:50], [{"type": "http.disconnect"}])
        metrics = client.get("/metrics").text
    assert sent == []  # nobody to answer
    assert 'method="POST",route="/encode",status="499"' in metrics
