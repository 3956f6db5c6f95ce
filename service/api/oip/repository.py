"""The model repository extension (Triton's shapes): list, load and unload models while the
service runs. tritonclient's get_model_repository_index, load_model and unload_model use it.

    POST /v2/repository/index                   every model folder's versions and their state
    POST /v2/repository/models/{name}/load      load (and serve) a version in every worker
    POST /v2/repository/models/{name}/unload    stop serving a model in every worker

Which versions a load brings: `parameters.version` ("2": pinned), or Triton's
`parameters.config` (a JSON string, as tritonclient sends it) with a `version_policy` of
`{"specific": {"versions": [1, 2]}}`, `{"latest": {"num_versions": N}}` or `{"all": {}}`; else
the version policy (VAE_MODEL_VERSIONS, else the latest). The last version loaded (the highest
number) is the served one. A load that fails in any worker changes nothing and is a 400 naming
the file and the reason. Admin keys only (service/api/auth.py, AdminKeyMiddleware); the work is
service/process/lifecycle.py's.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from service.api.oip.routes import error_response
from service.api.oip.schemas import OipErrorBody
from service.inference.format import ModelLoadError
from service.inference.registry import ModelRegistry, model_folders, on_disk
from service.process.lifecycle import Lifecycle

READY, UNAVAILABLE = "READY", "UNAVAILABLE"


class RepositoryModel(BaseModel):
    name: str
    version: str = Field("", description="a version folder's number (or a flat model's version)")
    state: str = Field(description="READY (loaded) or UNAVAILABLE")
    reason: str = Field("", description="why not READY")


class LoadRequest(BaseModel):
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description='"version": the version to serve; "config": Triton model configuration '
        "JSON with a version_policy (specific, latest, all)",
    )


class RepositoryChange(BaseModel):
    name: str
    versions: list[str] = Field(description="the versions loaded now (empty: unloaded)")
    served: str | None = Field(description="the version requests without a version get")
    seconds: float = Field(description="from this request to every worker serving the change")


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": OipErrorBody} for code in codes}


def index(registry: ModelRegistry, ready_only: bool = False) -> list[RepositoryModel]:
    """Every model folder of the model directory, a row per version, READY when loaded."""
    rows: list[RepositoryModel] = []
    folders = model_folders(registry.model_dir) if registry.model_dir is not None else []
    for folder in folders:
        try:
            disk = on_disk(folder)
        except ModelLoadError as exc:
            rows.append(RepositoryModel(name=folder.name, state=UNAVAILABLE, reason=str(exc)))
            continue
        loaded = registry.versions(disk.name) if disk.name in registry else []
        for version in disk.versions:
            ready = version in loaded
            rows.append(
                RepositoryModel(
                    name=disk.name,
                    version=version,
                    state=READY if ready else UNAVAILABLE,
                    reason="" if ready else "not loaded",
                )
            )
    return [row for row in rows if row.state == READY or not ready_only]


def requested_versions(parameters: dict[str, Any], available: list[str]) -> list[str] | None:
    """The versions a load request asks for, oldest first (None: the version policy)."""
    files = [key for key in parameters if key.startswith("file:")]
    if files:
        raise ValueError(
            f"parameters {files}: this server does not take model files in a load request; "
            "publish a version folder (README, Model versions) and load it by number"
        )
    if parameters.get("version") is not None:
        return [str(parameters["version"])]
    config = parameters.get("config")
    if config is None:
        return None
    try:
        policy = (json.loads(config) if isinstance(config, str) else config)["version_policy"]
    except (ValueError, TypeError, KeyError):
        raise ValueError(
            'parameters.config must be JSON with a "version_policy": {"specific": {"versions": '
            '[N, ...]}}, {"latest": {"num_versions": N}} or {"all": {}}'
        ) from None
    if isinstance(policy, dict) and "specific" in policy:
        versions = [str(v) for v in policy["specific"].get("versions", [])]
        return sorted(versions, key=lambda v: (len(v), v)) or None
    if isinstance(policy, dict) and "latest" in policy:
        count = int(policy["latest"].get("num_versions", 1))
        return available[-max(1, count) :]
    if isinstance(policy, dict) and "all" in policy:
        return available
    raise ValueError("parameters.config: version_policy must be specific, latest or all")


def _parameters(body: bytes) -> dict[str, Any]:
    """A load request's `parameters` (an empty body: none)."""
    if not body.strip():
        return {}
    try:
        parameters = LoadRequest.model_validate_json(body).parameters
    except ValueError:
        raise ValueError('the body must be JSON: {"parameters": {...}}') from None
    return parameters


def _change(name: str, registry: ModelRegistry, seconds: float) -> RepositoryChange:
    served = name in registry
    return RepositoryChange(
        name=name,
        versions=registry.versions(name) if served else [],
        served=registry.served_version(name) if served else None,
        seconds=round(seconds, 4),
    )


def router() -> APIRouter:
    api = APIRouter(prefix="/v2/repository", tags=["model repository (admin keys)"])

    @api.post(
        "/index",
        response_model=list[RepositoryModel],
        summary="Every model folder and version, READY when loaded",
        responses=_errors(401, 403, 429),
    )
    async def repository_index(request: Request) -> Any:
        body = await request.body()
        ready_only = False
        if body.strip():
            try:
                ready_only = bool(json.loads(body).get("ready", False))
            except (ValueError, AttributeError):
                return error_response(400, 'the body must be empty or {"ready": true|false}')
        return index(request.app.state.registry, ready_only)

    @api.post(
        "/models/{name}/load",
        response_model=RepositoryChange,
        summary="Load a model version in every worker, then serve it",
        responses=_errors(400, 401, 403, 429),
        # Read here, not by FastAPI: tritonclient sends its JSON without a Content-Type.
        openapi_extra={
            "requestBody": {
                "required": False,
                "content": {"application/json": {"schema": LoadRequest.model_json_schema()}},
            }
        },
    )
    async def load(request: Request, name: str) -> Any:
        lifecycle: Lifecycle = request.app.state.lifecycle
        registry: ModelRegistry = request.app.state.registry
        try:
            parameters = _parameters(await request.body())
            available = list(registry.find(name).versions)
            versions = requested_versions(parameters, available)
        except (ValueError, ModelLoadError) as exc:
            return error_response(400, f"failed to load {name!r}: {exc}")
        outcome = await lifecycle.load(name, versions)
        if not outcome.ok:
            return error_response(400, f"failed to load {name!r}: {outcome.error}")
        return _change(name, registry, outcome.seconds)

    @api.post(
        "/models/{name}/unload",
        response_model=RepositoryChange,
        summary="Stop serving a model in every worker (requests running on it finish)",
        responses=_errors(400, 401, 403, 429),
    )
    async def unload(request: Request, name: str) -> Any:
        lifecycle: Lifecycle = request.app.state.lifecycle
        registry: ModelRegistry = request.app.state.registry
        if name not in registry:
            return error_response(400, f"failed to unload {name!r}: it is not loaded")
        outcome = await lifecycle.unload(name)
        if not outcome.ok:
            return error_response(400, f"failed to unload {name!r}: {outcome.error}")
        return JSONResponse(_change(name, registry, outcome.seconds).model_dump())

    return api
