"""How well a model explains an image: POST /score and /score/batch.

JSON by default (`?format=json`): the ELBO's terms and the importance-weighted log p(x) in nats
(VAE), bits per dimension, the reconstruction, its error map and MSE, and a typicality verdict
against held-out images (metadata `typicality`). `?format=png` answers the error map(s) alone.
The scoring math is `service.inference.scoring`, which export uses for the held-out reference.
"""

# No `from __future__ import annotations` in router modules: FastAPI reads the parameter
# annotations at import time, and some refer to local settings (max_batch).

import base64
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse

from service.api.analysis_schemas import (
    LikelihoodInfo,
    ScoreBatchResponse,
    ScoreResult,
    TypicalityVerdict,
)
from service.api.deps import (
    ModelDep,
    SchedulerDep,
    check_image_count,
    check_picture_output,
    chunk_for,
    validation_error,
)
from service.api.params import MANY_IMAGES_BODY, ONE_IMAGE_BODY, PreprocessQ, ScaleQ, SeedQ, errors
from service.api.scheduling import WorkSize, small_uploads
from service.api.schemas import ImageFormat, Preprocess
from service.api.uploads import ImageUpload, ImageUploads, prepare
from service.imaging import png
from service.imaging.tiles import error_map_grid_png, error_map_pngs
from service.inference import scoring
from service.inference.model import Model
from service.process.settings import Settings

# Posterior samples one /score/batch may decode in all (files x k): ~10 s of one core.
MAX_BATCH_SAMPLES = 20_000
_BINARY = {"type": "string", "format": "binary"}
ERROR_MAP_RESPONSE: dict[str, Any] = {
    "content": {"image/png": {"schema": _BINARY}},
    "description": "?format=json (default): the JSON body below; ?format=png: the error map "
    "as an 8-bit RGB PNG (a grid of them for a batch: ceil(sqrt(n)) columns, 2 px gaps): "
    "brightness |reconstruction - input|, red = input ink the reconstruction lacks, blue = "
    "ink it adds (RGB models: the root mean square of the three channels' differences, red "
    "where the reconstruction is darker on average, blue where it is brighter)",
}
AE_NOTE = (
    "plain autoencoder: it has no likelihood, so there is no log p(x); its score is "
    "reconstruction error only (typicality by -MSE)"
)
AE_PRIOR_NOTE = (
    "plain autoencoder: it has no likelihood, so there is no log p(x); its fitted prior's "
    "density of the code (log_prior) and its reconstruction error are what it has"
)
NO_REFERENCE = (
    "no held-out reference in this model's metadata (no `typicality`): no verdict "
    "(`python -m training.typicality MODEL_DIR` adds one)"
)

ScoreFormatQ = Annotated[
    ImageFormat, Query(description="json: every score; png: the error map(s) only")
]


def _k_query() -> Any:
    return Query(
        ge=1,
        le=scoring.MAX_K,
        description="VAE: posterior samples z ~ q(z|x) for the importance-weighted log p(x) "
        f"(1..{scoring.MAX_K}; k = 1 is a one-sample ELBO estimate, larger k a tighter bound)",
    )


