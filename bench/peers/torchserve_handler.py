"""The TorchServe peer's handler: BaseHandler's preprocess / inference / postprocess, with the
service's own work (bench/peers/work.py: onnxruntime, the PNG grid, the digit preparation).

One handler, two models (bench/peers/torchserve_service.py registers both): "vae-sample" takes
a JSON body {"n": 16, "seed": 0} and answers the PNG grid of the service's /sample; "vae-encode"
takes one multipart "file" (or a raw body) and answers /encode's JSON. With TorchServe's batching
(batchSize > 1) `data` holds several requests: their latents (or images) go through one
onnxruntime call. onnxruntime runs through work.Graphs rather than BaseHandler's own ONNX
session so that its threads are set as for every other peer (VAE_PEER_ORT_THREADS).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np
from ts.torch_handler.base_handler import BaseHandler

ROOT = os.environ.get("VAE_PEER_ROOT", "")
if ROOT and ROOT not in sys.path:  # TorchServe's workers start in the model's own folder
    sys.path.insert(0, ROOT)

from bench.peers import work  # noqa: E402


def _body(row: dict) -> Any:
    return row.get("file") or row.get("data") or row.get("body")


class VaeHandler(BaseHandler):
    def initialize(self, context: Any) -> None:
        self.graphs = work.Graphs()
        self.kind = context.manifest["model"]["modelName"].rsplit("-", 1)[-1]
        self.initialized = True

    def preprocess(self, data: list[dict]) -> list[Any]:
        if self.kind == "sample":
            out = []
            for row in data:
                body = _body(row)
                params = json.loads(body) if isinstance(body, bytes | bytearray) else body or {}
                n = int(params.get("n", 16))
                if not 1 <= n <= 256:
                    raise ValueError("n must be in [1, 256]")
                out.append(work.latents(self.graphs, n, params.get("seed")))
            return out
        return [bytes(_body(row)) for row in data]

    def inference(self, data: list[Any], *args: Any, **kwargs: Any) -> list[Any]:
        if self.kind == "sample":
            decoded = self.graphs.decode(np.concatenate(data))
            return np.split(decoded, np.cumsum([len(z) for z in data])[:-1])
        codes = work.pipeline(self.graphs, data)
        mu, log_var = (codes[name] for name in self.graphs.code_outputs[:2])
        name = self.graphs.convention.name
        return [
            {"model": name, "mu": m.tolist(), "log_var": v.tolist()}
            for m, v in zip(mu, log_var, strict=True)
        ]

    def postprocess(self, data: list[Any]) -> list[Any]:
        if self.kind != "sample":
            return data
        for i in range(len(data)):
            self.context.set_response_content_type(i, "image/png")
        return [work.grid_png(self.graphs, decoded) for decoded in data]
