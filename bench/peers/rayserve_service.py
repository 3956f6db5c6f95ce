"""The Ray Serve peer: the service's VAE as one Ray Serve deployment with a FastAPI ingress, the
way Ray Serve's documentation writes one, with `@serve.batch` for its batching.

    GET  /sample?n=16&seed=0          -> image/png, the layout of the service's /sample?n=16
    POST /encode  multipart "file"    -> {"model", "mu", "log_var"} as the service's /encode
    GET  /healthz                     -> 200 once the deployment answers (readiness)

A request goes through Ray Serve's HTTP proxy (an actor running uvicorn) to a replica actor
over Ray's RPC; the work in the replica is the service's own (bench/peers/work.py). This script
is the Ray driver: it starts a local Ray (no dashboard), Serve bound to 127.0.0.1, deploys,
then waits for SIGTERM (then serve.shutdown and ray.shutdown). Run in Ray's environment from the
repository root:

    .venv-rayserve/bin/python -m bench.peers.rayserve_service --port 8100

Settings, from the environment:

    VAE_RAY_REPLICAS     num_replicas (default 1)
    VAE_RAY_BATCHING     1: /sample's decode and /encode's encoder through @serve.batch
    VAE_RAY_MAX_BATCH    its max_batch_size in requests (default 16)
    VAE_RAY_BATCH_WAIT_MS its batch_wait_timeout_s, in ms (default 2)
    VAE_RAY_ASYNC        1: `async def` handlers (the work on the replica's event loop);
                         0: `def` handlers, run in the replica's thread pool (default 1)
    VAE_RAY_MAX_ONGOING  max_ongoing_requests per replica (default 64)
    VAE_RAY_ACCESS_LOG   0: no access log line per request (default 1, Ray Serve's default)
    VAE_PEER_ORT_THREADS onnxruntime intra-op threads per session (bench/peers/work.py)
"""

import argparse
import os
import signal
import threading

import numpy as np
import ray
from fastapi import FastAPI, HTTPException, Request, Response
from ray import serve
from ray.serve.config import HTTPOptions

from bench.peers import work


def _int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


BATCHING = _int("VAE_RAY_BATCHING", 0) == 1
ASYNC = _int("VAE_RAY_ASYNC", 1) == 1 or BATCHING
LOGGING = {"enable_access_log": _int("VAE_RAY_ACCESS_LOG", 1) == 1, "log_level": "WARNING"}
BATCH = {
    "max_batch_size": _int("VAE_RAY_MAX_BATCH", 16),
    "batch_wait_timeout_s": _int("VAE_RAY_BATCH_WAIT_MS", 2) / 1000,
}
app = FastAPI()


def _n(n: int) -> int:
    if not 1 <= n <= 256:
        raise HTTPException(422, "n must be in [1, 256]")
    return n


async def _upload(request: Request) -> bytes:
    form = await request.form()
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise HTTPException(422, "a multipart file field 'file' is required")
    return await upload.read()


@serve.deployment(
    num_replicas=_int("VAE_RAY_REPLICAS", 1),
    max_ongoing_requests=_int("VAE_RAY_MAX_ONGOING", 64),
    ray_actor_options={"num_cpus": 0},
    logging_config=LOGGING,
)
@serve.ingress(app)
class VaePeer:
    def __init__(self) -> None:
        self.graphs = work.Graphs()

    @app.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "ok"}

    @serve.batch(**BATCH)
    async def _decode(self, zs: list[np.ndarray]) -> list[np.ndarray]:
        decoded = self.graphs.decode(np.concatenate(zs))
        return np.split(decoded, np.cumsum([len(z) for z in zs])[:-1])

    @serve.batch(**BATCH)
    async def _encode(self, uploads: list[bytes]) -> list[dict]:
        codes = work.pipeline(self.graphs, uploads)
        mu, log_var = (codes[name] for name in self.graphs.code_outputs[:2])
        name = self.graphs.convention.name
        return [
            {"model": name, "mu": m.tolist(), "log_var": v.tolist()}
            for m, v in zip(mu, log_var, strict=True)
        ]

    if ASYNC:

        @app.get("/sample")
        async def sample(self, n: int = 16, seed: int | None = None) -> Response:
            z = work.latents(self.graphs, _n(n), seed)
            decoded = await self._decode(z) if BATCHING else self.graphs.decode(z)
            return Response(work.grid_png(self.graphs, decoded), media_type="image/png")

        @app.post("/encode")
        async def encode(self, request: Request) -> dict:
            upload = await _upload(request)
            if BATCHING:
                return await self._encode(upload)
            return work.encoding(self.graphs, upload)

    else:

        @app.get("/sample")
        def sample(self, n: int = 16, seed: int | None = None) -> Response:  # type: ignore[misc]
            png = work.sample_png(self.graphs, _n(n), seed)
            return Response(png, media_type="image/png")

        @app.post("/encode")
        async def encode(self, request: Request) -> dict:  # type: ignore[no-redef]
            upload = await _upload(request)  # the form is read on the loop, the work is not
            return await serve_thread(work.encoding, self.graphs, upload)


async def serve_thread(fn, *args):
    """fn(*args) in the event loop's default thread pool (as FastAPI runs a `def` handler)."""
    import asyncio

    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    ray.init(
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        _node_ip_address="127.0.0.1",
    )
    serve.start(
        http_options=HTTPOptions(host="127.0.0.1", port=args.port),
        logging_config=LOGGING,
    )
    serve.run(
        VaePeer.bind(),  # type: ignore[attr-defined]
        route_prefix="/",
        logging_config=LOGGING,
    )
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    stopping.wait()
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
