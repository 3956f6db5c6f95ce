"""What is served: GET /models, /models/{name}, its latent points, its fitted prior and its
figures.

The bodies are the models' metadata.json as validated at load (`ModelMetadata`): the same
definition export writes and the service checks, with `priors` (what GET /sample can draw
from) added.
"""

import mimetypes

from fastapi import APIRouter, HTTPException, Response
from fastapi.responses import FileResponse

from service.api.deps import RegistryDep, named_model
from service.api.params import PNG_FILE_RESPONSE, errors
from service.api.priors import prior_body, priors_info
from service.api.schemas import LatentPoints, ModelInfo, ModelList, PriorBody
from service.inference.model import Model


def model_info(model: Model) -> ModelInfo:
    """A model's /models entry: its metadata and its priors."""
    return ModelInfo.model_validate(
        {**model.metadata.model_dump(), "priors": priors_info(model).model_dump()}
    )


def router() -> APIRouter:
    api = APIRouter(tags=["models"])

    @api.get("/models", response_model=ModelList, summary="Every loaded model's metadata")
    async def list_models(registry: RegistryDep) -> ModelList:
        return ModelList(
            default=registry.default,
            models=[model_info(registry.get(name)) for name in registry.names],
        )

    @api.get(
        "/models/{name}",
        response_model=ModelInfo,
        summary="One model's metadata, and the priors GET /sample can draw from",
        responses=errors(404),
    )
    async def get_model_info(name: str, registry: RegistryDep) -> ModelInfo:
        return model_info(named_model(registry, name))

    @api.get(
        "/models/{name}/prior",
        response_model=PriorBody,
        summary="The fitted prior: a Gaussian mixture (weights, means, covariances), overall "
        "and per label",
        responses=errors(404),
    )
    async def get_prior(name: str, registry: RegistryDep) -> PriorBody:
        model = named_model(registry, name)
        if model.prior is None:
            raise HTTPException(
                404,
                f"model {name!r} has no fitted prior (GET /sample draws its z from N(0, I))",
            )
        return prior_body(model)

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
