"""The MLServer peer: Seldon MLServer serving the service's OIP models through custom `MLModel`s
(MLServer has no onnxruntime runtime), the way MLServer's documentation writes a custom runtime.

    vae-decoder   z FP32 [N, z_dim]                  -> <decoder output> FP32 [N, C, H, W]
    vae           file BYTES [N, 1], base64 in JSON  -> mu, log_var FP32 [N, z_dim]

    POST /v2/models/vae-decoder/infer    (JSON: MLServer has no binary tensor extension)

The same names, tensors and shapes as the service's OIP models (service/api/oip/models.py), so
the same JSON requests go to both; the work is the service's own (bench/peers/work.py). This
script writes MLServer's settings.json and one model-settings.json per model into
bench/.cache/mlserver-<port>/ and runs `mlserver start` on it. Run in MLServer's environment
from the repository root (on PYTHONPATH, for the implementation and its worker processes):

    PYTHONPATH=$PWD .venv-mlserver/bin/python -m bench.peers.mlserver_service --port 8100

Settings, from the environment:

    VAE_MLSERVER_WORKERS   parallel_workers: inference processes (default 1; 0: in the server)
    VAE_MLSERVER_MAX_BATCH adaptive batching's max_batch_size (default 0: off)
    VAE_MLSERVER_BATCH_MS  its max_batch_time, in ms (default 2)
    VAE_MLSERVER_DEBUG     1: debug, with its access log line per request (MLServer's default);
                           default 0
    VAE_PEER_ORT_THREADS   onnxruntime intra-op threads per session (bench/peers/work.py)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from mlserver import MLModel
from mlserver.codecs import Base64Codec, NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

from bench.peers import work


def _int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


class Decoder(MLModel):
    """vae-decoder: the decoder graph as it is."""

    async def load(self) -> bool:
        self.graphs = work.Graphs()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        z = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32)
        images = self.graphs.decode(z.reshape(-1, self.graphs.convention.z_dim))
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output(self.graphs.image_output, images)],
        )


class Pipeline(MLModel):
    """vae: image files -> the service's preparation -> the encoder (mu, log_var)."""

    async def load(self) -> bool:
        self.graphs = work.Graphs()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        uploads = Base64Codec.decode_input(payload.inputs[0])
        codes = work.pipeline(self.graphs, uploads)
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output(name, codes[name]) for name in codes],
        )


def write_repository(folder: Path, port: int) -> None:
    """settings.json and a folder per model with its model-settings.json."""
    debug = _int("VAE_MLSERVER_DEBUG", 0) == 1
    settings = {
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": _int("VAE_MLSERVER_GRPC_PORT", port + 1),
        "metrics_port": _int("VAE_MLSERVER_METRICS_PORT", port + 2),
        "parallel_workers": _int("VAE_MLSERVER_WORKERS", 1),
        "debug": debug,
        "metrics_dir": str(folder / "metrics"),
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    name = work.Graphs().convention.name
    for model, implementation in ((f"{name}-decoder", "Decoder"), (name, "Pipeline")):
        (folder / model).mkdir()
        model_settings = {
            "name": model,
            "implementation": f"bench.peers.mlserver_service.{implementation}",
            "max_batch_size": _int("VAE_MLSERVER_MAX_BATCH", 0),
            "max_batch_time": _int("VAE_MLSERVER_BATCH_MS", 2) / 1000,
        }
        (folder / model / "model-settings.json").write_text(json.dumps(model_settings))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, required=True, help="HTTP port (gRPC, metrics: +1, +2)")
    args = p.parse_args()
    folder = work.ROOT / "bench" / ".cache" / f"mlserver-{args.port}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    write_repository(folder, args.port)
    mlserver = Path(sys.executable).parent / "mlserver"
    os.execv(str(mlserver), [str(mlserver), "start", str(folder)])


if __name__ == "__main__":
    main()
