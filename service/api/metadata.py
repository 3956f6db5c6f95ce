"""What is served: GET /models, /models/{name}, its latent points and its figures.

The bodies are the models' metadata.json as validated at load (`ModelMetadata`): the same
definition export writes and the service checks.
"""

import mimetypes

from fastapi import APIRouter, HTTPException, Response
from fastapi.responses import FileResponse

from service.api.deps import RegistryDep, named_model
from service.api.params import PNG_FILE_RESPONSE, errors
from service.api.schemas import LatentPoints, ModelList
from service.inference.format import ModelMetadata


def router() -> APIRouter:
    api = APIRouter(tags=["models"])

    @api.get("/models", response_model=ModelList, summary="Every loaded model's metadata")
    async def list_models(registry: RegistryDep) -> ModelList:
        return ModelList(
            default=registry.default,
            models=[registry.get(name).metadata for name in registry.names],
        )

    @api.get(
        "/models/{name}",
        response_model=ModelMetadata,
        summary="One model's metadata",
        responses=errors(404),
    )
    async def get_model_info(name: str, registry: RegistryDep) -> ModelMetadata:
        return named_model(registry, name).metadata

    @api.get(
        "/models/{name}/latent-points",
        response_model=LatentPoints,
        summary="Encoded held-out images (for a latent-space explorer); z_dim > 2: with "
        "their principal plane",
        responses=errors(404),
    )
    async def latent_points(name: str, registry: RegistryDep) -> Response:
        model = named_model(registry, name)
        if model.latent_points is None:
            raise HTTPException(404, f"model {name!r} has no latent points")
        return Response(model.latent_points, media_type="application/json")

    @api.get(
        "/models/{name}/figures/{file}",
        summary="A figure listed in the model's metadata",
        response_class=FileResponse,
        responses={200: PNG_FILE_RESPONSE, **errors(404)},
    )
    async def figure(name: str, file: str, registry: RegistryDep) -> FileResponse:
        model = named_model(registry, name)
        # Only names listed in metadata.figures (checked to be plain file names at load):
        # nothing else in the folder, and no path can escape it.
        if file not in model.figures:
            raise HTTPException(
                404, f"model {name!r} has no figure {file!r}; figures: {list(model.figures)}"
            )
        media_type = mimetypes.guess_type(file)[0] or "application/octet-stream"
        return FileResponse(model.path / file, media_type=media_type)

    return api
