"""The HTTP layer: one router module per area, their shared parameters and dependencies, the
request bodies (schemas), uploads, scheduling, middleware and metrics.

    encoding.py   POST /encode, /encode/batch
    images.py     POST /decode, GET /sample, POST /reconstruct
    metadata.py   GET /models, /models/{name}[/latent-points|/figures/{file}]
    probes.py     GET /healthz, /readyz, /metrics
    page.py       GET / (the explorer) and /static
    latent_ops.py POST /interpolate, GET /manifold
    scores.py     POST /score, /score/batch
    oip/          the Open Inference Protocol (KServe V2 / Triton) under /v2, and its model
                  repository extension (load, unload: admin keys)
"""

from __future__ import annotations

from fastapi import APIRouter

from service.api import encoding, images, latent_ops, metadata, oip, page, probes, scores
from service.api.oip import repository
from service.process.settings import Settings


def routers(settings: Settings) -> list[APIRouter]:
    """Every router, with the limits of `settings` written into its parameters (and /docs)."""
    return [
        encoding.router(settings),
        images.router(settings),
        latent_ops.router(settings),
        scores.router(settings),
        metadata.router(),
        page.router(),
        probes.router(),
        oip.router(settings),
        repository.router(),
    ]
