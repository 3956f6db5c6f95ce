"""The Open Inference Protocol's REST routes (KServe V2, Triton's HTTP API), under /v2.

    GET  /v2                                             server metadata
    GET  /v2/health/live, /v2/health/ready               probes
    GET  /v2/models/{name}[/versions/{version}]          model metadata
    GET  /v2/models/{name}[/versions/{version}]/ready    model readiness
    POST /v2/models/{name}[/versions/{version}]/infer    inference (JSON and binary tensor data)

Every error is `{"error": "..."}` (handled here, and by service.app for what the router itself
refuses under /v2). Inference runs through the app's Scheduler like the REST routes, with the
same limits (VAE_MAX_BATCH on the batch axis; the body and concurrency limits of the middleware).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import __version__
from service.api.oip.codec import HEADER_LENGTH, OipError, bad_request, parse_request
from service.api.oip.models import (
    Call,
    OipModel,
    execute,
    find_model,
    metadata_of,
    served_models,
)
from service.api.oip.schemas import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadataResponse,
    ModelReadyResponse,
    OipErrorBody,
    ServerLiveResponse,
    ServerMetadataResponse,
    ServerReadyResponse,
)
from service.api.scheduling import WorkSize
from service.process.settings import Settings

SERVER_NAME = "vae-service"
EXTENSIONS = ["binary_tensor_data"]
# Request bodies up to this size are parsed on the event loop; bigger ones in the thread pool.
INLINE_PARSE_BYTES = 64 * 1024


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The protocol's error body: {"error": message}."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": OipErrorBody} for code in codes}


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its $defs written in place (for an OpenAPI operation)."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


_BINARY = {"type": "string", "format": "binary"}
INFER_OPENAPI: dict[str, Any] = {
    "parameters": [
        {
            "name": HEADER_LENGTH,
            "in": "header",
            "required": False,
            "description": "binary tensor data: the length of the body's JSON part",
            "schema": {"type": "integer", "minimum": 0},
        }
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _inline_refs(InferenceRequest.model_json_schema())},
            "application/octet-stream": {"schema": _BINARY},
        },
    },
}
INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": InferenceResponse,
        "description": "JSON, or with binary outputs: the JSON (Inference-Header-Content-Length "
        "bytes) followed by each binary output's data",
        "content": {"application/octet-stream": {"schema": _BINARY}},
    },
    **_errors(400, 404, 413, 503),
}


def _views(request: Request) -> dict[str, OipModel]:
    """The OIP models of the app's registry; 503 before start-up (shared with gRPC)."""
    return served_models(request.app.state)


def _view(request: Request, name: str, version: str | None) -> OipModel:
    view = find_model(request.app.state, name, version)
    request.scope.setdefault("state", {})["model_version"] = view.version  # X-Model-Version
    return view


def _check(view: OipModel, body: bytes, header: str | None, settings: Settings) -> Call:
    return view.check(parse_request(body, header), settings)


async def _metadata(request: Request, name: str, version: str | None) -> Any:
    try:
        view = _view(request, name, version)
    except OipError as exc:
        return error_response(exc.status, exc.message)
    return ModelMetadataResponse.model_validate(metadata_of(request.app.state, view))


async def _ready(request: Request, name: str, version: str | None) -> Any:
    try:
        view = _view(request, name, version)
    except OipError as exc:
        return error_response(exc.status, exc.message)
    return ModelReadyResponse(name=view.name, ready=True)


