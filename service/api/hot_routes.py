"""Pure-ASGI answers for the two hot requests: POST /encode with one small multipart file, and
GET /sample with plain query values (and `prior=`; `label=` and `per_label=` go to FastAPI).
Everything else, and anything these do not recognise exactly, goes to FastAPI unchanged.

Why: for an MNIST-sized request, FastAPI's routing, dependency solving and python-multipart
cost about as much as the model (BENCHMARKS.md, "What is left between the service and the
floor"). This answers the common, well-formed case with the same work functions the routes
call (encode_uploads, sample_prior), the same scheduler and the same response bytes; a request
it does not take, or one whose work fails, is handed to FastAPI (with the body it already read
replayed), so every error, status and message stays FastAPI's own.

It sits innermost of the service's middleware (service/app.py): the request id, access log,
metrics (the route is labelled by its template, as FastAPI's would be), the concurrency limit,
API keys and the body-size and body-time limits all apply as before.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from fastapi import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.deps import check_image_count, check_picture_output, tag
from service.api.encoding import encode_uploads
from service.api.images import MAX_TEMPERATURE, sample_prior, sampling_choice
from service.api.scheduling import WorkSize, small_output, small_uploads
from service.api.schemas import ImageFormat, Preprocess, PriorName

# Bodies up to this size are read here; bigger ones (rare for a digit) go to FastAPI, which
# spools them to a temporary file instead of holding them in memory.
MAX_FAST_BODY = 256 * 1024
# RFC 2046's boundary characters, without the space (a boundary ending in one is legal but odd).
_CONTENT_TYPE = re.compile(
    rb"multipart/form-data;[ \t]*boundary=(?:\"([0-9A-Za-z'()+_,\-./:=?]{1,70})\"|"
    rb"([0-9A-Za-z'()+_,\-./:=?]{1,70}))[ \t]*",
    re.IGNORECASE,
)
_DISPOSITION = re.compile(
    rb'content-disposition:[ \t]*form-data;[ \t]*name="file";[ \t]*filename="[ !#-\[\]-~]*"',
    re.IGNORECASE,
)
_PART_TYPE = re.compile(
    rb"content-type:[ \t]*[!#-'*+\-.0-9A-Z^-z|~]+/[!#-'*+\-.0-9A-Z^-z|~]+",
    re.IGNORECASE,
)
_UINT = re.compile(r"0|[1-9][0-9]{0,19}")
_FLOAT = re.compile(r"(?:0|[1-9][0-9]{0,2})(?:\.[0-9]{1,12})?")
_FORMATS = {f.value: f for f in ImageFormat}
_PREPROCESS = {p.value: p for p in Preprocess}
_PRIORS = {p.value: p for p in PriorName}
_SEED_MAX = 2**64 - 1


def _query(raw: bytes, allowed: frozenset[str]) -> dict[str, str] | None:
    """`a=1&b=2` with every name in `allowed`, none twice, no escapes; else None."""
    if not raw:
        return {}
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    out: dict[str, str] = {}
    for part in text.split("&"):
        name, sep, value = part.partition("=")
        if not sep or name not in allowed or name in out or "%" in value or "+" in value:
            return None
        out[name] = value
    return out


def _one_file(content_type: bytes, body: bytes) -> bytes | None:
    """The bytes of the single file part in field `file` of a plain multipart body, else None
    (other fields, several parts, unusual headers, a preamble or epilogue: FastAPI's to read)."""
    match = _CONTENT_TYPE.fullmatch(content_type)
    if match is None:
        return None
    boundary = match.group(1) or match.group(2)
    opening = b"--" + boundary + b"\r\n"
    if not body.startswith(opening):
        return None
    head_end = body.find(b"\r\n\r\n", len(opening))
    if head_end < 0:
        return None
    lines = body[len(opening) : head_end].split(b"\r\n")
    if not 1 <= len(lines) <= 2 or _DISPOSITION.fullmatch(lines[0]) is None:
        return None
    if len(lines) == 2 and _PART_TYPE.fullmatch(lines[1]) is None:
        return None
    closing = b"\r\n--" + boundary + b"--"
    if body.endswith(closing):
        end = len(body) - len(closing)
    elif body.endswith(closing + b"\r\n"):
        end = len(body) - len(closing) - 2
    else:
        return None
    data = body[head_end + 4 : end]
    if not data or b"\r\n--" + boundary in data:
        return None
    return data


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives `body` once, then whatever the client sends next."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replayed


def _header(scope: Scope, name: bytes) -> bytes | None:
    found = None
    for key, value in scope["headers"]:
        if key == name:
            if found is not None:
                return None  # twice: FastAPI's to judge
            found = value
    return found


class HotRoutesMiddleware:
    """POST /encode and GET /sample, answered without FastAPI's routing when well-formed."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]):
        self.app = app
        self.encode_route = self._route(routes, "/encode", "POST")
        self.sample_route = self._route(routes, "/sample", "GET")

    @staticmethod
    def _route(routes: Sequence[BaseRoute], path: str, method: str) -> BaseRoute | None:
        for route in routes:
            if getattr(route, "path", None) == path and method in (
                getattr(route, "methods", None) or ()
            ):
                return route
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path == "/encode" and scope["method"] == "POST" and self.encode_route:
                await self.encode(scope, receive, send)
                return
            if path == "/sample" and scope["method"] == "GET" and self.sample_route:
                await self.sample(scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _state(scope: Scope) -> tuple[Any, Any, Any] | None:
        app = scope["app"]
        registry = getattr(app.state, "registry", None)
        if registry is None or getattr(app, "dependency_overrides", None):
            return None  # not started yet, or a test's overrides: FastAPI's to answer
        state = app.state
        return registry, state.scheduler, state.settings

    async def encode(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self._state(scope)
        query = _query(scope["query_string"], frozenset({"model", "preprocess"}))
        content_type = _header(scope, b"content-type")
        length = _header(scope, b"content-length")
        if (
            state is None
            or query is None
            or content_type is None
            or _CONTENT_TYPE.fullmatch(content_type) is None
            or length is None
            or not length.isdigit()
            or not 0 < int(length) <= MAX_FAST_BODY
            or query.get("preprocess", "auto") not in _PREPROCESS
        ):
            await self.app(scope, receive, send)
            return
        registry, scheduler, settings = state
        # Taken now: the version served at this moment answers, whatever loads meanwhile.
        model = registry.lookup(query.get("model", registry.default))
        if model is None:
            await self.app(scope, receive, send)
            return
        # Through the body-size and body-time limits outside: their errors propagate as ever.
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise ClientDisconnect()  # as Starlette's request.form() does
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        data = _one_file(content_type, body)
        if data is None:
            await self.app(scope, _replay(body, receive), send)
            return
        tag(scope, model)
        preprocess = _PREPROCESS[query.get("preprocess", "auto")]
        size = WorkSize(images=1, small=small_uploads([data]))
        try:
            items = await scheduler.run(size, encode_uploads, model, [data], preprocess, settings)
        except HTTPException:  # an image error: FastAPI's route answers it (status, message)
            await self.app(scope, _replay(body, receive), send)
            return
        scope["route"] = self.encode_route
        response = Response(items[0].model_dump_json(), media_type="application/json")
        await response(scope, receive, send)

    async def sample(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self._state(scope)
        query = _query(
            scope["query_string"],
            frozenset({"model", "n", "seed", "temperature", "format", "scale", "prior"}),
        )
        if state is None or query is None or query.get("prior", "normal") not in _PRIORS:
            await self.app(scope, receive, send)
            return
        registry, scheduler, settings = state
        values = _sample_values(query, settings.max_batch)
        model = registry.lookup(query.get("model", registry.default))
        if values is None or model is None:
            await self.app(scope, receive, send)
            return
        n, seed, temperature, fmt, scale = values
        tag(scope, model)
        prior = _PRIORS[query["prior"]] if "prior" in query else None
        try:  # the route's checks: the prior the model has, and per-model limits
            chosen, _ = sampling_choice(model, prior, None)
            check_image_count(model, n, settings.max_batch, ["query", "n"])
            check_picture_output(model, n, scale, settings.max_batch)
        except HTTPException:  # FastAPI's route words the 422
            await self.app(scope, receive, send)
            return
        size = WorkSize(images=n, small=small_output(n, scale, model.input_shape))
        response = await scheduler.run(
            size, sample_prior, model, n, seed, temperature, fmt, scale, chosen
        )
        scope["route"] = self.sample_route
        await response(scope, receive, send)


def _sample_values(
    query: dict[str, str], max_batch: int
) -> tuple[int, int | None, float, ImageFormat, int] | None:
    """GET /sample's parameters when each is plainly valid (as FastAPI would read it); None
    sends the request to FastAPI, which validates (and words the 422) itself."""
    n, scale, seed, temperature = 16, 1, None, 1.0
    if "n" in query:
        if not _UINT.fullmatch(query["n"]):
            return None
        n = int(query["n"])
    if "scale" in query:
        if not _UINT.fullmatch(query["scale"]):
            return None
        scale = int(query["scale"])
    if "seed" in query:
        if not _UINT.fullmatch(query["seed"]):
            return None
        seed = int(query["seed"])
        if seed > _SEED_MAX:
            return None
    if "temperature" in query:
        if not _FLOAT.fullmatch(query["temperature"]):
            return None
        temperature = float(query["temperature"])
    fmt = _FORMATS.get(query.get("format", "png"))
    if fmt is None or not 1 <= n <= max_batch or not 1 <= scale <= 16:
        return None
    if not 0.0 <= temperature <= MAX_TEMPERATURE:
        return None
    return n, seed, temperature, fmt, scale
