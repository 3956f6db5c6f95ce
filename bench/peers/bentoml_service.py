"""The BentoML peer: the service's VAE (the same encoder.onnx and decoder.onnx) as a BentoML 1.4
Service, written the way BentoML's documentation writes one.

A `@bentoml.service` class loads the two onnxruntime sessions in `__init__`; `@bentoml.api`
methods are the endpoints, their type hints the request and response: `sample` (JSON in, a
PIL image out, which BentoML writes as PNG with Pillow) and `encode` (a multipart file read by
BentoML into a PIL image, JSON out). The numpy around the graphs is the service's own: the
grid layout (`service.imaging.png.grid`) and the MNIST-style preparation of an upload
(`service.imaging.prepare.preprocess_image`), both numpy + Pillow only, so the work per
request is the service's work and what differs is the serving stack.

    POST /sample   {"n": 16, "seed": 0}       -> image/png, the layout of GET /sample?n=16
    POST /encode   multipart, field "file"     -> {"model", "mu", "log_var"} as POST /encode

BentoML's APIs are POST only, so /sample takes its parameters as a JSON body. Run from the
repository root in BentoML's environment (bench/peers/compare.py does this):

    .venv-bentoml/bin/bentoml serve bench.peers.bentoml_service:VaePeer --port 3000

Settings, from the environment (unset: BentoML's and onnxruntime's defaults):

    VAE_BENTO_MODEL_DIR     the model folder (default models/vae)
    VAE_BENTO_WORKERS       @bentoml.service(workers=...): a number or "cpu_count"
    VAE_BENTO_THREADS       @bentoml.service(threads=...): the thread pool of sync APIs
    VAE_BENTO_ACCESS_LOG    0: no access log line per request (BentoML's default writes one)
    VAE_BENTO_METRICS       0: no Prometheus metrics (BentoML's default records them)
    VAE_BENTO_ORT_THREADS   onnxruntime intra-op threads per session (default: one per core)
    VAE_BENTO_ASYNC         1: `async def` APIs, the work on the event loop (no thread pool);
                            not with batching
    VAE_BENTO_BATCHING      1: adaptive batching, the documented way for several Services:
                            the graphs move to a second Service (VaeModel) whose APIs are
                            @bentoml.api(batchable=True), called through bentoml.depends
    VAE_BENTO_MODEL_WORKERS workers of that model Service (default 1)
    VAE_BENTO_MAX_BATCH     its max_batch_size, in images (default 256)
    VAE_BENTO_MAX_LATENCY_MS its max_latency_ms (default 1000)
    VAE_BENTO_RUNNER_MAX_REQUESTS  runner_connection.max_requests of the front Service: BentoML
                            closes its client session to the model Service after that many
                            requests (default 100), failing the calls still in flight on it
                            ("Server disconnected") when several threads share it
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `bentoml serve` from ROOT has it already; a plain import may not
    sys.path.insert(0, str(ROOT))

import bentoml  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from bentoml.exceptions import InvalidArgument  # noqa: E402
from PIL import Image  # noqa: E402
from pydantic import Field  # noqa: E402

from bench.peers.work import Convention  # noqa: E402
from service.imaging.png import grid, to_uint8  # noqa: E402
from service.imaging.prepare import preprocess_image  # noqa: E402
from service.imaging.uploads import ImageInputError  # noqa: E402

MODEL_DIR = Path(os.environ.get("VAE_BENTO_MODEL_DIR") or ROOT / "models" / "vae")
BATCHING = os.environ.get("VAE_BENTO_BATCHING", "") == "1"
ASYNC = os.environ.get("VAE_BENTO_ASYNC", "") == "1" and not BATCHING
SampleN = Annotated[int, Field(ge=1, le=256)]


def _setting(name: str) -> int | str | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    return value if value == "cpu_count" else int(value)


def service_config(workers: str, threads: str | None = None) -> dict[str, Any]:
    """The @bentoml.service(...) keywords set in the environment (none: BentoML's defaults)."""
    config: dict[str, Any] = {}
    if (value := _setting(workers)) is not None:
        config["workers"] = value
    if threads and (value := _setting(threads)) is not None:
        config["threads"] = value
    if os.environ.get("VAE_BENTO_ACCESS_LOG", "") == "0":
        config["logging"] = {"access": {"enabled": False}}
    if os.environ.get("VAE_BENTO_METRICS", "") == "0":
        config["metrics"] = {"enabled": False}
    if (value := _setting("VAE_BENTO_RUNNER_MAX_REQUESTS")) is not None:
        config["runner_connection"] = {"max_requests": value}
    return config


class Graphs:
    """The model folder's two onnxruntime sessions and its pixel convention (metadata.json)."""

    def __init__(self, folder: Path):
        self.metadata = json.loads((folder / "metadata.json").read_text())
        options = ort.SessionOptions()
        threads = _setting("VAE_BENTO_ORT_THREADS")
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        meta = self.metadata
        self.encoder = ort.InferenceSession(
            str(folder / meta["encoder"]["file"]), options, providers=providers
        )
        self.decoder = ort.InferenceSession(
            str(folder / meta["decoder"]["file"]), options, providers=providers
        )

    def decode(self, z: np.ndarray) -> np.ndarray:
        meta = self.metadata["decoder"]
        (images,) = self.decoder.run([meta["output"]], {meta["input"]: z.astype(np.float32)})
        return np.asarray(images)

    def encode(self, images: np.ndarray) -> np.ndarray:
        """(N, C, H, W) -> (N, 2 z_dim): mu then log_var, one array (a batchable output)."""
        meta = self.metadata["encoder"]
        mu, log_var = self.encoder.run(meta["outputs"], {meta["input"]: images})
        return np.concatenate([mu, log_var], axis=1)


BATCH = {
    "batchable": True,
    "max_batch_size": int(os.environ.get("VAE_BENTO_MAX_BATCH") or 256),
    "max_latency_ms": int(os.environ.get("VAE_BENTO_MAX_LATENCY_MS") or 1000),
}


@bentoml.service(**service_config("VAE_BENTO_MODEL_WORKERS"))
class VaeModel:
    """The graphs behind adaptive batching (VAE_BENTO_BATCHING=1): requests' latents and
    images are concatenated along the first axis into one onnxruntime call."""

    def __init__(self) -> None:
        self.graphs = Graphs(MODEL_DIR)

    @bentoml.api(**BATCH)
    def decode(self, z: np.ndarray) -> np.ndarray:
        return self.graphs.decode(z)

    @bentoml.api(**BATCH)
    def encode(self, images: np.ndarray) -> np.ndarray:
        return self.graphs.encode(images.astype(np.float32))


@bentoml.service(**service_config("VAE_BENTO_WORKERS", "VAE_BENTO_THREADS"))
class VaePeer:
    """The two endpoints, with the payloads of the service's /sample?n=16 and /encode."""

    if BATCHING:
        model = bentoml.depends(VaeModel)

    def __init__(self) -> None:
        metadata = json.loads((MODEL_DIR / "metadata.json").read_text())
        if metadata["kind"] != "vae":
            raise ValueError(f"{MODEL_DIR}: the peer serves a VAE, not {metadata['kind']!r}")
        self.convention = Convention(metadata)
        self.graphs = None if BATCHING else Graphs(MODEL_DIR)

    def _decode(self, z: np.ndarray) -> np.ndarray:
        return self.model.decode(z) if self.graphs is None else self.graphs.decode(z)

    def _encode(self, x: np.ndarray) -> np.ndarray:
        return self.model.encode(x) if self.graphs is None else self.graphs.encode(x)

    def _sample(self, n: int, seed: int | None) -> Image.Image:
        rng = np.random.default_rng(seed)
        z = rng.standard_normal((n, self.convention.z_dim)).astype(np.float32)
        pixels = self.convention.to_unit(self._decode(z))
        return Image.fromarray(grid(to_uint8(pixels)))

    def _encoding(self, file: Image.Image) -> dict[str, Any]:
        try:
            x = preprocess_image(file, "auto", self.convention.shape[1])
        except ImageInputError as exc:
            raise InvalidArgument(str(exc)) from None
        codes = self._encode(self.convention.to_model(x))
        z = self.convention.z_dim
        return {
            "model": self.convention.name,
            "mu": codes[0, :z].tolist(),
            "log_var": codes[0, z:].tolist(),
        }

    if ASYNC:  # the work runs on the event loop, no thread hop (as the service runs small work)

        @bentoml.api
        async def sample(self, n: SampleN = 16, seed: int | None = None) -> Image.Image:
            """n images decoded from z ~ N(0, I), as one PNG grid (ceil(sqrt(n)) columns)."""
            return self._sample(n, seed)

        @bentoml.api
        async def encode(self, file: Image.Image) -> dict[str, Any]:
            """One uploaded image -> the posterior's mu and log_var."""
            return self._encoding(file)

    else:  # sync APIs: BentoML runs each in its thread pool (`threads`)

        @bentoml.api
        def sample(self, n: SampleN = 16, seed: int | None = None) -> Image.Image:
            """n images decoded from z ~ N(0, I), as one PNG grid (ceil(sqrt(n)) columns)."""
            return self._sample(n, seed)

        @bentoml.api
        def encode(self, file: Image.Image) -> dict[str, Any]:
            """One uploaded image -> the posterior's mu and log_var."""
            return self._encoding(file)
