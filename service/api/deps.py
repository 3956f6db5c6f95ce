"""FastAPI dependencies: settings, the model registry, the chosen model, the scheduler.

Routes take them through the `Annotated` aliases at the bottom (uploads: `service.api.uploads`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request

from service.api.scheduling import Scheduler
from service.inference.model import Model
from service.inference.registry import ModelRegistry
from service.process.settings import Settings


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry | None = getattr(request.app.state, "registry", None)
    if registry is None:  # only before start-up finished
        raise HTTPException(503, "models are not loaded yet")
    return registry


async def get_scheduler(request: Request) -> Scheduler:
    scheduler: Scheduler = request.app.state.scheduler
    return scheduler


RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
SchedulerDep = Annotated[Scheduler, Depends(get_scheduler)]


def unknown_model(name: str, registry: ModelRegistry) -> HTTPException:
    """The 404 for a model name that is not served."""
    return HTTPException(404, f"unknown model {name!r}; known models: {registry.names}")


def named_model(registry: ModelRegistry, name: str) -> Model:
    if name not in registry:
        raise unknown_model(name, registry)
    return registry.get(name)


async def get_model(
    registry: RegistryDep,
    model: Annotated[
        str | None,
        Query(description="model name (see GET /models); default: VAE_DEFAULT_MODEL"),
    ] = None,
) -> Model:
    return named_model(registry, registry.default if model is None else model)


def validation_error(loc: list[str | int], msg: str, kind: str = "value_error") -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors (never echoing the input)."""
    return HTTPException(422, [{"type": kind, "loc": loc, "msg": msg}])


ModelDep = Annotated[Model, Depends(get_model)]
