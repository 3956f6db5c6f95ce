"""The RPCs of inference.GRPCInferenceService, and what every call goes through.

Each call, like an HTTP request in service/api/middleware.py: a request id (the `x-request-id`
metadata when it is short and plain, else a new one; sent back in the trailing metadata), the
API key when keys are on (`authorization: Bearer <key>` or `x-api-key` metadata, checked by
service/api/auth.py exactly as for HTTP; the health RPCs are probes, open unless
VAE_AUTH_PROBES), VAE_MAX_CONCURRENCY calls in progress at most (probes exempt), one access log
line and the request metrics under the same names as HTTP, labelled protocol="grpc", route the
RPC's path, method POST (what a gRPC call is on the wire) and status the HTTP status of the same
outcome (the log line has the gRPC code too).

Models are looked up by the same functions as the REST routes (service/api/oip/models.py:
`served_models`, `find_model`); inference runs through the app's Scheduler in two steps, as
/v2/.../infer: the request checked and decoded, then the model run and the response built.

Errors are gRPC status codes as Triton maps its own: unknown model NOT_FOUND, a malformed
request INVALID_ARGUMENT, not ready or busy UNAVAILABLE, over a limit RESOURCE_EXHAUSTED, a
missing or wrong key UNAUTHENTICATED; the message is the REST face's `error`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from service import __version__
from service.api.auth import (
    ADMIN_MISSING,
    ADMIN_OFF,
    ADMIN_WRONG,
    LOCKED_OUT,
    NOT_ADMIN,
    WRONG,
    ApiKeys,
    Guesses,
    check_key,
    offered_keys,
)
from service.api.metrics import Metrics
from service.api.middleware import request_id_of
from service.api.oip.codec import OipError
from service.api.oip.models import find_model, metadata_of, outputs_of, served_models
from service.api.oip.repository import index, requested_versions
from service.api.oip.routes import INLINE_PARSE_BYTES, SERVER_NAME
from service.api.scheduling import WorkSize
from service.grpc import messages
from service.grpc.tensors import infer_request, infer_response, input_bytes, parameters
from service.inference.format import ModelLoadError
from service.process.settings import Settings

access_logger = logging.getLogger("service.access")
error_logger = logging.getLogger("service.error")

PROTOCOL = "grpc"
METHOD = "POST"  # every gRPC call is an HTTP/2 POST: the `method` label of the HTTP metrics
HEALTH_SERVICE = "grpc.health.v1.Health"
PROBES = frozenset({"ServerLive", "ServerReady", "Check", "Watch"})
ADMIN_RPCS = frozenset({"RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"})
REQUEST_ID_KEY = "x-request-id"
WATCH_LINGER_S = 0.1  # at the drain, between NOT_SERVING and the end of the Watch streams
# The REST face's statuses as gRPC codes (Triton's mapping of the same errors), and back.
CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
}
STATUSES = {code: status for status, code in CODES.items()}
_log_line = json.JSONEncoder(separators=(",", ":")).encode


def _peer(context: Any) -> str | None:
    """ "ipv4:127.0.0.1:5000" -> "127.0.0.1:5000" (the access log's `client`)."""
    peer = context.peer()
    if not peer:
        return None
    _, _, address = peer.partition(":")
    return urllib.parse.unquote(address) or peer


def _address(context: Any) -> str:
    """The client's address without its port (the lockout's key, as HTTP's)."""
    peer = _peer(context) or "unknown"
    return peer.rsplit(":", 1)[0] if peer.count(":") else peer


def _metadata(context: Any) -> list[tuple[bytes, bytes]]:
    pairs = []
    for key, value in context.invocation_metadata() or ():
        raw = value if isinstance(value, bytes) else str(value).encode("latin-1", "replace")
        pairs.append((key.lower().encode("latin-1", "replace"), raw))
    return pairs


class Calls:
    """What every RPC of the service goes through (one per app; one event loop: plain state)."""

    def __init__(self, state: Any, settings: Settings, api_keys: ApiKeys | None) -> None:
        self.state = state
        self.settings = settings
        self.metrics: Metrics = state.metrics
        self.api_keys = api_keys
        self.admin_keys: ApiKeys | None = getattr(state, "admin_keys", None)
        # Wrong keys by address, shared with HTTP's middleware: one lockout for both faces.
        self.guesses: Guesses = getattr(state, "guesses", None) or Guesses(0)
        self.in_flight = 0

    def authorize(self, name: str, metadata: list[tuple[bytes, bytes]], client: str) -> None:
        """As service/api/auth.py for HTTP: API keys on the model RPCs (probes open unless
        VAE_AUTH_PROBES), admin keys on the repository RPCs, the wrong-key lockout."""
        if name in ADMIN_RPCS:
            self._authorize_admin(metadata, client)
            return
        if self.api_keys is None or (name in PROBES and not self.settings.auth_probes):
            return
        if self.guesses.locked(client):
            raise OipError(429, LOCKED_OUT)
        allowed, why = check_key(self.api_keys, offered_keys(metadata))
        if not allowed:
            if why == WRONG:
                self.guesses.failed(client)
            raise OipError(401, why)

    def _authorize_admin(self, metadata: list[tuple[bytes, bytes]], client: str) -> None:
        if self.admin_keys is None:
            raise OipError(403, ADMIN_OFF)
        if self.guesses.locked(client):
            raise OipError(429, LOCKED_OUT)
        offered = offered_keys(metadata)
        admin = model_key = False
        for candidate in offered:
            admin |= self.admin_keys.matches(candidate)
            if self.api_keys is not None:
                model_key |= self.api_keys.matches(candidate)
        if admin:
            return
        if model_key:
            raise OipError(403, NOT_ADMIN)
        if offered:
            self.guesses.failed(client)
        raise OipError(401, ADMIN_WRONG if offered else ADMIN_MISSING)

    async def run(
        self,
        route: str,
        work: Callable[[Any], Awaitable[Any]],
        request: Any,
        context: Any,
    ) -> Any:
        """`work(request)` for the RPC at `route` ("/package.Service/Method"), with the
        request id, key, limit, log and metrics; an OipError from it becomes its gRPC code."""
        start = time.perf_counter()
        name = route.rpartition("/")[2]
        metadata = _metadata(context)
        incoming = next((v for k, v in metadata if k == REQUEST_ID_KEY.encode()), b"")
        request_id = request_id_of(incoming.decode("latin-1"))
        status, message, response = 200, "", None
        counted = False
        try:
            self.authorize(name, metadata, _address(context))
            if name not in PROBES:
                if self.in_flight >= self.settings.max_concurrency:
                    raise OipError(
                        503,
                        f"server busy: {self.settings.max_concurrency} calls in progress "
                        "(VAE_MAX_CONCURRENCY); retry later",
                    )
                self.in_flight += 1
                counted = True
            response = await work(request)
        except OipError as exc:
            status, message = exc.status, exc.message
        except asyncio.CancelledError:  # the client went away or the deadline passed
            status = 499
            raise
        except Exception:
            error_logger.exception("unhandled error in gRPC call %s", request_id)
            status, message = 500, f"internal server error (request id {request_id})"
        finally:
            if counted:
                self.in_flight -= 1
            self._observe(route, status, time.perf_counter() - start, request_id, context)
        context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
        if status != 200:
            await context.abort(CODES.get(status, grpc.StatusCode.UNKNOWN), message)
        return response

    def _observe(
        self, route: str, status: int, seconds: float, request_id: str, context: Any
    ) -> None:
        self.metrics.observe_request(METHOD, route, status, seconds, PROTOCOL)
        if not self.settings.access_log:
            return
        code = CODES.get(status, grpc.StatusCode.OK if status == 200 else grpc.StatusCode.UNKNOWN)
        access_logger.info(
            _log_line(
                {
                    "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
                    "request_id": request_id,
                    "method": METHOD,
                    "path": route,
                    "route": route,
                    "protocol": PROTOCOL,
                    "query": "",
                    "status": status,
                    "grpc_status": code.name,
                    "duration_ms": round(seconds * 1000, 3),
                    "client": _peer(context),
                }
            )
        )


class InferenceService:
    """The RPCs this service answers; `handler()` registers them (others: UNIMPLEMENTED)."""

    def __init__(self, calls: Calls) -> None:
        self.calls = calls
        self.state = calls.state
        self.settings = calls.settings

    async def server_live(self, request: Any) -> Any:
        return messages.ServerLiveResponse(live=True)

    async def server_ready(self, request: Any) -> Any:
        try:
            served_models(self.state)
        except OipError:
            return messages.ServerReadyResponse(ready=False)
        return messages.ServerReadyResponse(ready=True)

    async def model_ready(self, request: Any) -> Any:
        try:  # as Triton: an unknown model is not ready, not an error
            find_model(self.state, request.name, request.version or None)
        except OipError:
            return messages.ModelReadyResponse(ready=False)
        return messages.ModelReadyResponse(ready=True)

    async def server_metadata(self, request: Any) -> Any:
        # binary_tensor_data is an HTTP extension: gRPC carries raw tensors natively.
        return messages.ServerMetadataResponse(name=SERVER_NAME, version=__version__)

    async def model_metadata(self, request: Any) -> Any:
        view = find_model(self.state, request.name, request.version or None)
        return messages.ModelMetadataResponse(**metadata_of(self.state, view))

    async def model_infer(self, request: Any) -> Any:
        view = find_model(self.state, request.model_name, request.model_version or None)
        scheduler = self.state.scheduler
        raw = len(request.raw_input_contents) > 0
        parse_size = WorkSize(images=1, small=input_bytes(request) <= INLINE_PARSE_BYTES)
        call = await scheduler.run(
            parse_size, lambda: view.check(infer_request(request), self.settings)
        )

        def respond() -> Any:
            outputs = outputs_of(call, self.settings)
            return infer_response(
                view.name, view.version, call.request.id, outputs, raw, call.parameters
            )

        return await scheduler.run(call.size, respond)

    # --- the model repository extension (admin keys; the work is service/process/lifecycle.py's)

    async def repository_index(self, request: Any) -> Any:
        response = messages.RepositoryIndexResponse()
        for row in index(self.state.registry, request.ready):
            response.models.add(
                name=row.name, version=row.version, state=row.state, reason=row.reason
            )
        return response

    async def repository_model_load(self, request: Any) -> Any:
        name, registry = request.model_name, self.state.registry
        try:
            versions = requested_versions(
                parameters(request.parameters), list(registry.find(name).versions)
            )
        except (ValueError, ModelLoadError) as exc:
            raise OipError(400, f"failed to load {name!r}: {exc}") from None
        outcome = await self.state.lifecycle.load(name, versions)
        if not outcome.ok:
            raise OipError(400, f"failed to load {name!r}: {outcome.error}")
        return messages.RepositoryModelLoadResponse()

    async def repository_model_unload(self, request: Any) -> Any:
        name = request.model_name
        if name not in self.state.registry:
            raise OipError(400, f"failed to unload {name!r}: it is not loaded")
        outcome = await self.state.lifecycle.unload(name)
        if not outcome.ok:
            raise OipError(400, f"failed to unload {name!r}: {outcome.error}")
        return messages.RepositoryModelUnloadResponse()

    def handler(self) -> grpc.GenericRpcHandler:
        rpcs = {
            "ServerLive": self.server_live,
            "ServerReady": self.server_ready,
            "ModelReady": self.model_ready,
            "ServerMetadata": self.server_metadata,
            "ModelMetadata": self.model_metadata,
            "ModelInfer": self.model_infer,
            "RepositoryIndex": self.repository_index,
            "RepositoryModelLoad": self.repository_model_load,
            "RepositoryModelUnload": self.repository_model_unload,
        }
        assert set(rpcs) == set(messages.METHODS), "the .proto and the handlers disagree"
        handlers = {}
        for name, work in rpcs.items():
            request_class, response_class = messages.METHODS[name]
            handlers[name] = grpc.unary_unary_rpc_method_handler(
                self._unary(f"/{messages.SERVICE}/{name}", work),
                request_deserializer=request_class.FromString,
                response_serializer=response_class.SerializeToString,
            )
        return grpc.method_handlers_generic_handler(messages.SERVICE, handlers)

    def _unary(
        self, route: str, work: Callable[[Any], Awaitable[Any]]
    ) -> Callable[[Any, Any], Awaitable[Any]]:
        async def rpc(request: Any, context: Any) -> Any:
            return await self.calls.run(route, work, request, context)

        return rpc


class ReadinessHealth(health_aio.HealthServicer):  # type: ignore[misc]
    """grpc.health.v1 driven by readiness: "" (the server) and the inference service are
    SERVING once every model is loaded and warm, NOT_SERVING before and while draining; other
    names NOT_FOUND. Check goes through `Calls` (key when VAE_AUTH_PROBES, log, metrics)."""

    SERVICES = ("", messages.SERVICE)

    def __init__(self, calls: Calls) -> None:
        super().__init__()
        self.calls = calls
        self.draining = asyncio.Event()

    async def mark(self, serving: bool) -> None:
        """Set the status every Watch sees: SERVING at the start; at the drain NOT_SERVING,
        then the Watch streams end (they would otherwise hold the drain for its whole grace
        period: a watcher sees NOT_SERVING, then CANCELLED)."""
        if serving:
            for service in self.SERVICES:
                await self.set(service, health_pb2.HealthCheckResponse.SERVING)
            return
        await self.enter_graceful_shutdown()
        await asyncio.sleep(WATCH_LINGER_S)  # the watchers' NOT_SERVING goes out first
        self.draining.set()

    async def _check(self, request: Any) -> Any:
        if request.service not in self.SERVICES:
            raise OipError(404, f"unknown service {request.service!r}")
        ready = bool(getattr(self.calls.state, "ready", False))
        serving = ready and not self._gracefully_shutting_down
        return health_pb2.HealthCheckResponse(
            status=health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )

    async def Check(self, request: Any, context: Any) -> Any:
        return await self.calls.run(f"/{HEALTH_SERVICE}/Check", self._check, request, context)

    async def Watch(self, request: Any, context: Any) -> None:
        try:
            self.calls.authorize("Watch", _metadata(context), _address(context))
        except OipError as exc:
            await context.abort(CODES[exc.status], exc.message)
        # The stream ends (OK) when the server drains, not when the grace period runs out.
        watch = asyncio.ensure_future(super().Watch(request, context))
        drained = asyncio.ensure_future(self.draining.wait())
        try:
            await asyncio.wait({watch, drained}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (watch, drained):
                task.cancel()
            await asyncio.gather(watch, drained, return_exceptions=True)
        if watch.done() and not watch.cancelled():
            watch.result()  # the stream's own error, if it had one
