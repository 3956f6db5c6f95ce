"""Probes and metrics: GET /healthz, /readyz, /metrics. `async`, and they touch no model."""

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from service.api.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from service.api.params import errors
from service.api.schemas import Health, Ready


def router() -> APIRouter:
    api = APIRouter(tags=["operations"])

    @api.get("/healthz", response_model=Health, summary="Liveness (no model work)")
    async def healthz() -> Health:
        return Health(status="ok")

    @api.get(
        "/readyz",
        response_model=Ready,
        summary="Readiness: every model loaded and warmed up",
        responses=errors(503),
    )
    async def readyz(request: Request) -> Any:
        registry = getattr(request.app.state, "registry", None)
        if not getattr(request.app.state, "ready", False) or registry is None:
            return JSONResponse({"detail": "not ready: models are loading"}, status_code=503)
        return Ready(status="ready", models=registry.names)

    @api.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {METRICS_CONTENT_TYPE: {"schema": {"type": "string"}}}}},
    )
    async def metrics(request: Request) -> Response:
        return Response(request.app.state.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    return api
