"""Latent points in, images out: POST /decode, GET /sample, POST /reconstruct.

`?format=png` answers one PNG grid, `?format=json` base64 PNGs with the z each came from.
"""

# No `from __future__ import annotations` in router modules: FastAPI reads the parameter
# annotations at import time, and some refer to local settings (max_batch).

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse

from service.api.deps import (
    ModelDep,
    SchedulerDep,
    check_image_count,
    check_picture_output,
    validation_error,
)
from service.api.params import (
    ONE_IMAGE_BODY,
    PNG_RESPONSE,
    FormatQ,
    PreprocessQ,
    ScaleQ,
    SeedQ,
    errors,
)
from service.api.scheduling import WorkSize, small_output, small_uploads
from service.api.schemas import (
    DecodeRequest,
    ImageFormat,
    ImagesResponse,
    Preprocess,
    ReconstructResponse,
)
from service.api.uploads import ImageUpload, prepare
from service.imaging import png
from service.inference.model import Model
from service.process.settings import Settings

AE_SAMPLING_NOTE = (
    "plain autoencoder: it has no prior, so z ~ N(0, t^2 I) may fall outside the region its "
    "encoder uses and decode to non-digits"
)
MAX_TEMPERATURE = 10.0


def image_response(
    model: Model,
    decoded: np.ndarray,
    z: np.ndarray,
    fmt: ImageFormat,
    scale: int,
    note: str | None = None,
    **extra: Any,
) -> Response:
    """Decoded images as the API answers them: a PNG grid, or JSON (with `extra` fields, the
    body is a ReconstructResponse)."""
    pixels = model.to_unit_pixels(decoded)
    headers = {"X-Model": model.name}
    if note:
        headers["X-Note"] = note
    if fmt is ImageFormat.png:
        return Response(png.grid_png(pixels, scale), media_type="image/png", headers=headers)
    body_type = ReconstructResponse if extra else ImagesResponse
    body = body_type(
        model=model.name,
        images=png.pngs_base64(pixels, scale),
        z=z.tolist(),
        note=note,
        **extra,
    )
    return JSONResponse(body.model_dump(), headers=headers)


def decode_vectors(model: Model, z: np.ndarray, fmt: ImageFormat, scale: int) -> Response:
    return image_response(model, model.decode_batch(z), z, fmt, scale)


def sample_prior(
    model: Model, n: int, seed: int | None, temperature: float, fmt: ImageFormat, scale: int
) -> Response:
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal((n, model.z_dim)) * temperature).astype(np.float32)
    note = AE_SAMPLING_NOTE if model.kind == "ae" else None
    return image_response(model, model.decode_batch(z), z, fmt, scale, note)


def reconstruct_upload(
    model: Model,
    data: bytes,
    preprocess: Preprocess,
    sample: bool,
    seed: int | None,
    fmt: ImageFormat,
    scale: int,
    settings: Settings,
) -> Response:
    x = prepare([data], model, preprocess, settings)
    codes = model.encode_batch(x)
    extra: dict[str, Any] = {}
    if model.kind == "vae":
        mu, log_var = codes["mu"], codes["log_var"]
        extra = {"mu": mu[0].tolist(), "log_var": log_var[0].tolist()}
        z = mu
        if sample:
            eps = np.random.default_rng(seed).standard_normal(mu.shape)
            z = (mu + np.exp(0.5 * log_var) * eps).astype(np.float32)
    else:
        z = codes["z"]
    decoded = model.decode_batch(z)
    if fmt is ImageFormat.png:
        return image_response(model, decoded, z, fmt, scale)
    seen, out = model.to_unit_pixels(x), model.to_unit_pixels(decoded)
    extra["mse"] = float(np.mean((seen - out) ** 2))
    extra["input"] = png.pngs_base64(seen, scale)[0]
    return image_response(model, decoded, z, fmt, scale, **extra)


