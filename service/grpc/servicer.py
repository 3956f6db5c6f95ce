"""The RPCs of inference.GRPCInferenceService, and grpc.health.v1 driven by readiness.

Every RPC goes through service/grpc/calls.py (`Calls.run`: request id, keys, limit, log,
metrics, status codes). Models are looked up by the same functions as the REST routes
(service/api/oip/models.py: `served_models`, `find_model`: a `model_version` reaches any loaded
version); inference runs through the app's Scheduler in two steps, as /v2/.../infer: the
request checked and decoded, then the model run and the response built. The repository RPCs
are /v2/repository's (service/api/oip/repository.py), the work service/process/lifecycle.py's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from service import __version__
from service.api.oip.codec import OipError
from service.api.oip.models import find_model, metadata_of, outputs_of, served_models
from service.api.oip.repository import index, requested_versions
from service.api.oip.routes import INLINE_PARSE_BYTES, SERVER_NAME
from service.api.scheduling import WorkSize
from service.grpc import messages
from service.grpc.calls import CODES, HEALTH_SERVICE, Calls, address_of, metadata_of_call
from service.grpc.tensors import infer_request, infer_response, input_bytes, parameters
from service.inference.format import ModelLoadError

WATCH_LINGER_S = 0.1  # at the drain, between NOT_SERVING and the end of the Watch streams


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
            self.calls.authorize("Watch", metadata_of_call(context), address_of(context))
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