def _verdict(
    model: Model,
    scores: scoring.ImageScores,
    x: np.ndarray,
    k: int,
    rng: np.random.Generator,
) -> tuple[list[TypicalityVerdict | None], str | None]:
    """Each image's typicality verdict, with the score as the held-out reference defines it
    (log p(x) at the reference's k: computed again when the request's k differs)."""
    reference = model.metadata.typicality
    if reference is None:
        return [None] * len(x), NO_REFERENCE
    values = scoring.component_values(scores)
    needed = scoring.COMPONENTS.get(reference.score, (reference.score,))
    missing = [name for name in needed if name not in values]
    if missing:
        what = "a fitted prior" if missing == ["log_prior"] else "a VAE"
        return [None] * len(x), f"the metadata's typicality score {reference.score!r} needs {what}"
    note = None
    if "iwae_log_px" in needed and reference.k != k:
        assert reference.k is not None and scores.likelihood is not None
        codes = scores.codes
        _, values["iwae_log_px"] = scoring.posterior_samples(
            model,
            x,
            codes["mu"],
            codes["log_var"],
            reference.k,
            rng,
            scores.likelihood,
            chunk_for(model, scoring.CHUNK),
        )
        note = (
            f"the typicality verdict uses log p(x) with the reference's k = {reference.k} "
            f"(computed separately from the k = {k} estimate above)"
        )
    score_values, parts = scoring.reference_scores(reference, values)
    shares = scoring.percentiles(reference.quantiles, score_values)
    verdicts: list[TypicalityVerdict | None] = [
        TypicalityVerdict(
            score_name=reference.score,
            score=float(score),
            components=None if parts is None else {n: float(p[i]) for n, p in parts.items()},
            k=reference.k,
            percentile=float(shares[i]),
            typical=bool(score >= reference.threshold),
            threshold=reference.threshold,
            threshold_percentile=100.0 * reference.threshold_quantile,
            held_out=reference.held_out,
            how_chosen=reference.how_chosen,
        )
        for i, score in enumerate(score_values)
    ]
    return verdicts, note


def _likelihood_info(likelihood: scoring.Likelihood) -> LikelihoodInfo:
    return LikelihoodInfo(
        name=likelihood.name,
        dims=likelihood.dims,
        r_loss_factor=likelihood.r_loss_factor,
        sigma=likelihood.sigma,
        assumed=likelihood.assumed,
        statement=likelihood.statement(),
    )


def _optional(values: np.ndarray | None, i: int) -> float | None:
    return None if values is None else float(values[i])


def score_uploads(
    model: Model,
    images: list[bytes],
    preprocess: Preprocess,
    k: int,
    seed: int | None,
    fmt: ImageFormat,
    scale: int,
    settings: Settings,
) -> list[ScoreResult] | Response:
    x = prepare(images, model, preprocess, settings)
    if seed is None:  # a fresh seed, reported so the answer can be repeated
        seed = int(np.random.default_rng().integers(2**63))
    rng = np.random.default_rng(seed)
    scores = scoring.score_images(model, x, k, rng, chunk_for(model, scoring.CHUNK), model.prior)
    if fmt is ImageFormat.png:
        data = (
            error_map_pngs(scores.signed_error, scale)[0]
            if len(images) == 1
            else error_map_grid_png(scores.signed_error, scale)
        )
        return Response(data, media_type="image/png", headers={"X-Model": model.name})
    verdicts, verdict_note = _verdict(model, scores, x, k, rng)
    vae = model.kind == "vae"
    notes = [] if vae else [AE_NOTE if model.prior is None else AE_PRIOR_NOTE]
    if verdict_note:
        notes.append(verdict_note)
    note = "; ".join(notes) or None
    inputs = png.pngs_base64(model.to_unit_pixels(x), scale)
    recons = png.pngs_base64(model.to_unit_pixels(scores.reconstruction), scale)
    maps = error_map_pngs(scores.signed_error, scale)
    likelihood = _likelihood_info(scores.likelihood) if scores.likelihood else None
    bits = scores.bits_per_dim
    return [
        ScoreResult(
            model=model.name,
            kind="vae" if vae else "ae",
            input=inputs[i],
            reconstruction=recons[i],
            error_map=base64.b64encode(maps[i]).decode("ascii"),
            mse=float(scores.mse[i]),
            reconstruction_log_likelihood=_optional(scores.reconstruction_log_likelihood, i),
            kl=_optional(scores.kl, i),
            elbo=_optional(scores.elbo, i),
            log_px=_optional(scores.log_px, i),
            bits_per_dim=_optional(bits, i),
            log_prior=_optional(scores.log_prior, i),
            k=k if vae else None,
            seed=seed if vae else None,
            likelihood=likelihood,
            typicality=verdicts[i],
            note=note,
        )
        for i in range(len(images))
    ]


