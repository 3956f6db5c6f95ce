"""Latent points in, images out: POST /decode, GET /sample, POST /reconstruct.

`?format=png` answers one PNG grid, `?format=json` base64 PNGs with the z each came from.
"""

# No `from __future__ import annotations` in router modules: FastAPI reads the parameter
# annotations at import time, and some refer to local settings (max_batch).

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query, Request, Response
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
from service.api.priors import (
    PriorRequestError,
    choose_prior,
    fitted_labels,
    per_label_z,
    resolve_label,
)
from service.api.scheduling import WorkSize, small_output, small_uploads
from service.api.schemas import (
    DecodeRequest,
    ImageFormat,
    ImagesResponse,
    LabelSamples,
    PerLabelResponse,
    Preprocess,
    PriorName,
    ReconstructResponse,
    SampleResponse,
)
from service.api.uploads import ImageUpload, prepare
from service.imaging import png, tiles
from service.inference.model import Model
from service.process.settings import Settings

AE_SAMPLING_NOTE = (
    "plain autoencoder: it has no prior, so z ~ N(0, t^2 I) may fall outside the region its "
    "encoder uses and decode to non-digits"
)
AE_FITTED_NOTE = (
    "plain autoencoder: N(0, t^2 I) is not a prior it was trained with and may fall outside "
    "the region its encoder uses; prior=fitted samples where its codes lie"
)
MAX_TEMPERATURE = 10.0
MAX_PER_LABEL = 32
_TEXT = {"type": "string"}
SAMPLE_HEADERS: dict[str, Any] = {
    "X-Prior": {
        "description": "the prior that drew z: normal or fitted",
        "schema": {"type": "string", "enum": [p.value for p in PriorName]},
    },
    "X-Labels": {
        "description": "per_label: the rows' labels, in order, comma-separated",
        "schema": _TEXT,
    },
    "X-Note": {"description": "caveats, e.g. a plain AE sampled from N(0, I)", "schema": _TEXT},
    "X-Model": {"description": "the model that answered", "schema": _TEXT},
}


def image_response(
    model: Model,
    decoded: np.ndarray,
    z: np.ndarray,
    fmt: ImageFormat,
    scale: int,
    note: str | None = None,
    prior: PriorName | None = None,
    **extra: Any,
) -> Response:
    """Decoded images as the API answers them: a PNG grid, or JSON (with `prior`, the body is a
    SampleResponse; with `extra` fields, a ReconstructResponse)."""
    pixels = model.to_unit_pixels(decoded)
    headers = {"X-Model": model.name}
    if note:
        headers["X-Note"] = note
    if prior is not None:
        headers["X-Prior"] = prior.value
    if fmt is ImageFormat.png:
        return Response(png.grid_png(pixels, scale), media_type="image/png", headers=headers)
    if prior is not None:
        extra["prior"] = prior
    body_type = (
        SampleResponse if prior is not None else ReconstructResponse if extra else ImagesResponse
    )
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


def sampling_note(model: Model, prior: PriorName) -> str | None:
    """The caveat of sampling a plain AE from N(0, I)."""
    if model.kind != "ae" or prior is not PriorName.normal:
        return None
    return AE_SAMPLING_NOTE if model.prior is None else AE_FITTED_NOTE


def sample_prior(
    model: Model,
    n: int,
    seed: int | None,
    temperature: float,
    fmt: ImageFormat,
    scale: int,
    prior: PriorName | None = None,
    label: int | None = None,
) -> Response:
    """n images decoded from z drawn with `seed` from `prior` (choose_prior's answer: checked;
    None: the model's default) and `label`'s mixture when given."""
    prior = PriorName(model.default_prior) if prior is None else prior
    z = model.sample_z(n, np.random.default_rng(seed), temperature, prior.value, label)
    note = sampling_note(model, prior)
    extra = {} if label is None else {"label": label}
    return image_response(model, model.decode_batch(z), z, fmt, scale, note, prior, **extra)


