"""The HTTP API. Inference handlers run small requests (an MNIST-sized image, up to 16 images
out) on the event loop, and bigger ones in the thread pool, where onnxruntime releases the GIL
so the loop keeps serving: see `inline_if_small`. Probes are `async` and touch no model."""

import asyncio
import functools
import mimetypes
import struct
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import anyio
import anyio.to_thread
import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse

from service import imaging
from service.config import Settings
from service.deps import (
    ImageUpload,
    ImageUploads,
    ModelDep,
    RegistryDep,
    validation_error,
)
from service.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from service.models import Model
from service.preprocessing import (
    CorruptImageError,
    EmptyImageError,
    ImageInputError,
    ImageTooLargeError,
    NoDigitError,
    UnsupportedImageError,
    preprocess_bytes,
)
from service.schemas import (
    AeEncoding,
    BatchEncoding,
    DecodeRequest,
    Encoding,
    ErrorBody,
    Health,
    ImageFormat,
    ImagesResponse,
    LatentPoints,
    ModelInfo,
    ModelList,
    Preprocess,
    Ready,
    ReconstructResponse,
    VaeEncoding,
)

STATIC_DIR = Path(__file__).resolve().parent / "static"
IMAGE_ERROR_STATUS: dict[type[ImageInputError], int] = {
    EmptyImageError: 400,
    CorruptImageError: 400,
    UnsupportedImageError: 415,
    ImageTooLargeError: 413,
    NoDigitError: 422,
}
AE_SAMPLING_NOTE = (
    "plain autoencoder: it has no prior, so z ~ N(0, t^2 I) may fall outside the region its "
    "encoder uses and decode to non-digits"
)
_BINARY = {"type": "string", "format": "binary"}
ONE_IMAGE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "the image: PNG, JPEG, BMP, GIF (first frame), WebP or TIFF, detected "
        "from its bytes",
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["file"], "properties": {"file": _BINARY}}
            },
            "image/*": {"schema": _BINARY},
            "application/octet-stream": {"schema": _BINARY},
        },
    }
}
MANY_IMAGES_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "1..VAE_MAX_BATCH images, one multipart part each, all in field 'files'",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {"files": {"type": "array", "items": _BINARY}},
                }
            }
        },
    }
}
PNG_RESPONSE = {
    "content": {"image/png": {"schema": _BINARY}},
    "description": "?format=png: one 8-bit grayscale PNG grid (row-major, ceil(sqrt(n)) "
    "columns, 2 px gaps); ?format=json: the JSON body below",
}


# Work small enough to run on the event loop: at most this many images decoded or encoded, and
# this many pixels uploaded (PNG headers) or drawn out (images x (28 x scale)^2). For such a
# request the thread-pool hand-off (anyio queue, thread wake-up, then waiting up to the GIL's
# 5 ms switch interval to take the GIL back from the loop) cost more than the work: /encode
# 1.6 -> 1.0 ms of CPU, /sample?n=16 5.3 -> 4.7 ms (bench/http_load.py, BENCHMARKS.md). With one
# worker process per CPU (the default), running it inline costs no parallelism either.
# Up to INLINE_DIRECT_IMAGES (an /encode, a /reconstruct: well under 1 ms) the work runs at once.
# Above, requests take turns in arrival order, each after one pass of the loop over the
# sockets: uvloop left alone serves connections unfairly when handlers block for milliseconds
# (/sample?n=16 at 32 connections: p50 75 ms but p99 450-630 ms; in turns p99 95-100 ms, at the
# same throughput; a bare uvicorn app that blocks 4.5 ms shows the same p99 on uvloop).
INLINE_DIRECT_IMAGES = 2
INLINE_MAX_IMAGES = 16
INLINE_MAX_PIXELS = 16 * (4 * 28) ** 2  # 16 digits at scale 4, or one 448x448 upload
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def small_uploads(images: list[bytes]) -> bool:
    """PNGs whose headers say they are few and small: cheap to decode and prepare. Any other
    format, or a big PNG (which can hold 40 MP in 200 KB), goes to the thread pool."""
    if len(images) > INLINE_MAX_IMAGES:
        return False
    pixels = 0
    for data in images:
        if len(data) < 24 or not data.startswith(PNG_MAGIC) or data[12:16] != b"IHDR":
            return False
        width, height = struct.unpack(">II", data[16:24])
        pixels += width * height
    return pixels <= INLINE_MAX_PIXELS


