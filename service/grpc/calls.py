"""What every gRPC call goes through (service/grpc/servicer.py's RPCs and the health check).

Each call, like an HTTP request in service/api/middleware.py: a request id (the `x-request-id`
metadata when it is short and plain, else a new one; sent back in the trailing metadata), the
API key when keys are on (`authorization: Bearer <key>` or `x-api-key` metadata, checked by
service/api/auth.py exactly as for HTTP, with the same wrong-key lockout; the health RPCs are
probes, open unless VAE_AUTH_PROBES; the repository RPCs need an admin key), VAE_MAX_CONCURRENCY
calls in progress at most (probes exempt), one access log line and the request metrics under
the same names as HTTP, labelled protocol="grpc", route the RPC's path, method POST (what a
gRPC call is on the wire) and status the HTTP status of the same outcome (the log line has the
gRPC code too).

Errors are gRPC status codes as Triton maps its own: unknown model NOT_FOUND, a malformed
request INVALID_ARGUMENT, not ready or busy UNAVAILABLE, over a limit RESOURCE_EXHAUSTED, a
missing or wrong key UNAUTHENTICATED, a key without the right PERMISSION_DENIED; the message is
the REST face's `error`.
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
from service.process.settings import Settings

access_logger = logging.getLogger("service.access")
error_logger = logging.getLogger("service.error")

PROTOCOL = "grpc"
METHOD = "POST"  # every gRPC call is an HTTP/2 POST: the `method` label of the HTTP metrics
HEALTH_SERVICE = "grpc.health.v1.Health"
PROBES = frozenset({"ServerLive", "ServerReady", "Check", "Watch"})
ADMIN_RPCS = frozenset({"RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"})
REQUEST_ID_KEY = "x-request-id"
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


def address_of(context: Any) -> str:
    """The client's address without its port (the lockout's key, as HTTP's)."""
    peer = _peer(context) or "unknown"
    return peer.rsplit(":", 1)[0] if peer.count(":") else peer


def metadata_of_call(context: Any) -> list[tuple[bytes, bytes]]:
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
        metadata = metadata_of_call(context)
        incoming = next((v for k, v in metadata if k == REQUEST_ID_KEY.encode()), b"")
        request_id = request_id_of(incoming.decode("latin-1"))
        status, message, response = 200, "", None
        counted = False
        try:
            self.authorize(name, metadata, address_of(context))
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
