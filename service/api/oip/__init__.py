"""The Open Inference Protocol (KServe V2 / Triton's HTTP API) beside the REST API, under /v2.

    codec.py    tensors on the wire: JSON, and the binary tensor data extension, both ways
    models.py   each served model as OIP models: NAME-encoder, NAME-decoder, NAME (pipeline)
    sampler.py  NAME-sampler: GET /sample (seed, count, temperature, prior, label -> images, z)
    routes.py   the router: server and model metadata, health, inference
    schemas.py  the bodies /docs shows

The middleware (service/api/middleware.py) knows the prefix: it labels these requests
protocol="oip" in the metrics and the access log, and answers its own errors here as
{"error": ...}; service/app.py does the same for what the router refuses under /v2.
"""

from __future__ import annotations

from service.api.middleware import OIP_PREFIX, protocol_of
from service.api.oip.routes import router


def is_oip_path(path: str) -> bool:
    """Whether a request path belongs to the Open Inference Protocol (else the REST API)."""
    return protocol_of(path) == "oip"


__all__ = ["OIP_PREFIX", "is_oip_path", "router"]
