"""The latent space as the book analyses it: POST /interpolate, GET /manifold.

`?format=png` answers one PNG (a strip in path order, or the n x n grid), `?format=json` the
latent vectors with one base64 PNG per image.
"""

# No `from __future__ import annotations` in router modules: FastAPI reads the parameter
# annotations at import time.

import json
import math
import re
import threading
from collections import OrderedDict
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from service.api.analysis_schemas import (
    InterpolateRequest,
    InterpolateResponse,
    InterpolationMethod,
    ManifoldResponse,
)
from service.api.deps import ModelDep, SchedulerDep, validation_error
from service.api.params import FormatQ, PreprocessQ, ScaleQ, errors
from service.api.scheduling import WorkSize, small_output, small_uploads
from service.api.schemas import MAX_LIST, Z_LIMIT, ImageFormat, Preprocess
from service.api.uploads import _file_bytes, _form, _has_no_body, _media_type, prepare
from service.imaging import png
from service.imaging.tiles import tiles_png
from service.inference.latent import interpolate, manifold_grid
from service.inference.model import Model
from service.process.settings import Settings

# Largest picture (or all of a JSON answer's images together) in pixels: 4096 x 4096.
MAX_OUTPUT_PIXELS = 4096 * 4096
MAX_STEPS = 64
MAX_MANIFOLD_N = 30
# Vectors per decoder call for a manifold (up to 30 x 30 = 900 of them).
DECODE_CHUNK = 256
_BINARY = {"type": "string", "format": "binary"}
INTERPOLATE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "two latent vectors as JSON, or two images (multipart fields `start` and "
        "`end`, each prepared as for /encode and encoded to its mean: VAE mu, AE z)",
        "content": {
            "application/json": {"schema": InterpolateRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["start", "end"],
                    "properties": {"start": _BINARY, "end": _BINARY},
                }
            },
        },
    }
}
STRIP_RESPONSE: dict[str, Any] = {
    "content": {"image/png": {"schema": _BINARY}},
    "description": "?format=png: one 8-bit grayscale PNG strip, one cell per step in path "
    "order (first = decode(start), last = decode(end)), 2 px gaps; ?format=json: the body below",
}
MANIFOLD_RESPONSE: dict[str, Any] = {
    "content": {"image/png": {"schema": _BINARY}},
    "description": "?format=png: one 8-bit grayscale PNG, n x n cells with 2 px gaps (top row: "
    "the largest z[j]; left column: the smallest z[i]); ?format=json: the body below",
}
Endpoints = InterpolateRequest | tuple[bytes, bytes]


def _body_error(loc: list[str | int], msg: str, kind: str = "value_error") -> dict[str, Any]:
    return {"type": kind, "loc": loc, "msg": msg}


