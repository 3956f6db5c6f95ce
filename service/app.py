"""The application factory: `create_app(settings)`.

The lifespan loads and validates every model once (a broken or missing model stops start-up
with a message naming the file), warms each up, and only then reports ready.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute

from service import __version__
from service.api import routers
from service.api.auth import (
    AdminKeyMiddleware,
    ApiKeyMiddleware,
    Guesses,
    document_security,
    is_admin,
    is_protected,
    load_api_keys,
)
from service.api.hot_routes import HotRoutesMiddleware
from service.api.metrics import Metrics
from service.api.middleware import (
    BodySizeLimitMiddleware,
    ConcurrencyLimitMiddleware,
    RequestContextMiddleware,
)
from service.api.oip import is_oip_path
from service.api.oip.routes import error_response as oip_error
from service.api.page import mount_static
from service.api.scheduling import Scheduler
from service.grpc import server as grpc_server
from service.inference.format import ModelLoadError
from service.inference.registry import ModelRegistry, parse_pins
from service.process import lifecycle
from service.process.api_keys import load_admin_keys
from service.process.settings import Settings

logger = logging.getLogger("service")

DESCRIPTION = """
Serves the convolutional VAE and plain AE of *Generative Deep Learning* (chapter 3), exported
to ONNX, through onnxruntime: encode images, decode latent vectors, sample, reconstruct. Each
model has its own image shape (`GET /models`: 1-channel grayscale or 3-channel RGB, up to
256x256, square or not) and latent size; images out are PNGs of that shape, grayscale or RGB.

Images in: a multipart upload (field `file`, or `files` for a batch) or the raw bytes with an
`image/*` Content-Type; PNG, JPEG, BMP, GIF, WebP or TIFF, detected from the bytes.
Every error is a JSON object with a `detail`.
"""


async def validation_error_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 listing each error's type, location and message, but never the input: echoing it
    can leak data, and a NaN or Infinity in it cannot be serialised to JSON (which would turn
    this 422 into a 500)."""
    errors = [
        {"type": e.get("type"), "loc": list(e.get("loc", ())), "msg": e.get("msg")}
        for e in exc.errors()
    ]
    if is_oip_path(request.scope["path"]):  # the Open Inference Protocol's own error body
        return oip_error(400, "; ".join(f"{e['loc']}: {e['msg']}" for e in errors))
    return JSONResponse({"detail": errors}, status_code=422)


# FastAPI's answer when the JSON parser itself fails (not a JSONDecodeError): nesting deeper
# than the recursion limit, an integer of more than 4300 digits, bytes that are not UTF-8.
_BODY_PARSE_ERROR = "There was an error parsing the body"


async def http_error_handler(request: Request, exc: StarletteHTTPException) -> Response:
    """FastAPI's own handler, except that an unparseable JSON body is a 422 naming the body
    (like any other invalid JSON) rather than a bare 400."""
    if is_oip_path(request.scope["path"]):  # /v2: {"error": ...}, as the protocol has it
        return oip_error(exc.status_code, str(exc.detail), exc.headers)
    if exc.status_code == 400 and exc.detail == _BODY_PARSE_ERROR:
        return JSONResponse(
            {
                "detail": [
                    {
                        "type": "json_invalid",
                        "loc": ["body"],
                        "msg": "the body is not JSON this service can read (not UTF-8, "
                        "nested too deeply, or a number with too many digits)",
                    }
                ]
            },
            status_code=422,
        )
    return await http_exception_handler(request, exc)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service for `settings` (default: from VAE_* environment variables)."""
    settings = settings or Settings()
    api_keys = load_api_keys(settings)  # read now: a changed key file takes a restart
    admin_keys = load_admin_keys(settings)
    guesses = Guesses(settings.auth_max_failures, settings.auth_lockout)  # API and admin keys
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            # load_model warms each model up, so readiness means "has answered once". Under the
            # supervisor, the served set the other workers serve now (service/process/lifecycle.py).
            registry = ModelRegistry.load(
                settings.model_dir,
                default=settings.default_model,
                intra_op_threads=settings.intra_op_threads,
                observer=metrics.observe_inference,
                pins=parse_pins(settings.model_versions),
                state=lifecycle.served_state(),
            )
        except ModelLoadError as exc:
            logger.error("cannot start: %s", exc)
            raise
        app.state.registry = registry
        app.state.scheduler = Scheduler()
        # Loads and unloads never touch readiness: the served versions stay ready meanwhile.
        app.state.lifecycle = lifecycle.Lifecycle(
            registry, metrics, lifecycle.channel, settings.load_timeout
        )
        app.state.lifecycle.attach()
        app.state.ready = True
        grpc = await grpc_server.start(app.state, settings)  # None unless VAE_GRPC_PORT
        metrics.served(registry)
        logger.info(
            "serving %s from %s (default %r)",
            ", ".join(f"{m.name} {m.version} ({m.kind}, z_dim={m.z_dim})" for m in registry),
            settings.model_dir,
            registry.default,
        )
        yield
        app.state.lifecycle.detach()
        app.state.ready = False
        await grpc_server.stop(grpc)

    app = FastAPI(
        title="VAE service",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.api_keys = api_keys
    app.state.admin_keys, app.state.guesses = admin_keys, guesses  # gRPC checks them too
    app.state.registry = None
    app.state.ready = False
    # Starlette types handlers as taking any Exception; each of these takes its own subclass.
    app.add_exception_handler(RequestValidationError, validation_error_handler)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error_handler)  # type: ignore[arg-type]
    api_routes: list[BaseRoute] = []
    for router in routers(settings):
        app.include_router(router)
        api_routes.extend(router.routes)
    mount_static(app)  # the explorer's assets (index.html at "/" refers to static/...)

    # add_middleware wraps: the last added is the outermost. Innermost: the hot requests
    # (/encode, /sample) answered without FastAPI's routing when well-formed (hot_routes.py).
    app.add_middleware(HotRoutesMiddleware, routes=api_routes)
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_bytes=settings.max_upload_bytes,
        timeout=settings.body_timeout,
    )
    if api_keys is not None:
        # Inside CORS (preflights need no key; a 401 carries the CORS headers) and inside the
        # request context (401s have a request id, are logged and counted; no key is logged).
        app.add_middleware(
            ApiKeyMiddleware,
            keys=api_keys,
            protect_probes=settings.auth_probes,
            protect_metrics=settings.auth_metrics,
            guesses=guesses,
        )

    if api_keys is not None or admin_keys is not None:
        # /docs: a key on each operation that needs one (admin operations: an admin key).
        document_security(
            app,
            lambda path: (
                is_admin(path)
                or (
                    api_keys is not None
                    and is_protected(path, settings.auth_probes, settings.auth_metrics)
                )
            ),
        )
    # Model management (/v2/repository): always here, so that it is off (403) without admin keys.
    app.add_middleware(AdminKeyMiddleware, keys=admin_keys, api_keys=api_keys, guesses=guesses)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
            expose_headers=["X-Request-ID", "X-Model", "X-Model-Version", "X-Note"],
        )
    # Inside the request context, so that 503s carry a request id and are logged and counted.
    app.add_middleware(ConcurrencyLimitMiddleware, limit=settings.max_concurrency)
    # `routes` labels requests answered before routing (a 413 on Content-Length) by their route.
    app.add_middleware(
        RequestContextMiddleware,
        metrics=metrics,
        access_log=settings.access_log,
        routes=api_routes,
    )
    return app
