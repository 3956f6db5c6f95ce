"""FastAPI dependencies: settings, the model registry, the chosen model, the scheduler.

Routes take them through the `Annotated` aliases at the bottom (uploads: `service.api.uploads`).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Annotated, Any

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


def tag(scope: MutableMapping[str, Any], model: Model) -> Model:
    """Mark the answer with the version that produces it (X-Model-Version, by the middleware)."""
    scope.setdefault("state", {})["model_version"] = model.version
    return model


async def get_model(
    request: Request,
    registry: RegistryDep,
    model: Annotated[
        str | None,
        Query(description="model name (see GET /models); default: VAE_DEFAULT_MODEL"),
    ] = None,
    version: Annotated[
        str | None,
        Query(
            description="a loaded version of the model (POST /v2/repository/index lists them); "
            "default: the served one. The answer's X-Model-Version says which produced it"
        ),
    ] = None,
) -> Model:
    name = registry.default if model is None else model
    chosen = named_model(registry, name)
    if version is not None and version != chosen.version:
        try:
            chosen = registry.get(name, version)
        except KeyError:
            raise HTTPException(
                404,
                f"version {version!r} of model {name!r} is not loaded; loaded versions: "
                f"{registry.versions(name)}",
            ) from None
    return tag(request.scope, chosen)


def validation_error(loc: list[str | int], msg: str, kind: str = "value_error") -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors (never echoing the input)."""
    return HTTPException(422, [{"type": kind, "loc": loc, "msg": msg}])


ModelDep = Annotated[Model, Depends(get_model)]


# Per-model limits. A request's images are counted in pixel values (C * H * W each) with the
# book's 1x28x28 digits as the unit, so digit models keep VAE_MAX_BATCH and the largest
# answers they could always give, and a 3x256x256 model (250 digits' worth of values per
# image) is held to about the same bytes instead of 250 times them.
DIGIT_VALUES = 28 * 28
# Values one image slot of VAE_MAX_BATCH may hold: 16 digits' worth (3x64x64 = 12288 fits).
SLOT_VALUES = 16 * DIGIT_VALUES
MAX_SCALE = 16  # ?scale= (params.ScaleQ)


def max_images(model: Model, max_batch: int) -> int:
    """Images (uploads, or vectors to decode) one request may bring or ask for with `model`:
    VAE_MAX_BATCH, or fewer when its images hold more than SLOT_VALUES pixel values each
    (VAE_MAX_BATCH * SLOT_VALUES values in all: 16 images of 3x256x256 at the default 256)."""
    return max(1, min(max_batch, max_batch * SLOT_VALUES // model.image_values))


def shape_text(model: Model) -> str:
    channels, height, width = model.input_shape
    return f"{channels}x{height}x{width} ({'RGB' if channels == 3 else 'grayscale'})"


def check_image_count(model: Model, count: int, max_batch: int, loc: list[str | int]) -> None:
    """A 422 when `count` images are more than `max_images` allows for this model."""
    limit = max_images(model, max_batch)
    if count > limit:
        why = "" if limit == max_batch else f" of {shape_text(model)} pixels"
        raise validation_error(
            loc, f"at most {limit} images{why} per request for model {model.name!r}, got {count}"
        )


def check_picture_output(model: Model, images: int, scale: int, max_batch: int) -> None:
    """A 422 when `images` decoded images at `scale` hold more pixel values than the largest
    answer of a digit model (VAE_MAX_BATCH 28x28 images at the largest scale)."""
    limit = max_batch * DIGIT_VALUES * MAX_SCALE**2
    if images * model.image_values * scale * scale > limit:
        raise validation_error(
            ["query", "scale"],
            f"{images} images of {shape_text(model)} pixels at scale {scale} exceed the "
            f"{limit} pixel values one answer may hold: ask for fewer images or a smaller scale",
        )


def chunk_for(model: Model, chunk: int) -> int:
    """Vectors per decoder call for `model`: `chunk`, or fewer when its images hold more than
    SLOT_VALUES pixel values each (so one call's output stays about chunk x 16 digits)."""
    return max(1, min(chunk, chunk * SLOT_VALUES // model.image_values))
