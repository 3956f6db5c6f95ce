"""Images in, latent codes out: POST /encode and /encode/batch."""

import numpy as np
from fastapi import APIRouter

from service.api.deps import ModelDep, SchedulerDep, check_image_count
from service.api.params import MANY_IMAGES_BODY, ONE_IMAGE_BODY, PreprocessQ, errors
from service.api.scheduling import WorkSize, small_uploads
from service.api.schemas import AeEncoding, BatchEncoding, Encoding, Preprocess, VaeEncoding
from service.api.uploads import ImageUpload, ImageUploads, prepare
from service.inference.model import Model
from service.process.settings import Settings


def encoding_of(model: Model, codes: dict[str, np.ndarray], i: int) -> Encoding:
    """Image `i` of an encoder result as the API's body: mu and log_var, or z."""
    if model.kind == "vae":
        return VaeEncoding(
            model=model.name, mu=codes["mu"][i].tolist(), log_var=codes["log_var"][i].tolist()
        )
    return AeEncoding(model=model.name, z=codes["z"][i].tolist())


def encode_uploads(
    model: Model, images: list[bytes], preprocess: Preprocess, settings: Settings
) -> list[Encoding]:
    codes = model.encode_batch(prepare(images, model, preprocess, settings))
    return [encoding_of(model, codes, i) for i in range(len(images))]


def router(settings: Settings) -> APIRouter:
    api = APIRouter(tags=["encode"])

    # service/api/hot_routes.py answers the well-formed requests of this route without
    # FastAPI's routing: a parameter or behaviour added here must be added there too.
    @api.post(
        "/encode",
        response_model=Encoding,
        summary="Encode one image",
        openapi_extra=ONE_IMAGE_BODY,
        responses=errors(400, 404, 413, 415, 422),
    )
    async def encode(
        model: ModelDep,
        data: ImageUpload,
        scheduler: SchedulerDep,
        preprocess: PreprocessQ = Preprocess.auto,
    ) -> Encoding:
        """One image (any size within VAE_MAX_PIXELS: it is prepared to the model's
        C x H x W) -> `mu` and `log_var` (VAE) or `z` (AE), z_dim numbers each."""
        size = WorkSize(images=1, small=small_uploads([data]))
        items = await scheduler.run(size, encode_uploads, model, [data], preprocess, settings)
        return items[0]

    @api.post(
        "/encode/batch",
        response_model=BatchEncoding,
        summary="Encode several images in one inference",
        description=f"Up to {settings.max_batch} images in repeated field `files` -> one "
        "/encode result per image, in order, from a single onnxruntime call. Models of more "
        "than 16x28x28 pixel values per image take proportionally fewer.",
        openapi_extra=MANY_IMAGES_BODY,
        responses=errors(400, 404, 413, 415, 422),
    )
    async def encode_batch(
        model: ModelDep,
        data: ImageUploads,
        scheduler: SchedulerDep,
        preprocess: PreprocessQ = Preprocess.auto,
    ) -> BatchEncoding:
        check_image_count(model, len(data), settings.max_batch, ["body", "files"])
        size = WorkSize(images=len(data), small=small_uploads(data))
        items = await scheduler.run(size, encode_uploads, model, data, preprocess, settings)
        return BatchEncoding(model=model.name, items=items)

    return api
