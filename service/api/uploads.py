"""Uploaded images: read from the request (multipart or raw bytes), then prepared for a model.

The readers are `async` dependencies (they await the body), so handlers get plain bytes; image
errors become HTTP errors here, with the status each kind of problem deserves.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import Depends, HTTPException, Request
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.deps import get_settings, validation_error
from service.api.schemas import Preprocess
from service.imaging.prepare import PreparationName, prepare_bytes
from service.imaging.uploads import (
    CorruptImageError,
    EmptyImageError,
    ImageInputError,
    ImageTooLargeError,
    NoDigitError,
    UnsupportedImageError,
)
from service.inference.model import Model
from service.process.settings import Settings

UPLOAD_HINT = (
    "send a multipart/form-data upload in field '{field}', or the raw image bytes with "
    "Content-Type image/* (or application/octet-stream)"
)
IMAGE_ERROR_STATUS: dict[type[ImageInputError], int] = {
    EmptyImageError: 400,
    CorruptImageError: 400,
    UnsupportedImageError: 415,
    ImageTooLargeError: 413,
    NoDigitError: 422,
}
PREPARATIONS: dict[Preprocess, PreparationName] = {
    Preprocess.digit: "digit",
    Preprocess.fit: "fit",
    Preprocess.none: "none",
}
# Images come as file parts (bounded by VAE_MAX_UPLOAD_BYTES); text fields are never used, so
# a few small ones are plenty.
MAX_TEXT_FIELDS = 16
MAX_TEXT_FIELD_BYTES = 4096


def preparation_of(model: Model, preprocess: Preprocess) -> PreparationName:
    """The preparation `?preprocess=` chooses for `model` (auto: the model's own, metadata
    input.preparation); a 422 for `digit` on a model that is not 1-channel."""
    if preprocess is Preprocess.auto:
        return model.metadata.input.preparation
    if preprocess is Preprocess.digit and model.channels != 1:
        raise validation_error(
            ["query", "preprocess"],
            f"preprocess=digit is for 1-channel (grayscale) models; model {model.name!r} takes "
            f"{model.channels}-channel (RGB) images: use auto, fit or none",
        )
    return PREPARATIONS[preprocess]


def prepare(
    images: list[bytes], model: Model, preprocess: Preprocess, settings: Settings
) -> np.ndarray:
    """Uploaded bytes -> (N, C, H, W) in the model's convention; image errors as HTTP errors."""
    preparation = preparation_of(model, preprocess)
    arrays = []
    for i, data in enumerate(images):
        try:
            arrays.append(
                prepare_bytes(
                    data,
                    preparation,
                    model.input_shape,
                    settings.max_pixels,
                    model.metadata.input.background,
                )
            )
        except ImageInputError as exc:
            where = f"files[{i}]: " if len(images) > 1 else ""
            raise HTTPException(IMAGE_ERROR_STATUS.get(type(exc), 400), where + str(exc)) from None
    return model.to_model_pixels(np.stack(arrays))


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _has_no_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    if length is not None:
        return length.strip() == "0"
    return "transfer-encoding" not in request.headers


async def _form(request: Request, max_files: int, field: str) -> FormData:
    try:
        return await request.form(
            max_files=max_files, max_fields=MAX_TEXT_FIELDS, max_part_size=MAX_TEXT_FIELD_BYTES
        )
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


ImageUpload = Annotated[bytes, Depends(read_image)]
ImageUploads = Annotated[list[bytes], Depends(read_images)]
