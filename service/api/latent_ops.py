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
    ManifoldPlane,
    ManifoldResponse,
)
from service.api.deps import ModelDep, SchedulerDep, chunk_for, validation_error
from service.api.params import FormatQ, PreprocessQ, ScaleQ, errors
from service.api.scheduling import WorkSize, small_output, small_uploads
from service.api.schemas import MAX_LIST, Z_LIMIT, ImageFormat, Preprocess
from service.api.uploads import _file_bytes, _form, _has_no_body, _media_type, prepare
from service.imaging import png
from service.imaging.tiles import tiles_png
from service.inference.latent import interpolate, manifold_grid, plane_grid
from service.inference.model import LatentPlane, Model
from service.process.settings import Settings

# Largest picture (or all of a JSON answer's images together) in pixel values (C * H * W per
# image): 4096 x 4096 grayscale.
MAX_OUTPUT_PIXELS = 4096 * 4096
MAX_STEPS = 64
MAX_MANIFOLD_N = 30
# Vectors per decoder call for a manifold (up to 30 x 30 = 900 of them; fewer for models of
# big images: deps.chunk_for).
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
    "description": "?format=png: one 8-bit PNG strip (grayscale for 1-channel models, RGB for "
    "3-channel ones), one cell of the model's H x W per step in path order (first = "
    "decode(start), last = decode(end)), 2 px gaps; ?format=json: the body below",
}
MANIFOLD_RESPONSE: dict[str, Any] = {
    "content": {"image/png": {"schema": _BINARY}},
    "description": "?format=png: one 8-bit PNG (grayscale for 1-channel models, RGB for "
    "3-channel ones), n x n cells of the model's H x W with 2 px gaps (top row: the largest "
    "z[j], or v on the principal plane; left column: the smallest z[i], or u); header "
    "X-Manifold-Plane: dims or principal; ?format=json: the body below",
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


def check_output_size(images: int, model: Model, scale: int, fewer: str = "") -> None:
    """A 422 when `images` of the model's C x H x W at `scale` hold more than
    MAX_OUTPUT_PIXELS pixel values."""
    channels, height, width = model.input_shape
    if images * channels * height * width * scale * scale > MAX_OUTPUT_PIXELS:
        size = f"{height * scale}x{width * scale}" + (" RGB" if channels == 3 else "")
        raise validation_error(
            ["query", "scale"],
            f"{images} images of {size} pixels exceed the {MAX_OUTPUT_PIXELS} pixel values "
            f"one answer may hold: use a smaller scale{fewer}",
        )


def check_vector(model: Model, vector: list[float], loc: list[str | int]) -> None:
    if len(vector) != model.z_dim:
        raise validation_error(
            loc,
            f"model {model.name!r} needs vectors of z_dim={model.z_dim} numbers, got {len(vector)}",
        )


def decode_chunks(model: Model, z: np.ndarray) -> np.ndarray:
    chunk = chunk_for(model, DECODE_CHUNK)
    return np.concatenate([model.decode_batch(z[i : i + chunk]) for i in range(0, len(z), chunk)])


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


def manifold_note(
    model: Model, dims: tuple[int, int], base: np.ndarray | None, plane: LatentPlane | None
) -> str | None:
    """What the answer should say: a plain AE's missing prior; for z_dim > 2, which plane of
    the latent space the grid shows."""
    notes = []
    if model.kind == "ae":
        notes.append(
            "plain autoencoder: it has no prior, so normal quantiles need not cover the "
            "region its encoder uses"
        )
    if plane is not None:
        first, second = plane.explained
        notes.append(
            f"z_dim {model.z_dim}: the grid spans the principal plane of the model's latent "
            f"points, z = origin + u a1 + v a2 (a1, a2 explain {100 * first:.0f}% and "
            f"{100 * second:.0f}% of their variance)"
        )
    elif model.z_dim > 2:
        rest = "at base's values" if base is not None else "at 0"
        hint = (
            "; plane=principal spans the latent points' principal plane"
            if model.plane is not None
            else " (the model's latent points carry no principal plane)"
        )
        notes.append(
            f"z_dim {model.z_dim}: the grid varies z[{dims[0]}] and z[{dims[1]}], the other "
            f"{model.z_dim - 2} dimensions {rest}{hint}"
        )
    return "; ".join(notes) or None


def decode_manifold(
    model: Model,
    n: int,
    p_min: float,
    p_max: float,
    dims: tuple[int, int],
    base: np.ndarray | None,
    plane: LatentPlane | None,
    fmt: ImageFormat,
    scale: int,
) -> Response:
    if plane is None:
        grid, axis = manifold_grid(model.z_dim, n, p_min, p_max, dims, base)
    else:
        grid, axis = plane_grid(np.asarray(plane.origin), np.asarray(plane.axes), n, p_min, p_max)
    pixels = model.to_unit_pixels(decode_chunks(model, grid.reshape(n * n, model.z_dim)))
    note = manifold_note(model, dims, base, plane)
    headers = _headers(model, note)
    headers["X-Manifold-Plane"] = "dims" if plane is None else "principal"
    if fmt is ImageFormat.png:
        return Response(tiles_png(pixels, n, scale), media_type="image/png", headers=headers)
    if plane is None:
        base_values = np.zeros(model.z_dim) if base is None else np.asarray(base, np.float64)
        where: dict[str, Any] = {"plane": "dims", "dims": list(dims), "base": base_values.tolist()}
    else:
        where = {
            "plane": "principal",
            "dims": None,
            "base": list(plane.origin),
            "origin": list(plane.origin),
            "axes": [list(axis) for axis in plane.axes],
            "explained": list(plane.explained),
        }
    body = ManifoldResponse(
        model=model.name,
        n=n,
        p=np.linspace(p_min, p_max, n).tolist(),
        axis=axis.tolist(),
        z=grid.tolist(),
        images=png.pngs_base64(pixels, scale),
        note=note,
        **where,
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


def choose_plane(
    plane: ManifoldPlane, model: Model, dims: str | None, base: str | None
) -> LatentPlane | None:
    """The principal plane to span (plane=principal), or None for the book's grid over two
    dimensions (plane=dims, the default)."""
    if plane is ManifoldPlane.dims:
        return None
    if model.plane is None:
        raise validation_error(
            ["query", "plane"],
            f"model {model.name!r} has no principal plane: its latent points "
            f"({model.metadata.latent_points or 'none'}) carry none (models with z_dim > 2 "
            "exported by vae-export do); use plane=dims",
        )
    for name, value in (("dims", dims), ("base", base)):
        if value is not None:
            raise validation_error(
                ["query", name], f"{name} is for plane=dims; plane=principal fixes the plane"
            )
    return model.plane


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
            small = small_output(steps, scale, model.input_shape)
        else:
            small = small_uploads(list(endpoints)) and small_output(steps, scale, model.input_shape)
        check_output_size(steps, model, scale, " or fewer steps")
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
        "values. Each cell holds equal prior mass under N(0, I). Models with z_dim > 2: the "
        "default is still that grid over z[0], z[1] with the other dimensions at 0 (the "
        "answer's `note` and X-Note say so); `plane=principal` spans instead the principal "
        "plane of the model's latent points (latent_points.json `plane`, written by "
        "vae-export for z_dim > 2): z = origin + u a1 + v a2 with u, v the same quantiles, "
        "`origin` the points' mean and a1, a2 their two principal directions (the plane the "
        "explorer draws). Every cell is an image of the model's C x H x W (grayscale or RGB); "
        f"n x n x C x H x W x scale^2 is at most {MAX_OUTPUT_PIXELS} pixel values.",
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
        plane: Annotated[
            ManifoldPlane,
            Query(
                description="dims (default): the grid over `dims`, the rest at `base`; "
                "principal: over the principal plane of the model's latent points (z_dim > 2 "
                "models whose latent points carry one; not with dims or base)"
            ),
        ] = ManifoldPlane.dims,
        format: FormatQ = ImageFormat.png,
        scale: ScaleQ = 1,
    ) -> Any:
        if not p_min < p_max:
            raise validation_error(["query", "p_max"], "p_max must be greater than p_min")
        chosen = choose_plane(plane, model, dims, base)
        pair = parse_dims(dims, model)
        vector = parse_base(base, model)
        check_output_size(n * n, model, scale, " or a smaller n")
        key = (
            model.name,
            model.metadata.decoder.sha256,
            n,
            p_min,
            p_max,
            pair,
            None if vector is None else vector.tobytes(),
            plane.value,
            format.value,
            scale,
        )
        hit = MANIFOLDS.get(key)
        if hit is not None:
            return hit
        size = WorkSize(images=n * n, small=small_output(n * n, scale, model.input_shape))
        return await scheduler.run(
            size, cached_manifold, key, model, n, p_min, p_max, pair, vector, chosen, format, scale
        )

    return api
