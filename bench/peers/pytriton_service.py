"""The Triton peer: NVIDIA Triton Inference Server (the `tritonserver` binary that PyTriton ships,
its HTTP and gRPC front ends, its dynamic batcher), with the models bound through PyTriton.

Triton has no onnxruntime backend in PyTriton's build: a bound model is a Python function in this
process, reached from Triton's Python-backend stub over shared memory and ZMQ. So onnxruntime
runs here, in `infer` functions, with the service's own preparation (bench/peers/work.py). The
models are the service's OIP models (service/api/oip/models.py), same names, tensors and
shapes, so the same request bytes go to both:

    vae-decoder   z FP32 [N, z_dim]           -> <decoder output> FP32 [N, C, H, W]
    vae           file BYTES [N, 1] (files)   -> mu, log_var FP32 [N, z_dim]

    POST /v2/models/vae-decoder/infer   (JSON, or binary tensors: Inference-Header-Content-Length)

Run in PyTriton's environment from the repository root:

    .venv-pytriton/bin/python -m bench.peers.pytriton_service --port 8100

Triton's Python-backend stub loads libpython: LD_LIBRARY_PATH must hold this interpreter's
libdir (sysconfig LIBDIR), or the model fails to load with an `_thread.RLock` error; main()
re-executes itself with it set.

Settings, from the environment:

    VAE_TRITON_INSTANCES   model instances per model (infer functions called in parallel; 1)
    VAE_TRITON_BATCHING    1: dynamic batching (max_batch_size 256), 0: none (default 1)
    VAE_TRITON_DELAY_US    the batcher's max_queue_delay_microseconds (default 0)
    VAE_TRITON_HTTP_THREADS  Triton's http_thread_count (default: Triton's)
    VAE_PEER_ORT_THREADS   onnxruntime intra-op threads per session (bench/peers/work.py)
"""

from __future__ import annotations

import argparse
import os
import sys
import sysconfig
from typing import Any

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from bench.peers import work

MAX_BATCH = 256


def _int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def _libdir_on_path() -> None:
    """Re-execute with the interpreter's libdir on LD_LIBRARY_PATH (the stub needs libpython)."""
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    paths = os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep)
    if libdir and libdir not in paths:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([libdir, *filter(None, paths)])
        os.execv(
            sys.executable, [sys.executable, "-m", "bench.peers.pytriton_service", *sys.argv[1:]]
        )


def decoder_fn(graphs: work.Graphs) -> Any:
    @batch
    def infer(z: np.ndarray) -> dict[str, np.ndarray]:
        return {graphs.image_output: graphs.decode(z)}

    return infer


def pipeline_fn(graphs: work.Graphs) -> Any:
    @batch
    def infer(file: np.ndarray) -> dict[str, np.ndarray]:
        return work.pipeline(graphs, [bytes(f) for f in file.reshape(-1)])

    return infer


def bind(triton: Triton, instances: int, batching: bool) -> None:
    sessions = [work.Graphs() for _ in range(instances)]
    g = sessions[0]
    c, h, w = g.convention.shape
    z = g.convention.z_dim
    config = ModelConfig(
        batching=batching,
        max_batch_size=MAX_BATCH if batching else 0,
        batcher=DynamicBatcher(max_queue_delay_microseconds=_int("VAE_TRITON_DELAY_US", 0)),
    )
    lead = () if batching else (-1,)  # without batching, the batch axis is the tensor's own
    triton.bind(
        model_name=f"{g.convention.name}-decoder",
        infer_func=[decoder_fn(s) for s in sessions],
        inputs=[Tensor(name=g.z_input, dtype=np.float32, shape=(*lead, z))],
        outputs=[Tensor(name=g.image_output, dtype=np.float32, shape=(*lead, c, h, w))],
        config=config,
    )
    triton.bind(
        model_name=g.convention.name,
        infer_func=[pipeline_fn(s) for s in sessions],
        inputs=[Tensor(name="file", dtype=object, shape=(*lead, 1))],
        outputs=[Tensor(name=n, dtype=np.float32, shape=(*lead, z)) for n in g.code_outputs],
        config=config,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, required=True, help="HTTP port (gRPC and metrics: +1, +2)")
    args = p.parse_args()
    _libdir_on_path()
    http_threads = _int("VAE_TRITON_HTTP_THREADS", 0)
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.port,
        grpc_address="127.0.0.1",
        grpc_port=_int("VAE_TRITON_GRPC_PORT", args.port + 1),
        metrics_address="127.0.0.1",
        metrics_port=_int("VAE_TRITON_METRICS_PORT", args.port + 2),
        allow_metrics=False,
        log_verbose=0,
        **({"http_thread_count": http_threads} if http_threads else {}),
    )
    with Triton(config=config) as triton:
        bind(triton, _int("VAE_TRITON_INSTANCES", 1), _int("VAE_TRITON_BATCHING", 1) == 1)
        triton.serve()


if __name__ == "__main__":
    main()