async def read_endpoints(request: Request) -> Endpoints:
    """The two ends of an interpolation: a JSON InterpolateRequest, or the bytes of two images
    from multipart fields `start` and `end`."""
    media = _media_type(request)
    if media == "multipart/form-data":
        form = await _form(request, max_files=2, field="start")
        try:
            missing = [name for name in ("start", "end") if form.get(name) is None]
            if missing:
                detail = [
                    _body_error(["body", name], "Field required", "missing") for name in missing
                ]
                raise HTTPException(422, detail)
            parts = []
            for name in ("start", "end"):
                value = form.get(name)
                assert value is not None
                parts.append(await _file_bytes(value, ["body", name]))
            return parts[0], parts[1]
        finally:
            await form.close()
    if _has_no_body(request):
        raise HTTPException(422, [_body_error(["body"], "Field required", "missing")])
    if media != "application/json":
        raise HTTPException(
            415,
            f"Content-Type {media or '(none)'!r} is not accepted: send JSON "
            '{"start": [...], "end": [...]}, or multipart/form-data with image fields '
            "'start' and 'end'",
        )
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise HTTPException(
            422, [_body_error(["body"], "the body is not valid JSON", "json_invalid")]
        ) from None
    try:
        return InterpolateRequest.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(
            [{"type": e["type"], "loc": ("body", *e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        ) from None


EndpointsDep = Annotated[Endpoints, Depends(read_endpoints)]


def check_output_size(images: int, size: int, scale: int) -> None:
    if images * (size * scale) ** 2 > MAX_OUTPUT_PIXELS:
        raise validation_error(
            ["query", "scale"],
            f"{images} images of {size * scale}x{size * scale} pixels exceed the "
            f"{MAX_OUTPUT_PIXELS} pixels one answer may hold: use a smaller scale",
        )


def check_vector(model: Model, vector: list[float], loc: list[str | int]) -> None:
    if len(vector) != model.z_dim:
        raise validation_error(
            loc,
            f"model {model.name!r} needs vectors of z_dim={model.z_dim} numbers, got {len(vector)}",
        )


def decode_chunks(model: Model, z: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [model.decode_batch(z[i : i + DECODE_CHUNK]) for i in range(0, len(z), DECODE_CHUNK)]
    )


def _headers(model: Model, note: str | None) -> dict[str, str]:
    headers = {"X-Model": model.name}
    if note:
        headers["X-Note"] = note
    return headers


def interpolate_path(
    model: Model,
    endpoints: Endpoints,
    steps: int,
    method: InterpolationMethod,
    preprocess: Preprocess,
    fmt: ImageFormat,
    scale: int,
    settings: Settings,
) -> Response:
    if isinstance(endpoints, InterpolateRequest):
        start = np.asarray(endpoints.start, np.float32)
        end = np.asarray(endpoints.end, np.float32)
        kind = "latent"
    else:
        means = model.encode_mean(prepare(list(endpoints), model, preprocess, settings))
        start, end = means[0], means[1]
        kind = "images"
    path, used, note = interpolate(start, end, steps, method.value)
    pixels = model.to_unit_pixels(model.decode_batch(path))
    headers = _headers(model, note)
    if fmt is ImageFormat.png:
        return Response(tiles_png(pixels, steps, scale), media_type="image/png", headers=headers)
    body = InterpolateResponse(
        model=model.name,
        method=method,
        used=InterpolationMethod(used),
        endpoints=kind,
        t=np.linspace(0.0, 1.0, steps).tolist(),
        z=path.tolist(),
        norms=np.linalg.norm(path.astype(np.float64), axis=1).tolist(),
        images=png.pngs_base64(pixels, scale),
        note=note,
    )
    return JSONResponse(body.model_dump(), headers=headers)


def decode_manifold(
    model: Model,
    n: int,
    p_min: float,
    p_max: float,
    dims: tuple[int, int],
    base: np.ndarray | None,
    fmt: ImageFormat,
    scale: int,
) -> Response:
    grid, axis = manifold_grid(model.z_dim, n, p_min, p_max, dims, base)
    pixels = model.to_unit_pixels(decode_chunks(model, grid.reshape(n * n, model.z_dim)))
    note = None
    if model.kind == "ae":
        note = (
            "plain autoencoder: it has no prior, so normal quantiles need not cover the "
            "region its encoder uses"
        )
    headers = _headers(model, note)
    if fmt is ImageFormat.png:
        return Response(tiles_png(pixels, n, scale), media_type="image/png", headers=headers)
    base_values = np.zeros(model.z_dim) if base is None else np.asarray(base, np.float64)
    body = ManifoldResponse(
        model=model.name,
        n=n,
        dims=list(dims),
        p=np.linspace(p_min, p_max, n).tolist(),
        axis=axis.tolist(),
        base=base_values.tolist(),
        z=grid.tolist(),
        images=png.pngs_base64(pixels, scale),
        note=note,
    )
    return JSONResponse(body.model_dump(), headers=headers)


class ResponseCache:
    """The last few manifold answers of this process (each is the same bytes every time for
    the same model and parameters: no randomness), small ones only."""

    def __init__(self, size: int = 16, max_bytes: int = 1 << 20) -> None:
        self.size, self.max_bytes = size, max_bytes
        self.items: OrderedDict[tuple[Any, ...], tuple[bytes, str, dict[str, str]]] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: tuple[Any, ...]) -> Response | None:
        with self.lock:
            hit = self.items.get(key)
            if hit is None:
                return None
            self.items.move_to_end(key)
        body, media_type, headers = hit
        return Response(body, media_type=media_type, headers=headers)

    def put(self, key: tuple[Any, ...], response: Response) -> Response:
        body = bytes(response.body)
        if len(body) <= self.max_bytes:
            headers = {k: v for k, v in response.headers.items() if k.startswith("x-")}
            with self.lock:
                self.items[key] = (body, response.media_type or "application/json", headers)
                while len(self.items) > self.size:
                    self.items.popitem(last=False)
        return response


MANIFOLDS = ResponseCache()


def cached_manifold(key: tuple[Any, ...], *args: Any) -> Response:
    return MANIFOLDS.put(key, decode_manifold(*args))


def parse_dims(text: str | None, model: Model) -> tuple[int, int]:
    if model.z_dim < 2:
        raise validation_error(
            ["query", "model"],
            f"model {model.name!r} has z_dim={model.z_dim}: a manifold needs two dimensions",
        )
    if text is None:
        return 0, 1
    i, j = (int(part) for part in text.split(","))
    if i == j or max(i, j) >= model.z_dim:
        raise validation_error(
            ["query", "dims"],
            f"two different dimensions in 0..{model.z_dim - 1} (model {model.name!r} has "
            f"z_dim={model.z_dim}), e.g. dims=0,1",
        )
    return i, j


def parse_base(text: str | None, model: Model) -> np.ndarray | None:
    if text is None:
        return None
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise validation_error(
            ["query", "base"], "comma-separated numbers, one per latent dimension"
        ) from None
    if len(values) != model.z_dim:
        raise validation_error(
            ["query", "base"],
            f"model {model.name!r} needs z_dim={model.z_dim} numbers, got {len(values)}",
        )
    if not all(math.isfinite(v) and abs(v) <= Z_LIMIT for v in values):
        raise validation_error(["query", "base"], f"finite numbers with |value| <= {Z_LIMIT:g}")
    return np.asarray(values, np.float64)


DIMS_PATTERN = re.compile(r"^[0-9]{1,5},[0-9]{1,5}$")


def router(settings: Settings) -> APIRouter:
    api = APIRouter(tags=["latent space"])

    @api.post(
        "/interpolate",
        response_model=InterpolateResponse,
        summary="Decode a path between two points or two images",
        description="Between two latent vectors (JSON `{start, end}`) or two images (multipart "
        "`start`, `end`, encoded to their mean: VAE mu, AE z). `linear`: a straight line. "
        "`slerp`: the direction along the great circle, |z| linear from |start| to |end|, so "
        "points at the typical radius of N(0, I) stay there; it falls back to linear (and says "
        "so in `note` and X-Note) when start and end are (anti)parallel or one is near zero. "
        "The first image is exactly decode(start), the last decode(end).",
        openapi_extra=INTERPOLATE_BODY,
        responses={200: STRIP_RESPONSE, **errors(400, 404, 413, 415, 422)},
    )
    async def interpolate_route(
        model: ModelDep,
        endpoints: EndpointsDep,
        scheduler: SchedulerDep,
        steps: Annotated[
            int, Query(ge=2, le=MAX_STEPS, description="points on the path, ends included")
        ] = 10,
        method: Annotated[
            InterpolationMethod, Query(description="linear or slerp (spherical)")
        ] = InterpolationMethod.linear,
        preprocess: PreprocessQ = Preprocess.auto,
        format: FormatQ = ImageFormat.png,
        scale: ScaleQ = 1,
    ) -> Any:
        if isinstance(endpoints, InterpolateRequest):
            check_vector(model, endpoints.start, ["body", "start"])
            check_vector(model, endpoints.end, ["body", "end"])
            small = small_output(steps, scale, model.image_size)
        else:
            small = small_uploads(list(endpoints)) and small_output(steps, scale, model.image_size)
        check_output_size(steps, model.image_size, scale)
        encodes = 0 if isinstance(endpoints, InterpolateRequest) else 2
        size = WorkSize(images=steps + encodes, small=small)
        return await scheduler.run(
            size,
            interpolate_path,
            model,
            endpoints,
            steps,
            method,
            preprocess,
            format,
            scale,
            settings,
        )

    @api.get(
        "/manifold",
        response_model=ManifoldResponse,
        summary="Decode the book's grid of normal quantiles",
        description="An n x n grid of z at z = Phi^-1(p), p evenly spaced from p_min to p_max, "
        "over two latent dimensions (`dims`, default 0,1); the others at 0 or at `base`'s "
        "values. Each cell holds equal prior mass under N(0, I).",
        responses={200: MANIFOLD_RESPONSE, **errors(404, 422)},
    )
    async def manifold_route(
        model: ModelDep,
        scheduler: SchedulerDep,
        n: Annotated[
            int, Query(ge=2, le=MAX_MANIFOLD_N, description="cells per side (n x n images)")
        ] = 20,
        p_min: Annotated[
            float, Query(gt=0.0, lt=1.0, allow_inf_nan=False, description="first probability")
        ] = 0.05,
        p_max: Annotated[
            float, Query(gt=0.0, lt=1.0, allow_inf_nan=False, description="last probability")
        ] = 0.95,
        dims: Annotated[
            str | None,
            Query(
                pattern=DIMS_PATTERN.pattern,
                description="i,j: the dimensions along columns (z[i]) and rows (z[j]); default 0,1",
            ),
        ] = None,
        base: Annotated[
            str | None,
            Query(
                max_length=MAX_LIST * 32,
                description="z_dim comma-separated numbers for the other dimensions "
                "(default: zeros; its values at `dims` are ignored)",
            ),
        ] = None,
        format: FormatQ = ImageFormat.png,
        scale: ScaleQ = 1,
    ) -> Any:
        if not p_min < p_max:
            raise validation_error(["query", "p_max"], "p_max must be greater than p_min")
        pair = parse_dims(dims, model)
        vector = parse_base(base, model)
        check_output_size(n * n, model.image_size, scale)
        key = (
            model.name,
            model.metadata.decoder.sha256,
            n,
            p_min,
            p_max,
            pair,
            None if vector is None else vector.tobytes(),
            format.value,
            scale,
        )
        hit = MANIFOLDS.get(key)
        if hit is not None:
            return hit
        size = WorkSize(images=n * n, small=small_output(n * n, scale, model.image_size))
        return await scheduler.run(
            size, cached_manifold, key, model, n, p_min, p_max, pair, vector, format, scale
        )

    return api
