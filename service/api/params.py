"""What several routers share: query parameters, OpenAPI request bodies, error responses.

Limits that come from settings are written into each router's own parameters (so /docs shows
the configured values); the ones here are fixed.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query

from service.api.schemas import ErrorBody, ImageFormat, Preprocess

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
PNG_RESPONSE: dict[str, Any] = {
    "content": {"image/png": {"schema": _BINARY}},
    "description": "?format=png: one 8-bit PNG grid, grayscale for 1-channel models and RGB "
    "for 3-channel ones (row-major, ceil(sqrt(n)) columns, 2 px gaps, cells of the model's "
    "H x W); ?format=json: the JSON body below",
}
PNG_FILE_RESPONSE: dict[str, Any] = {"content": {"image/png": {"schema": _BINARY}}}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error statuses, each a JSON `ErrorBody`."""
    return {code: {"model": ErrorBody} for code in codes}


FormatQ = Annotated[
    ImageFormat, Query(description="png: one PNG grid; json: base64 PNG per image, plus z")
]
ScaleQ = Annotated[int, Query(ge=1, le=16, description="nearest-neighbour upscaling factor")]
PreprocessQ = Annotated[
    Preprocess,
    Query(
        description="auto (default): the model's own preparation (metadata "
        "input.preparation); digit: MNIST-style, 1-channel models only (grayscale, invert "
        "light backgrounds, crop to the ink, fit a box of 20/28 of H and W, centre by mass: "
        "20x20 in 28x28); fit: convert to the model's channels (grayscale or RGB), resize the "
        "shorter side to fit and centre-crop to H x W; none: convert and resize to H x W "
        "(for a grayscale model: grayscale and resize only)"
    ),
]
SeedQ = Annotated[
    int | None,
    Query(ge=0, le=2**64 - 1, description="random seed: same seed, byte-identical output"),
]