def router(settings: Settings) -> APIRouter:
    api = APIRouter(tags=["images"])
    max_batch = settings.max_batch

    @api.post(
        "/decode",
        response_model=ImagesResponse,
        summary="Decode latent vectors to images",
        description=f"1..{max_batch} vectors of the model's z_dim finite numbers "
        "(|value| <= 1e4) -> one image each, of the model's C x H x W (grayscale or RGB). "
        "Models of more than 16x28x28 pixel values per image take proportionally fewer "
        "vectors, and every answer holds at most as many pixel values as "
        f"{max_batch} 28x28 images at scale 16.",
        responses={200: PNG_RESPONSE, **errors(404, 413, 422)},
    )
    async def decode(
        body: DecodeRequest,
        model: ModelDep,
        scheduler: SchedulerDep,
        format: FormatQ = ImageFormat.png,
        scale: ScaleQ = 1,
    ) -> Any:
        if len(body.z) > max_batch:
            raise validation_error(["body", "z"], f"at most {max_batch} vectors per request")
        for i, vector in enumerate(body.z):
            if len(vector) != model.z_dim:
                raise validation_error(
                    ["body", "z", i],
                    f"model {model.name!r} needs vectors of z_dim={model.z_dim} numbers, "
                    f"got {len(vector)}",
                )
        check_image_count(model, len(body.z), max_batch, ["body", "z"])
        check_picture_output(model, len(body.z), scale, max_batch)
        z = np.asarray(body.z, dtype=np.float32)
        size = WorkSize(images=len(z), small=small_output(len(z), scale, model.input_shape))
        return await scheduler.run(size, decode_vectors, model, z, format, scale)

    # service/api/hot_routes.py answers the well-formed requests of this route without
    # FastAPI's routing: a parameter or behaviour added here must be added there too.
    @api.get(
        "/sample",
        response_model=ImagesResponse,
        summary="Decode random latent vectors",
        responses={200: PNG_RESPONSE, **errors(404, 422)},
    )
    async def sample(
        model: ModelDep,
        scheduler: SchedulerDep,
        n: Annotated[int, Query(ge=1, le=max_batch, description="how many images")] = 16,
        seed: SeedQ = None,
        temperature: Annotated[
            float,
            Query(
                ge=0.0,
                le=MAX_TEMPERATURE,
                allow_inf_nan=False,
                description="z ~ N(0, temperature^2 I)",
            ),
        ] = 1.0,
        format: FormatQ = ImageFormat.png,
        scale: ScaleQ = 1,
    ) -> Any:
        """z ~ N(0, temperature^2 I), decoded (grayscale or RGB images of the model's
        H x W). For the plain AE this is not a prior it was trained with: the response says so
        (`note`, header X-Note). Models of more than 16x28x28 pixel values per image take a
        smaller `n` (see /decode)."""
        check_image_count(model, n, max_batch, ["query", "n"])
        check_picture_output(model, n, scale, max_batch)
        size = WorkSize(images=n, small=small_output(n, scale, model.input_shape))
        return await scheduler.run(size, sample_prior, model, n, seed, temperature, format, scale)

    @api.post(
        "/reconstruct",
        response_model=ReconstructResponse,
        summary="Encode then decode one image",
        openapi_extra=ONE_IMAGE_BODY,
        responses={200: PNG_RESPONSE, **errors(400, 404, 413, 415, 422)},
    )
    async def reconstruct(
        model: ModelDep,
        data: ImageUpload,
        scheduler: SchedulerDep,
        preprocess: PreprocessQ = Preprocess.auto,
        sample: Annotated[
            bool, Query(description="VAE only: decode z ~ q(z|x) instead of its mean")
        ] = False,
        seed: SeedQ = None,
        format: FormatQ = ImageFormat.png,
        scale: ScaleQ = 1,
    ) -> Any:
        """One image -> its reconstruction, decoded from mu (deterministic) or, with
        `sample=true`, from a z drawn from the posterior (seedable)."""
        if sample and model.kind != "vae":
            raise validation_error(
                ["query", "sample"],
                f"model {model.name!r} is a plain autoencoder: it has no posterior to sample",
            )
        check_picture_output(model, 1, scale, max_batch)
        # An encode and a decode: two images of work.
        small = small_uploads([data]) and small_output(1, scale, model.input_shape)
        size = WorkSize(images=2, small=small)
        return await scheduler.run(
            size, reconstruct_upload, model, data, preprocess, sample, seed, format, scale, settings
        )

    return api
