"""FastAPI dependencies: settings, the model registry, the chosen model, uploaded image bytes.

Routes take them through the `Annotated` aliases at the bottom. The upload readers are `async`
(they await the body) so the sync inference handlers receive plain bytes.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.config import Settings
from service.models import Model, ModelRegistry

UPLOAD_HINT = (
    "send a multipart/form-data upload in field '{field}', or the raw image bytes with "
    "Content-Type image/* (or application/octet-stream)"
)


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_registry(request: Request) -> ModelRegistry:
    registry = getattr(request.app.state, "registry", None)
    if registry is None:  # only before start-up finished
        raise HTTPException(503, "models are not loaded yet")
    return registry


RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_model(
    registry: RegistryDep,
    model: Annotated[
        str | None,
        Query(description="model name (see GET /models); default: VAE_DEFAULT_MODEL"),
    ] = None,
) -> Model:
    name = registry.default if model is None else model
    if name not in registry:
        raise HTTPException(404, f"unknown model {name!r}; known models: {registry.names}")
    return registry.get(name)


def validation_error(loc: list[str | int], msg: str, kind: str = "value_error") -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors (never echoing the input)."""
    return HTTPException(422, [{"type": kind, "loc": loc, "msg": msg}])


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _has_no_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    if length is not None:
        return length.strip() == "0"
    return "transfer-encoding" not in request.headers


async def _form(request: Request, max_files: int, field: str):
    try:
        # Images come as file parts (bounded by VAE_MAX_UPLOAD_BYTES); text fields are never
        # used, so a few small ones are plenty.
        return await request.form(max_files=max_files, max_fields=16, max_part_size=4096)
    except StarletteHTTPException as exc:  # Starlette's, which FastAPI's subclasses
        if exc.status_code == 400 and str(exc.detail).startswith("Too many files"):
            raise validation_error(
                ["body", field], f"at most {max_files} file(s) in field {field!r}"
            ) from None
        raise


async def _raw_body(request: Request, field: str) -> bytes:
    """The body as image bytes, after checking that it is meant to be one."""
    media = _media_type(request)
    if _has_no_body(request):
        raise HTTPException(400, "empty body: " + UPLOAD_HINT.format(field=field))
    if not (media.startswith("image/") or media == "application/octet-stream"):
        raise HTTPException(
            415,
            f"Content-Type {media or '(none)'!r} is not accepted: "
            + UPLOAD_HINT.format(field=field),
        )
    data = await request.body()
    if not data:
        raise HTTPException(400, "empty body: " + UPLOAD_HINT.format(field=field))
    return data


async def _file_bytes(value: UploadFile | str, loc: list[str | int]) -> bytes:
    if not isinstance(value, UploadFile):
        raise validation_error(loc, "expected a file upload, got a text field")
    return await value.read()


async def read_image(request: Request) -> bytes:
    """One image: multipart field `file`, or the raw body with an image/* Content-Type."""
    if _media_type(request) != "multipart/form-data":
        return await _raw_body(request, "file")
    form = await _form(request, max_files=1, field="file")
    try:
        value = form.get("file")
        if value is None:
            raise validation_error(["body", "file"], "Field required", "missing")
        return await _file_bytes(value, ["body", "file"])
    finally:
        await form.close()


async def read_images(request: Request) -> list[bytes]:
    """Several images: repeated multipart field `files` (at most VAE_MAX_BATCH)."""
    settings = get_settings(request)
    if _media_type(request) != "multipart/form-data":
        if _has_no_body(request):
            raise HTTPException(400, "empty body: send multipart/form-data with field 'files'")
        raise HTTPException(
            415,
            "send the images as multipart/form-data, one part per image in field 'files'",
        )
    form = await _form(request, max_files=settings.max_batch, field="files")
    try:
        values = form.getlist("files")
        if not values:
            raise validation_error(["body", "files"], "Field required", "missing")
        return [await _file_bytes(v, ["body", "files", i]) for i, v in enumerate(values)]
    finally:
        await form.close()


ModelDep = Annotated[Model, Depends(get_model)]
ImageUpload = Annotated[bytes, Depends(read_image)]
ImageUploads = Annotated[list[bytes], Depends(read_images)]
