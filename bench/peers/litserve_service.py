"""The LitServe peer: the service's VAE as two `ls.LitAPI`s on one `ls.LitServer`, the way
LitServe's documentation writes one (setup / decode_request / predict / encode_response).

    POST /sample   {"n": 16, "seed": 0}        -> image/png, the layout of GET /sample?n=16
    POST /encode   multipart, field "file"      -> {"model", "mu", "log_var"} as POST /encode

LitServe's endpoints are POST only. The HTTP front end (uvicorn + FastAPI, `num_api_servers`
processes) hands each request to inference worker processes (`workers_per_device`) over a
queue (multiprocessing's, or ZMQ with `fast_queue`); the work in `predict` is the service's
own (bench/peers/work.py). Run in LitServe's environment from the repository root:

    .venv-litserve/bin/python -m bench.peers.litserve_service --port 8100

Settings, from the environment (unset: LitServe's defaults):

    VAE_LIT_WORKERS      workers_per_device (inference processes; default 1)
    VAE_LIT_API_SERVERS  num_api_servers (uvicorn processes; default: LitServe's)
    VAE_LIT_FAST_QUEUE   1: the ZMQ queue between the front end and the workers
    VAE_LIT_MAX_BATCH    max_batch_size per LitAPI (default 1: no batching)
    VAE_LIT_BATCH_TIMEOUT_MS  batch_timeout (default 0)
    VAE_LIT_ACCESS_LOG   0: no uvicorn access log line per request
    VAE_PEER_ORT_THREADS onnxruntime intra-op threads per session (bench/peers/work.py)
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import litserve as ls
import numpy as np
from fastapi import HTTPException, Response

from bench.peers import work


def _int(name: str, default: int | None = None) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


BATCH = {
    "max_batch_size": _int("VAE_LIT_MAX_BATCH", 1),
    "batch_timeout": (_int("VAE_LIT_BATCH_TIMEOUT_MS", 0) or 0) / 1000,
}


class SampleAPI(ls.LitAPI):
    """POST /sample: n digits decoded from z ~ N(0, I), one PNG grid."""

    def setup(self, device: str) -> None:
        self.graphs = work.Graphs()

    def decode_request(self, request, **kwargs: Any) -> np.ndarray:
        # no annotation on `request`: LitServe takes it as the body's type (none: the JSON)
        n = int(request.get("n", 16))
        if not 1 <= n <= 256:
            raise HTTPException(422, "n must be in [1, 256]")
        return work.latents(self.graphs, n, request.get("seed"))

    def batch(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return inputs  # grids of different n: concatenated in predict, split after

    def predict(self, z: Any, **kwargs: Any) -> Any:
        if isinstance(z, np.ndarray):
            return work.grid_png(self.graphs, self.graphs.decode(z))
        decoded = self.graphs.decode(np.concatenate(z))
        bounds = np.cumsum([len(x) for x in z])[:-1]
        return [work.grid_png(self.graphs, d) for d in np.split(decoded, bounds)]

    def unbatch(self, output: list[bytes]) -> list[bytes]:
        return output

    def encode_response(self, output: bytes, **kwargs: Any) -> Response:
        return Response(content=output, media_type="image/png")


class EncodeAPI(ls.LitAPI):
    """POST /encode: one uploaded image -> the posterior's mu and log_var."""

    def setup(self, device: str) -> None:
        self.graphs = work.Graphs()

    def decode_request(self, request, **kwargs: Any) -> bytes:
        upload = request["file"]
        return upload.file.read() if hasattr(upload, "file") else bytes(upload)

    def batch(self, inputs: list[bytes]) -> list[bytes]:
        return inputs

    def predict(self, upload: Any, **kwargs: Any) -> Any:
        if isinstance(upload, bytes):
            return work.encoding(self.graphs, upload)
        codes = work.pipeline(self.graphs, upload)
        mu_name, log_var_name = self.graphs.code_outputs[:2]
        name = self.graphs.convention.name
        return [
            {"model": name, "mu": mu.tolist(), "log_var": lv.tolist()}
            for mu, lv in zip(codes[mu_name], codes[log_var_name], strict=True)
        ]

    def unbatch(self, output: list[dict]) -> list[dict]:
        return output

    def encode_response(self, output: dict, **kwargs: Any) -> dict:
        return output


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    server = ls.LitServer(
        [SampleAPI(api_path="/sample", **BATCH), EncodeAPI(api_path="/encode", **BATCH)],
        accelerator="cpu",
        devices=1,
        workers_per_device=_int("VAE_LIT_WORKERS", 1),
        fast_queue=os.environ.get("VAE_LIT_FAST_QUEUE", "") == "1",
        timeout=30,
    )
    server.run(
        host=args.host,
        port=args.port,
        num_api_servers=_int("VAE_LIT_API_SERVERS"),
        log_level="warning",
        generate_client_file=False,
        access_log=os.environ.get("VAE_LIT_ACCESS_LOG", "") != "0",
    )


if __name__ == "__main__":
    main()
