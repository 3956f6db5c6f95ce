"""One worker's gRPC server: started by the app's lifespan (service/app.py) once the models are
loaded and warm, drained on SIGTERM (or SIGINT) beside HTTP: health turns NOT_SERVING, new
calls are refused, calls in progress get VAE_GRACEFUL_TIMEOUT seconds, while uvicorn drains
HTTP over the same seconds (the lifespan's end then waits for both: one grace period, not two).
uvicorn owns the signal handlers while it serves; `start` chains onto them (`_on_signal`).

    handle = await start(app)   # None when VAE_GRPC_PORT is 0 (off)
    ...
    await stop(handle)

Every worker process runs its own server, on the event loop its HTTP server uses, with its own
registry. Several workers share the port with SO_REUSEPORT only when the supervisor reserved it
for them (service/grpc/ports.py, `reserve`: it refuses a port anything else holds); a single
process binds it alone, so a port in use is an error there too, never silently shared. A
replaced worker's server binds the reserved port again.

Limits: a request message may be as large as an HTTP body (VAE_MAX_UPLOAD_BYTES), a response as
large as the largest answer the batch limits allow (or the upload limit, if larger): gRPC's own
default of 4 MiB would refuse some legitimate ones. With several workers, each connection is
made to close after MAX_CONNECTION_AGE_S (gracefully: calls in progress finish), so that
long-lived client channels spread over the workers again after one was replaced.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from service.api.deps import SLOT_VALUES
from service.grpc import messages
from service.grpc.calls import HEALTH_SERVICE, Calls
from service.grpc.ports import RESERVED_ENV, address
from service.grpc.servicer import InferenceService, ReadinessHealth
from service.process.settings import Settings

logger = logging.getLogger("service")

MAX_CONNECTION_AGE_S = 120
RESPONSE_OVERHEAD = 64 * 1024  # names, shapes and framing around the largest output tensor


class GrpcPortError(RuntimeError):
    """The gRPC port cannot be had: start-up fails with this message."""


DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass
class GrpcServer:
    server: Any  # grpc.aio.Server
    health: ReadinessHealth
    address: str
    grace: float
    draining: asyncio.Task[None] | None = None

    def drain(self) -> asyncio.Task[None]:
        """Start the drain (once): health NOT_SERVING, then the server's graceful stop."""
        if self.draining is None:
            self.draining = asyncio.ensure_future(self._drain())
        return self.draining

    async def _drain(self) -> None:
        await self.health.mark(serving=False)
        await self.server.stop(self.grace)


def _on_signal(handle: GrpcServer, loop: asyncio.AbstractEventLoop) -> None:
    """Chain onto the handlers uvicorn installed for the drain signals: start the gRPC drain
    on the loop, then let uvicorn's handler do what it does (its HTTP drain)."""
    if threading.current_thread() is not threading.main_thread():
        return  # an app driven from another thread (tests): signals are not ours to take
    for signum in DRAIN_SIGNALS:
        previous = signal.getsignal(signum)

        def handler(sig: int, frame: Any, previous: Any = previous) -> None:
            loop.call_soon_threadsafe(handle.drain)
            if callable(previous):
                previous(sig, frame)

        signal.signal(signum, handler)


def message_limits(settings: Settings) -> tuple[int, int]:
    """(receive, send) limits in bytes: the upload limit, and the largest response the batch
    limits allow (VAE_MAX_BATCH slots of SLOT_VALUES float32 values) if that is larger."""
    receive = settings.max_upload_bytes
    largest_response = settings.max_batch * SLOT_VALUES * 4 + RESPONSE_OVERHEAD
    return receive, max(receive, largest_response)


def _options(settings: Settings, shared: bool) -> list[tuple[str, int]]:
    receive, send = message_limits(settings)
    options = [
        ("grpc.so_reuseport", 1 if shared else 0),
        ("grpc.max_receive_message_length", receive),
        ("grpc.max_send_message_length", send),
    ]
    if shared:
        options += [
            ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_S * 1000),
            ("grpc.max_connection_age_grace_ms", settings.graceful_timeout * 1000),
        ]
    return options


@functools.cache
def reflection_pool() -> descriptor_pool.DescriptorPool:
    """The service's messages plus health's and reflection's own, for grpcurl and friends."""
    pool = descriptor_pool.DescriptorPool()
    files = descriptor_pb2.FileDescriptorSet.FromString(messages.DESCRIPTOR_SET.read_bytes())
    for file in files.file:
        pool.Add(file)
    for module in (health_pb2, reflection_pb2):
        pool.Add(descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb))
    return pool


async def start(state: Any, settings: Settings) -> GrpcServer | None:
    """Start the gRPC face for an app (its `app.state`: registry, scheduler, metrics,
    api_keys) on VAE_HOST:VAE_GRPC_PORT; None when the port is 0. GrpcPortError when the port
    is taken."""
    port = settings.grpc_port
    if not port:
        return None
    where = address(settings.host, port)
    shared = os.environ.get(RESERVED_ENV) == where
    calls = Calls(state, settings, getattr(state, "api_keys", None))
    server = grpc.aio.server(options=_options(settings, shared))
    server.add_generic_rpc_handlers((InferenceService(calls).handler(),))
    health = ReadinessHealth(calls)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        [messages.SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME], server, pool=reflection_pool()
    )
    try:
        server.add_insecure_port(where)
    except RuntimeError:
        message = f"cannot listen for gRPC on {where} (VAE_GRPC_PORT): the port is in use"
        logger.error("cannot start: %s", message)  # the supervisor reports this line
        raise GrpcPortError(message) from None
    await server.start()
    await health.mark(serving=True)
    logger.info("gRPC (Open Inference Protocol) on %s", where)
    handle = GrpcServer(server, health, where, float(settings.graceful_timeout))
    _on_signal(handle, asyncio.get_running_loop())
    return handle


async def stop(handle: GrpcServer | None) -> None:
    """The drain, started at the signal or now: health NOT_SERVING, no new calls, calls in
    progress get the grace period."""
    if handle is not None:
        await handle.drain()