def small_output(images: int, scale: int, size: int = 28) -> bool:
    return images <= INLINE_MAX_IMAGES and images * (size * scale) ** 2 <= INLINE_MAX_PIXELS


# Big requests run at most this many at a time per worker process (the others wait their turn
# in order): each worker has about one core, so more threads would only add peak memory (a
# batch of 256 holds ~100 MB of activations while it runs) and GIL contention.
OFFLOAD_THREADS = 2


TOO_BIG = 1 << 62
# Per event loop (tests run several): the turns' lock and the thread limiter.
_loop_state: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, tuple[asyncio.Lock, anyio.CapacityLimiter]
] = weakref.WeakKeyDictionary()


def _turns_and_limiter() -> tuple[asyncio.Lock, anyio.CapacityLimiter]:
    loop = asyncio.get_running_loop()
    state = _loop_state.get(loop)
    if state is None:
        # asyncio.Lock wakes its waiters in the order they came: turns in arrival order.
        state = _loop_state[loop] = (asyncio.Lock(), anyio.CapacityLimiter(OFFLOAD_THREADS))
    return state


def images_if_small(images: int, small: bool) -> int:
    return images if small else TOO_BIG


def inline_if_small(work: Callable[[dict[str, Any]], int]) -> Callable:
    """Decorate a plain `def` handler: FastAPI sees an `async` one (same signature) that calls
    it on the event loop when `work(arguments)` (images of work, TOO_BIG if too big for the
    loop) is at most INLINE_MAX_IMAGES, else in a worker thread (OFFLOAD_THREADS)."""

    def decorate(handler: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(handler)
        async def run(**kwargs: Any) -> Any:
            images = work(kwargs)
            if images <= INLINE_DIRECT_IMAGES:
                return handler(**kwargs)
            turns, limiter = _turns_and_limiter()
            if images <= INLINE_MAX_IMAGES:
                async with turns:
                    await asyncio.sleep(0)  # one pass over the sockets before each turn
                    return handler(**kwargs)
            return await anyio.to_thread.run_sync(
                functools.partial(handler, **kwargs), limiter=limiter
            )

        return run

    return decorate


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody} for code in codes}


FormatQ = Annotated[
    ImageFormat, Query(description="png: one PNG grid; json: base64 PNG per image, plus z")
]
ScaleQ = Annotated[int, Query(ge=1, le=16, description="nearest-neighbour upscaling factor")]
PreprocessQ = Annotated[
    Preprocess,
    Query(
        description="auto: MNIST-style (grayscale, invert light backgrounds, crop, fit 20x20, "
        "centre by mass in 28x28); none: grayscale and resize only"
    ),
]
SeedQ = Annotated[
    int | None,
    Query(ge=0, le=2**64 - 1, description="random seed: same seed, byte-identical output"),
]


def prepare(
    images: list[bytes], model: Model, preprocess: Preprocess, settings: Settings
) -> np.ndarray:
    """Uploaded bytes -> (N, C, H, W) in the model's convention; image errors as HTTP errors."""
    arrays = []
    for i, data in enumerate(images):
        try:
            arrays.append(
                preprocess_bytes(data, preprocess.value, model.image_size, settings.max_pixels)
            )
        except ImageInputError as exc:
            where = f"files[{i}]: " if len(images) > 1 else ""
            raise HTTPException(IMAGE_ERROR_STATUS.get(type(exc), 400), where + str(exc)) from None
    return model.to_model_pixels(np.stack(arrays))


def _encoding(model: Model, codes: dict[str, np.ndarray], i: int) -> Encoding:
    if model.kind == "vae":
        return VaeEncoding(
            model=model.name, mu=codes["mu"][i].tolist(), log_var=codes["log_var"][i].tolist()
        )
    return AeEncoding(model=model.name, z=codes["z"][i].tolist())


