"""Pure ASGI middleware: request body limit, and request id + access log + metrics + headers.

Pure ASGI (not BaseHTTPMiddleware) so bodies stream through untouched and nothing is buffered.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.auth import redact_query
from service.api.metrics import Metrics

access_logger = logging.getLogger("service.access")
error_logger = logging.getLogger("service.error")
REQUEST_ID_HEADER = "X-Request-ID"
# An incoming request id is echoed only if it is short and harmless in logs and headers.
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
UNMATCHED_ROUTE = "<unmatched>"
CLIENT_CLOSED = 499  # the client went away before its request was read: nothing was sent
# The Open Inference Protocol (service/api/oip) lives under /v2: its errors are {"error": ...},
# and metrics and the access log label its requests protocol="oip" (the REST API's "rest").
OIP_PREFIX = "/v2"
# One encoder for every access log line (json.dumps with separators builds one per call).
_log_line = json.JSONEncoder(separators=(",", ":")).encode


def request_id_of(incoming: str | None) -> str:
    """The client's request id when it is short and harmless in logs and headers, else a new
    one (HTTP's X-Request-ID header, gRPC's x-request-id metadata)."""
    return incoming if incoming and _REQUEST_ID_RE.match(incoming) else uuid.uuid4().hex


def protocol_of(path: str) -> str:
    """'oip' for the Open Inference Protocol's paths (/v2, /v2/...), else 'rest'."""
    return "oip" if path == OIP_PREFIX or path.startswith(OIP_PREFIX + "/") else "rest"


def error_body(scope: Scope, message: object) -> dict[str, object]:
    """An error body as the request's protocol has it: {"detail": ...}, or {"error": ...}."""
    return {"error": str(message)} if protocol_of(scope["path"]) == "oip" else {"detail": message}


# Probes and metrics: never refused for load, never counted in it.
EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"})
# "Connection: close" on refusals of a body: uvicorn then drops the connection instead of
# reading (and discarding) the rest of a 1 GB upload.
_CLOSE = {"Connection": "close"}


class BodyTooLarge(HTTPException):
    """Raised from `receive` when the streamed body passes the limit; handled as a 413."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body is over the limit of {limit} bytes", _CLOSE)


class BodyTimeout(HTTPException):
    """Raised from `receive` when the body is still incomplete at the deadline: a 408."""

    def __init__(self, seconds: float):
        super().__init__(
            408, f"request body did not arrive in full within {seconds:g} seconds", _CLOSE
        )


class BodySizeLimitMiddleware:
    """413 for bodies over `max_bytes`, without reading them into memory: a Content-Length over
    the limit is refused before the app runs; otherwise bytes are counted as they stream in.
    408 for a body still incomplete `timeout` seconds after the request began (a client
    trickling bytes would otherwise hold a place in VAE_MAX_CONCURRENCY for ever)."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared and declared.strip().isdigit() and int(declared) > self.max_bytes:
            error = BodyTooLarge(self.max_bytes)
            response = JSONResponse(
                error_body(scope, f"{error.detail} (Content-Length is {int(declared)})"),
                status_code=413,
                headers={"Connection": "close"},
            )
            await response(scope, receive, send)
            return
        received = 0
        started = False
        body_done = False
        loop = asyncio.get_running_loop()
        deadline = None if self.timeout is None else loop.time() + self.timeout

        async def counting_receive() -> Message:
            nonlocal received, body_done
            if body_done or deadline is None:
                message = await receive()
            else:
                try:
                    async with asyncio.timeout_at(deadline):
                        message = await receive()
                except TimeoutError:
                    raise BodyTimeout(self.timeout or 0) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
                body_done = not message.get("more_body", False)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except (BodyTooLarge, BodyTimeout) as error:
            # Normally FastAPI's handler has already answered; this covers reads outside it.
            if started:
                raise
            response = JSONResponse(
                error_body(scope, error.detail), status_code=error.status_code, headers=_CLOSE
            )
            await response(scope, receive, send)


class ConcurrencyLimitMiddleware:
    """At most `limit` requests in progress in this process; the next ones get a 503 with
    Retry-After at once instead of waiting in an unbounded queue (every waiting request holds
    its body in memory and only gets slower). Probes and /metrics are exempt, so that an
    orchestrator never restarts a pod for being busy. One event loop: a plain counter."""

    def __init__(
        self,
        app: ASGIApp,
        limit: int,
        retry_after: int = 1,
        exempt: frozenset[str] = EXEMPT_PATHS,
    ):
        self.app = app
        self.limit = limit
        self.retry_after = retry_after
        self.exempt = exempt
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            response = JSONResponse(
                error_body(
                    scope,
                    f"server busy: {self.limit} requests in progress "
                    f"(VAE_MAX_CONCURRENCY); retry after {self.retry_after} s",
                ),
                status_code=503,
                headers={"Retry-After": str(self.retry_after)},
            )
            await response(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


def _route_template(scope: Scope, routes: Sequence[BaseRoute]) -> str:
    """The matched route's path template ("/models/{name}"), never the raw path: bounded label
    cardinality for metrics. Requests answered before routing (a 413 on Content-Length) are
    matched against `routes` here."""
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str):
        return path
    for candidate in routes:
        path = getattr(candidate, "path", None)
        if isinstance(path, str) and candidate.matches(scope)[0] == Match.FULL:
            return path
    return UNMATCHED_ROUTE


class RequestContextMiddleware:
    """Per request: an id (X-Request-ID echoed, or generated), `X-Content-Type-Options: nosniff`,
    a JSON access log line, Prometheus request metrics, and a JSON 500 for unhandled errors."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        access_log: bool = True,
        routes: Sequence[BaseRoute] = (),
    ):
        self.app = app
        self.metrics = metrics
        self.access_log = access_log
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        incoming = Headers(scope=scope).get(REQUEST_ID_HEADER)
        request_id = request_id_of(incoming)
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        bytes_out = 0
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal status, bytes_out, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                headers.append((b"x-content-type-options", b"nosniff"))
                version = scope["state"].get("model_version")  # deps.tag: the model's version
                if version is not None:
                    headers.append((b"x-model-version", str(version).encode("latin-1")))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                bytes_out += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except ClientDisconnect:
            # The client hung up before its body was read in full (scripts/chaos.py,
            # "disconnects"): nobody to answer and nothing wrong here, so no traceback and no
            # 500; 499 ("client closed request", as nginx logs it) in the log and metrics.
            status = CLIENT_CLOSED
        except Exception:
            error_logger.exception("unhandled error in request %s", request_id)
            if started:
                raise
            status = 500
            response = JSONResponse(
                error_body(scope, f"internal server error (request id {request_id})"),
                status_code=500,
            )
            await response(scope, receive, send_with_headers)
        finally:
            seconds = time.perf_counter() - start
            route = _route_template(scope, self.routes)
            protocol = protocol_of(scope["path"])
            self.metrics.observe_request(scope["method"], route, status, seconds, protocol)
            if self.access_log:
                client = scope.get("client")
                access_logger.info(
                    _log_line(
                        {
                            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
                            "request_id": request_id,
                            "method": scope["method"],
                            "path": scope["path"],
                            "route": route,
                            "protocol": protocol,
                            "query": redact_query(scope.get("query_string", b"").decode("latin-1")),
                            "status": status,
                            "duration_ms": round(seconds * 1000, 3),
                            "bytes_out": bytes_out,
                            "client": f"{client[0]}:{client[1]}" if client else None,
                        }
                    )
                )