async def _infer(request: Request, name: str, version: str | None) -> Response:
    try:
        view = _view(request, name, version)
        settings: Settings = request.app.state.settings
        scheduler = request.app.state.scheduler
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity":
            raise bad_request(f"Content-Encoding {encoding!r} is not supported: send it as is")
        try:
            body = await request.body()
        except StarletteHTTPException as exc:  # the middleware's body limits: 413, 408
            raise OipError(exc.status_code, str(exc.detail), dict(exc.headers or {})) from None
        header = request.headers.get(HEADER_LENGTH)
        parse_size = WorkSize(images=1, small=len(body) <= INLINE_PARSE_BYTES)
        call = await scheduler.run(parse_size, _check, view, body, header, settings)
        content, headers = await scheduler.run(call.size, execute, call, settings)
    except OipError as exc:
        return error_response(exc.status, exc.message, exc.headers)
    media_type = headers.pop("content-type")
    return Response(content, media_type=media_type, headers=headers)


def router(settings: Settings) -> APIRouter:
    api = APIRouter(prefix="/v2", tags=["open inference protocol"])
    max_batch = settings.max_batch

    @api.get("", response_model=ServerMetadataResponse, summary="Server metadata")
    async def server_metadata() -> ServerMetadataResponse:
        return ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=EXTENSIONS)

    @api.get("/health/live", response_model=ServerLiveResponse, summary="Server liveness")
    async def server_live() -> ServerLiveResponse:
        return ServerLiveResponse(live=True)

    @api.get(
        "/health/ready",
        response_model=ServerReadyResponse,
        summary="Server readiness: every model loaded and warmed up",
        responses=_errors(503),
    )
    async def server_ready(request: Request) -> Any:
        try:
            _views(request)
        except OipError as exc:
            return error_response(exc.status, exc.message)
        return ServerReadyResponse(ready=True)

    metadata_doc: dict[str, Any] = {
        "response_model": ModelMetadataResponse,
        "summary": "Model metadata",
        "description": "Each served model NAME is four models here: NAME-encoder and "
        "NAME-decoder (its ONNX graphs), NAME (image files in, the encoding out, as "
        "/encode) and NAME-sampler (GET /sample: count, and optional seed, temperature, prior "
        "and label in, the images and z out). Shapes have -1 for the batch axis.",
        "responses": _errors(404, 503),
    }

    @api.get("/models/{name}", **metadata_doc)
    async def model_metadata(request: Request, name: str) -> Any:
        return await _metadata(request, name, None)

    @api.get("/models/{name}/versions/{version}", **metadata_doc)
    async def model_version_metadata(request: Request, name: str, version: str) -> Any:
        return await _metadata(request, name, version)

    ready_doc: dict[str, Any] = {
        "response_model": ModelReadyResponse,
        "summary": "Model readiness",
        "responses": _errors(404, 503),
    }

    @api.get("/models/{name}/ready", **ready_doc)
    async def model_ready(request: Request, name: str) -> Any:
        return await _ready(request, name, None)

    @api.get("/models/{name}/versions/{version}/ready", **ready_doc)
    async def model_version_ready(request: Request, name: str, version: str) -> Any:
        return await _ready(request, name, version)

    infer_doc: dict[str, Any] = {
        "summary": "Inference",
        "description": f"Tensors as JSON or binary data (binary_tensor_data). At most "
        f"{max_batch} items on the batch axis (fewer for models of more than 16x28x28 pixel "
        "values per image). Pipelines (NAME) take BYTES image files and "
        "prepare them as /encode does (parameters.preprocess: auto, digit, fit or none). "
        "Samplers (NAME-sampler) take one-element settings: count (INT64), and optionally "
        "seed (INT64), temperature (FP32, 0..10), prior (BYTES: normal or fitted) and label "
        "(INT64: a label with a per-label fit); the response's parameters name the prior.",
        "response_class": JSONResponse,
        "response_model": None,
        "responses": INFER_RESPONSES,
        "openapi_extra": INFER_OPENAPI,
    }

    @api.post("/models/{name}/infer", **infer_doc)
    async def infer(request: Request, name: str) -> Response:
        return await _infer(request, name, None)

    @api.post("/models/{name}/versions/{version}/infer", **infer_doc)
    async def infer_version(request: Request, name: str, version: str) -> Response:
        return await _infer(request, name, version)

    return api