def _image_response(
    model: Model,
    decoded: np.ndarray,
    z: np.ndarray,
    fmt: ImageFormat,
    scale: int,
    note: str | None = None,
    **extra: Any,
) -> Response | ImagesResponse:
    pixels = model.to_unit_pixels(decoded)
    headers = {"X-Model": model.name}
    if note:
        headers["X-Note"] = note
    if fmt is ImageFormat.png:
        return Response(imaging.grid_png(pixels, scale), media_type="image/png", headers=headers)
    body_type = ReconstructResponse if extra else ImagesResponse
    body = body_type(
        model=model.name,
        images=imaging.pngs_base64(pixels, scale),
        z=z.tolist(),
        note=note,
        **extra,
    )
    return JSONResponse(body.model_dump(), headers=headers)


def build_router(settings: Settings) -> APIRouter:
    """The API, with the limits of `settings` written into its parameter validation (and so
    into /docs)."""
    router = APIRouter()
    max_batch = settings.max_batch

    @router.post(
        "/encode",
        response_model=Encoding,
        summary="Encode one image",
        openapi_extra=ONE_IMAGE_BODY,
        responses=_errors(400, 404, 413, 415, 422),
    )
    @inline_if_small(lambda kw: images_if_small(1, small_uploads([kw["data"]])))
    def encode(
        model: ModelDep, data: ImageUpload, preprocess: PreprocessQ = Preprocess.auto
    ) -> Encoding:
        """One image -> `mu` and `log_var` (VAE) or `z` (AE)."""
        codes = model.encode_batch(prepare([data], model, preprocess, settings))
        return _encoding(model, codes, 0)

    @router.post(
        "/encode/batch",
        response_model=BatchEncoding,
        summary="Encode several images in one inference",
        description=f"Up to {settings.max_batch} images in repeated field `files` -> one "
        "/encode result per image, in order, from a single onnxruntime call.",
        openapi_extra=MANY_IMAGES_BODY,
        responses=_errors(400, 404, 413, 415, 422),
    )
    @inline_if_small(lambda kw: images_if_small(len(kw["data"]), small_uploads(kw["data"])))
    def encode_batch(
        model: ModelDep, data: ImageUploads, preprocess: PreprocessQ = Preprocess.auto
    ) -> BatchEncoding:
        codes = model.encode_batch(prepare(data, model, preprocess, settings))
        return BatchEncoding(
            model=model.name, items=[_encoding(model, codes, i) for i in range(len(data))]
        )

    @router.post(
        "/decode",
        response_model=ImagesResponse,
        summary="Decode latent vectors to images",
        description=f"1..{settings.max_batch} vectors of the model's z_dim finite numbers "
        "(|value| <= 1e4) -> one image each.",
        responses={200: PNG_RESPONSE, **_errors(404, 413, 422)},
    )
    @inline_if_small(
        lambda kw: images_if_small(len(kw["body"].z), small_output(len(kw["body"].z), kw["scale"]))
    )
    def decode(
        body: DecodeRequest,
        model: ModelDep,
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
        z = np.asarray(body.z, dtype=np.float32)
        return _image_response(model, model.decode_batch(z), z, format, scale)

    @router.get(
        "/sample",
        response_model=ImagesResponse,
        summary="Decode random latent vectors",
        responses={200: PNG_RESPONSE, **_errors(404, 422)},
    )
    @inline_if_small(lambda kw: images_if_small(kw["n"], small_output(kw["n"], kw["scale"])))
    def sample(
        model: ModelDep,
        n: Annotated[int, Query(ge=1, le=max_batch, description="how many images")] = 16,
        seed: SeedQ = None,
        temperature: Annotated[
            float,
            Query(ge=0.0, le=10.0, allow_inf_nan=False, description="z ~ N(0, temperature^2 I)"),
        ] = 1.0,
        format: FormatQ = ImageFormat.png,
        scale: ScaleQ = 1,
    ) -> Any:
        """z ~ N(0, temperature^2 I), decoded. For the plain AE this is not a prior it was
        trained with: the response says so (`note`, header X-Note)."""
        rng = np.random.default_rng(seed)
        z = (rng.standard_normal((n, model.z_dim)) * temperature).astype(np.float32)
        note = AE_SAMPLING_NOTE if model.kind == "ae" else None
        return _image_response(model, model.decode_batch(z), z, format, scale, note)

    @router.post(
        "/reconstruct",
        response_model=ReconstructResponse,
        summary="Encode then decode one image",
        openapi_extra=ONE_IMAGE_BODY,
        responses={200: PNG_RESPONSE, **_errors(400, 404, 413, 415, 422)},
    )
    @inline_if_small(
        lambda kw: images_if_small(2, small_uploads([kw["data"]]) and small_output(1, kw["scale"]))
    )
    def reconstruct(
        model: ModelDep,
        data: ImageUpload,
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
        if format is ImageFormat.png:
            return _image_response(model, decoded, z, format, scale)
        seen, out = model.to_unit_pixels(x), model.to_unit_pixels(decoded)
        extra["mse"] = float(np.mean((seen - out) ** 2))
        extra["input"] = imaging.pngs_base64(seen, scale)[0]
        return _image_response(model, decoded, z, format, scale, **extra)

    @router.get("/models", response_model=ModelList, summary="Every loaded model's metadata")
    async def list_models(registry: RegistryDep) -> ModelList:
        return ModelList(
            default=registry.default,
            models=[ModelInfo(**registry.get(name).metadata) for name in registry.names],
        )

    @router.get(
        "/models/{name}",
        response_model=ModelInfo,
        summary="One model's metadata",
        responses=_errors(404),
    )
    async def get_model_info(name: str, registry: RegistryDep) -> ModelInfo:
        return ModelInfo(**_named(registry, name).metadata)

    @router.get(
        "/models/{name}/latent-points",
        response_model=LatentPoints,
        summary="Encoded validation digits (for a latent-space explorer)",
        responses=_errors(404),
    )
    async def latent_points(name: str, registry: RegistryDep) -> Response:
        model = _named(registry, name)
        if model.latent_points is None:
            raise HTTPException(404, f"model {name!r} has no latent points")
        return Response(model.latent_points, media_type="application/json")

    @router.get(
        "/models/{name}/figures/{file}",
        summary="A figure listed in the model's metadata",
        response_class=FileResponse,
        responses={200: {"content": {"image/png": {"schema": _BINARY}}}, **_errors(404)},
    )
    async def figure(name: str, file: str, registry: RegistryDep) -> FileResponse:
        model = _named(registry, name)
        # Only names listed in metadata.figures (checked to be plain file names at load):
        # nothing else in the folder, and no path can escape it.
        if file not in model.figures:
            raise HTTPException(
                404, f"model {name!r} has no figure {file!r}; figures: {list(model.figures)}"
            )
        media_type = mimetypes.guess_type(file)[0] or "application/octet-stream"
        return FileResponse(model.path / file, media_type=media_type)

    @router.get("/", include_in_schema=False)
    async def root() -> Response:
        # The latent-space explorer page, once service/static/index.html exists; the API docs
        # until then.
        page = STATIC_DIR / "index.html"
        if page.is_file():
            return FileResponse(page, media_type="text/html")
        return RedirectResponse("/docs")

    @router.get("/healthz", response_model=Health, summary="Liveness (no model work)")
    async def healthz() -> Health:
        return Health(status="ok")

    @router.get(
        "/readyz",
        response_model=Ready,
        summary="Readiness: every model loaded and warmed up",
        responses=_errors(503),
    )
    async def readyz(request: Request) -> Any:
        registry = getattr(request.app.state, "registry", None)
        if not getattr(request.app.state, "ready", False) or registry is None:
            return JSONResponse({"detail": "not ready: models are loading"}, status_code=503)
        return Ready(status="ready", models=registry.names)

    @router.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {METRICS_CONTENT_TYPE: {"schema": {"type": "string"}}}}},
    )
    async def metrics(request: Request) -> Response:
        return Response(request.app.state.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    return router


def _named(registry: Any, name: str) -> Model:
    if name not in registry:
        raise HTTPException(404, f"unknown model {name!r}; known models: {registry.names}")
    return registry.get(name)