def _work(model: Model, data: list[bytes], k: int) -> WorkSize:
    per_image = k + 2 if model.kind == "vae" else 2  # encode, decode the mean, k samples
    return WorkSize(images=len(data) * per_image, small=small_uploads(data))


def router(settings: Settings) -> APIRouter:
    api = APIRouter(tags=["scores"])
    max_batch = settings.max_batch

    @api.post(
        "/score",
        response_model=ScoreResult,
        summary="Score one image: ELBO, log p(x), error map, typicality",
        description="VAE: under the model's own likelihood as trained (metadata "
        "training.config: with `likelihood: mse` the loss r_loss_factor * per-image MSE is a "
        "Gaussian N(decoder(z), sigma^2 I) with 1/(2 sigma^2) = r_loss_factor / D, its "
        "normalising constant included; with `bce`, Bernoulli): the reconstruction term, the "
        "KL and the ELBO, the k-sample importance-weighted log p(x) (seedable: the same seed "
        "gives the same bytes) and bits per dimension (D = C x H x W pixel values: an RGB "
        "image's three channels all count). Both kinds: the reconstruction, its "
        "per-pixel error map and MSE, with a fitted prior its log density of the image's "
        "encoding (`log_prior`), and the percentile among held-out images with a "
        "typical/atypical verdict at the threshold fixed at export (with a fitted prior the "
        "verdict also counts that density). For the plain AE without a fitted prior the score "
        "is reconstruction error only.",
        openapi_extra=ONE_IMAGE_BODY,
        responses={200: ERROR_MAP_RESPONSE, **errors(400, 404, 413, 415, 422)},
    )
    async def score(
        model: ModelDep,
        data: ImageUpload,
        scheduler: SchedulerDep,
        k: Annotated[int, _k_query()] = scoring.DEFAULT_K,
        seed: SeedQ = None,
        preprocess: PreprocessQ = Preprocess.auto,
        format: ScoreFormatQ = ImageFormat.json,
        scale: ScaleQ = 1,
    ) -> Any:
        check_picture_output(model, 1, scale, max_batch)
        items = await scheduler.run(
            _work(model, [data], k),
            score_uploads,
            model,
            [data],
            preprocess,
            k,
            seed,
            format,
            scale,
            settings,
        )
        if isinstance(items, Response):
            return items
        return JSONResponse(items[0].model_dump(), headers={"X-Model": model.name})

    @api.post(
        "/score/batch",
        response_model=ScoreBatchResponse,
        summary="Score several images",
        description=f"Up to {max_batch} images in repeated field `files`, and at most "
        f"{MAX_BATCH_SAMPLES} posterior samples in all (files x k) -> one /score result per "
        "image, in order. One seed draws every image's samples in turn (image 0 gets what "
        "/score with that seed gives it).",
        openapi_extra=MANY_IMAGES_BODY,
        responses={200: ERROR_MAP_RESPONSE, **errors(400, 404, 413, 415, 422)},
    )
    async def score_batch(
        model: ModelDep,
        data: ImageUploads,
        scheduler: SchedulerDep,
        k: Annotated[int, _k_query()] = scoring.DEFAULT_K,
        seed: SeedQ = None,
        preprocess: PreprocessQ = Preprocess.auto,
        format: ScoreFormatQ = ImageFormat.json,
        scale: ScaleQ = 1,
    ) -> Any:
        if model.kind == "vae" and len(data) * k > MAX_BATCH_SAMPLES:
            raise validation_error(
                ["query", "k"],
                f"{len(data)} images x k = {k} is over {MAX_BATCH_SAMPLES} posterior samples "
                "per request: send fewer images or a smaller k",
            )
        check_image_count(model, len(data), max_batch, ["body", "files"])
        check_picture_output(model, len(data), scale, max_batch)
        items = await scheduler.run(
            _work(model, data, k),
            score_uploads,
            model,
            data,
            preprocess,
            k,
            seed,
            format,
            scale,
            settings,
        )
        if isinstance(items, Response):
            return items
        body = ScoreBatchResponse(model=model.name, items=items)
        return JSONResponse(body.model_dump(), headers={"X-Model": model.name})

    return api