def sample_per_label(
    model: Model, k: int, seed: int | None, temperature: float, fmt: ImageFormat, scale: int
) -> Response:
    """K images from each label's fitted mixture: a PNG grid of one row per label (in label
    order; header X-Labels lists them), or JSON with each label's row."""
    rows = per_label_z(model, k, seed, temperature)
    z = np.concatenate([row for _, row in rows])
    pixels = model.to_unit_pixels(model.decode_batch(z))
    labels = [label for label, _ in rows]
    headers = {
        "X-Model": model.name,
        "X-Prior": PriorName.fitted.value,
        "X-Labels": ",".join(map(str, labels)),
    }
    if fmt is ImageFormat.png:
        picture = tiles.tiles_png(pixels, k, scale)
        return Response(picture, media_type="image/png", headers=headers)
    images = png.pngs_base64(pixels, scale)
    names = model.label_names
    shares = dict(zip(labels, model.prior.shares, strict=True)) if model.prior else {}
    body = PerLabelResponse(
        model=model.name,
        prior=PriorName.fitted,
        labels=[
            LabelSamples(
                label=label,
                name=names[label],
                share=shares[label],
                images=images[i * k : (i + 1) * k],
                z=row.tolist(),
            )
            for i, (label, row) in enumerate(rows)
        ],
    )
    return JSONResponse(body.model_dump(), headers=headers)


def sampling_choice(
    model: Model, prior: PriorName | None, label: str | None
) -> tuple[PriorName, int | None]:
    """The prior and label number a /sample request gets; a 422 when the model has neither."""
    try:
        number = None if label is None else resolve_label(model, label)
        return choose_prior(model, prior, number), number
    except PriorRequestError as error:
        raise validation_error(["query", error.param], error.message) from None


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
        response_model=SampleResponse | PerLabelResponse,
        summary="Decode random latent vectors",
        responses={200: {**PNG_RESPONSE, "headers": SAMPLE_HEADERS}, **errors(404, 422)},
    )
    async def sample(
        request: Request,
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
                description="the spread: normal: z ~ N(0, temperature^2 I); fitted: each "
                "component's spread times temperature (0: the components' means)",
            ),
        ] = 1.0,
        prior: Annotated[
            PriorName | None,
            Query(
                description="normal: N(0, temperature^2 I); fitted: the model's fitted "
                "Gaussian mixture over its training encodings (models whose /models entry "
                "lists it in priors.available). Default: the model's priors.default"
            ),
        ] = None,
        label: Annotated[
            str | None,
            Query(
                max_length=100,
                description="sample one label's fitted mixture (implies prior=fitted): its "
                "number, or its name from the model's label_names (/models: priors.labels)",
            ),
        ] = None,
        per_label: Annotated[
            int | None,
            Query(
                ge=1,
                le=MAX_PER_LABEL,
                description="K samples of each label's fitted mixture: a PNG grid of one row "
                "per label in label order (header X-Labels), or JSON by label. Not with n or "
                "label",
            ),
        ] = None,
        format: FormatQ = ImageFormat.png,
        scale: ScaleQ = 1,
    ) -> Any:
        """z drawn from a prior and decoded (grayscale or RGB images of the model's H x W):
        N(0, temperature^2 I), or the model's fitted mixture (`prior=fitted`), of one label
        (`label=`) or a row per label (`per_label=K`). The answer says which prior drew it
        (header X-Prior, JSON `prior`). N(0, I) is not a prior the plain AE was trained with:
        the response says so (`note`, header X-Note). Models of more than 16x28x28 pixel values
        per image take a smaller `n` (see /decode)."""
        if per_label is not None:
            return await _sample_per_label(
                request, model, scheduler, per_label, seed, temperature, prior, label, format, scale
            )
        chosen, number = sampling_choice(model, prior, label)
        check_image_count(model, n, max_batch, ["query", "n"])
        check_picture_output(model, n, scale, max_batch)
        size = WorkSize(images=n, small=small_output(n, scale, model.input_shape))
        return await scheduler.run(
            size, sample_prior, model, n, seed, temperature, format, scale, chosen, number
        )

    async def _sample_per_label(
        request: Request,
        model: Model,
        scheduler: Any,
        k: int,
        seed: int | None,
        temperature: float,
        prior: PriorName | None,
        label: str | None,
        fmt: ImageFormat,
        scale: int,
    ) -> Any:
        for name in ("n", "label"):
            if name in request.query_params:
                raise validation_error(
                    ["query", name], f"per_label=K gives K images of each label: leave {name} out"
                )
        if prior is PriorName.normal:
            raise validation_error(
                ["query", "prior"],
                "per_label samples each label's fitted mixture: use prior=fitted or leave "
                "prior out",
            )
        try:
            count = k * len(fitted_labels(model))
        except PriorRequestError as error:
            raise validation_error(["query", error.param], error.message) from None
        check_image_count(model, count, max_batch, ["query", "per_label"])
        check_picture_output(model, count, scale, max_batch)
        size = WorkSize(images=count, small=small_output(count, scale, model.input_shape))
        return await scheduler.run(size, sample_per_label, model, k, seed, temperature, fmt, scale)

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
