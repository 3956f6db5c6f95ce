"""The peers other than BentoML: how each starts, what it answers, the settings tried.

Each peer runs in its own environment (bench/peers/envs.py) as `python -m
bench.peers.<peer>_service --port N` from the repository root (the root on PYTHONPATH, so that
`service.imaging` and bench/peers/work.py are the service's code), in a session of its own
(stopped, and measured, as that whole session: Ray's actors and TorchServe's Java front end
leave the launcher's process tree). Settings are environment variables, each peer's script's
docstring lists its own; CONFIGS below are the ones `make bench` tries, named by what they set.

Two kinds of peer:
  rest  LitServe, Ray Serve, TorchServe: the service's GET /sample?n=16 and POST /encode
        (multipart "file"), at each peer's equivalent path (LitServe and TorchServe: POST only,
        /sample's parameters as a JSON body)
  oip   Triton (PyTriton) and MLServer: the service's Open Inference Protocol models, the same
        request bytes to both: vae-decoder with 16 z (JSON; binary tensors where the peer has
        Triton's binary extension) and the "vae" pipeline with one PNG file (binary, or base64
        in JSON)
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.common import CACHE, ROOT, Server
from bench.loadgen import Request, multipart
from bench.peers.envs import ENVS, PeerEnv
from harness.processes import free_port

SAMPLE_N = 16
HEADER = "Inference-Header-Content-Length"
ORT1 = {"VAE_PEER_ORT_THREADS": "1"}


@dataclass(frozen=True)
class Peer:
    name: str  # the envs.ENVS key and the module bench/peers/<name>_service.py
    title: str  # as the tables name it
    kind: str  # "rest" or "oip"
    ready_path: str
    configs: dict[str, dict[str, str]]
    candidates: tuple[str, ...]  # the configs `make bench` runs (the first: the defaults)
    oip_cases: tuple[str, ...] = ()  # the OIP cases it answers (kind "oip")
    ready_timeout: float = 120.0
    note: str = ""
    extra_ports: tuple[str, ...] = field(default=())  # env names of ports it needs besides

    @property
    def env(self) -> PeerEnv:
        return ENVS[self.name]


def _c(**kw: str) -> dict[str, str]:
    return dict(kw)


PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        Peer(
            "litserve",
            "LitServe",
            "rest",
            "/health",
            {
                "default": {},
                "w2_ort1_nolog": {**ORT1, **_c(VAE_LIT_WORKERS="2", VAE_LIT_ACCESS_LOG="0")},
                "w2_ort1_nolog_zmq": {
                    **ORT1,
                    **_c(VAE_LIT_WORKERS="2", VAE_LIT_ACCESS_LOG="0", VAE_LIT_FAST_QUEUE="1"),
                },
                "w2_ort1_nolog_batch16": {
                    **ORT1,
                    **_c(
                        VAE_LIT_WORKERS="2",
                        VAE_LIT_ACCESS_LOG="0",
                        VAE_LIT_MAX_BATCH="16",
                        VAE_LIT_BATCH_TIMEOUT_MS="2",
                    ),
                },
            },
            ("default", "w2_ort1_nolog", "w2_ort1_nolog_zmq", "w2_ort1_nolog_batch16"),
        ),
        Peer(
            "rayserve",
            "Ray Serve",
            "rest",
            "/healthz",
            {
                "default": {},
                "r2_ort1_nolog": {**ORT1, **_c(VAE_RAY_REPLICAS="2", VAE_RAY_ACCESS_LOG="0")},
                "r1_ort2_nolog": {"VAE_PEER_ORT_THREADS": "2", "VAE_RAY_ACCESS_LOG": "0"},
                "r2_ort1_nolog_batch16": {
                    **ORT1,
                    **_c(VAE_RAY_REPLICAS="2", VAE_RAY_ACCESS_LOG="0", VAE_RAY_BATCHING="1"),
                },
            },
            ("default", "r2_ort1_nolog", "r2_ort1_nolog_batch16"),
            note="Ray's own processes (GCS, raylet, agents, Serve's controller and proxy) are "
            "counted in its memory",
        ),
        Peer(
            "torchserve",
            "TorchServe",
            "rest",
            "/ping",
            {
                "default": {},
                "w2_ort1_nolog": {**ORT1, **_c(VAE_TS_WORKERS="2", VAE_TS_ACCESS_LOG="0")},
                "w1_ort1_nolog": {**ORT1, **_c(VAE_TS_WORKERS="1", VAE_TS_ACCESS_LOG="0")},
                "w2_ort1_nolog_batch16": {
                    **ORT1,
                    **_c(VAE_TS_WORKERS="2", VAE_TS_ACCESS_LOG="0", VAE_TS_BATCH="16"),
                },
            },
            ("default", "w2_ort1_nolog", "w1_ort1_nolog", "w2_ort1_nolog_batch16"),
            extra_ports=(
                "VAE_TS_MANAGEMENT_PORT",
                "VAE_TS_METRICS_PORT",
                "VAE_TS_GRPC_PORT",
                "VAE_TS_GRPC_MANAGEMENT_PORT",
            ),
            note="workers per model: /sample and /encode are two TorchServe models, each with "
            "its workers",
        ),
        Peer(
            "pytriton",
            "Triton (PyTriton)",
            "oip",
            "/v2/models/vae/ready",
            {
                "default": {},
                "i2_ort1": {**ORT1, "VAE_TRITON_INSTANCES": "2"},
                "i1_ort1": {**ORT1, "VAE_TRITON_INSTANCES": "1"},
                "i2_ort1_nobatch": {
                    **ORT1,
                    "VAE_TRITON_INSTANCES": "2",
                    "VAE_TRITON_BATCHING": "0",
                },
            },
            ("default", "i2_ort1", "i1_ort1", "i2_ort1_nobatch"),
            oip_cases=("decoder16_binary", "decoder16_json", "pipeline1_binary"),
            extra_ports=("VAE_TRITON_GRPC_PORT", "VAE_TRITON_METRICS_PORT"),
            note="tritonserver's HTTP front end and dynamic batcher; onnxruntime in the bound "
            "Python function (PyTriton's build has no onnxruntime backend)",
        ),
        Peer(
            "mlserver",
            "MLServer",
            "oip",
            "/v2/models/vae/ready",
            {
                "default": {},
                "w2_ort1": {**ORT1, "VAE_MLSERVER_WORKERS": "2"},
                "w0_ort2": {"VAE_PEER_ORT_THREADS": "2", "VAE_MLSERVER_WORKERS": "0"},
                "w2_ort1_batch16": {
                    **ORT1,
                    "VAE_MLSERVER_WORKERS": "2",
                    "VAE_MLSERVER_MAX_BATCH": "16",
                },
            },
            ("default", "w2_ort1", "w0_ort2", "w2_ort1_batch16"),
            oip_cases=("decoder16_json", "pipeline1_json"),
            extra_ports=("VAE_MLSERVER_GRPC_PORT", "VAE_MLSERVER_METRICS_PORT"),
            note="JSON only (MLServer has no binary tensor extension); a custom MLModel",
        ),
    )
}
OIP_CASES = ("decoder16_binary", "decoder16_json", "pipeline1_binary", "pipeline1_json")


def server(peer: Peer, python: Path, models: Path, config: dict[str, str], log: Path) -> Server:
    """`python -m bench.peers.<peer>_service` in the peer's environment, from the root."""
    env = {
        **{key: "" for settings in peer.configs.values() for key in settings},
        **{key: str(free_port()) for key in peer.extra_ports},
        "VAE_PEER_MODEL_DIR": str(models / "vae"),
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
        "HOME": os.environ.get("HOME") or str(CACHE),
        **config,
    }
    argv = [str(python), "-m", f"bench.peers.{peer.name}_service", "--port", "{port}"]
    return Server(
        argv,
        env=env,
        ready_path=peer.ready_path,
        log=log,
        name=peer.name,
        session=True,
        ready_timeout=peer.ready_timeout,
    )


# --- requests ---------------------------------------------------------------------------------


def rest_requests(peer: str, png: bytes) -> dict[str, Request]:
    body, ctype = multipart([("digit.png", png)], "file")
    sample_json = json.dumps({"n": SAMPLE_N}).encode()
    post_sample = Request("/sample", "POST", sample_json, "application/json")
    if peer == "torchserve":
        return {
            "sample": Request("/predictions/vae-sample", "POST", sample_json, "application/json"),
            "encode": Request("/predictions/vae-encode", "POST", body, ctype),
        }
    if peer == "litserve":
        return {"sample": post_sample, "encode": Request("/encode", "POST", body, ctype)}
    return {
        "sample": Request(f"/sample?n={SAMPLE_N}"),
        "encode": Request("/encode", "POST", body, ctype),
    }


def _infer(model: str, body: dict, binary: bytes | None = None) -> Request:
    text = json.dumps(body, separators=(",", ":")).encode()
    path = f"/v2/models/{model}/infer"
    if binary is None:
        return Request(path, "POST", text, "application/json")
    return Request(
        path, "POST", text + binary, "application/octet-stream", {HEADER: str(len(text))}
    )


def oip_requests(name: str, z_dim: int, png: bytes) -> dict[str, Request]:
    """The OIP cases, the same bytes for the service and the peers; z seeded (0)."""
    z = np.random.default_rng(0).standard_normal((SAMPLE_N, z_dim)).astype(np.float32)
    z_input = {"name": "z", "shape": list(z.shape), "datatype": "FP32"}
    file_input = {"name": "file", "shape": [1, 1], "datatype": "BYTES"}
    framed = len(png).to_bytes(4, "little") + png
    return {
        "decoder16_binary": _infer(
            f"{name}-decoder",
            {
                "inputs": [{**z_input, "parameters": {"binary_data_size": z.nbytes}}],
                "parameters": {"binary_data_output": True},
            },
            z.tobytes(),
        ),
        "decoder16_json": _infer(
            f"{name}-decoder", {"inputs": [{**z_input, "data": z.ravel().tolist()}]}
        ),
        "pipeline1_binary": _infer(
            name,
            {
                "inputs": [{**file_input, "parameters": {"binary_data_size": len(framed)}}],
                "parameters": {"binary_data_output": True},
            },
            framed,
        ),
        "pipeline1_json": _infer(
            name,
            {
                "inputs": [
                    {
                        **file_input,
                        "parameters": {"content_type": "base64"},
                        "data": [base64.b64encode(png).decode()],
                    }
                ]
            },
        ),
    }


def decode_oip(body: bytes, header_length: str | None) -> dict[str, np.ndarray]:
    """An OIP infer response (JSON, or JSON + binary outputs) -> {output name: float32 array}."""
    text, raw = (
        (body, b"")
        if header_length is None
        else (
            body[: int(header_length)],
            body[int(header_length) :],
        )
    )
    out = {}
    offset = 0
    for o in json.loads(text)["outputs"]:
        shape = o["shape"]
        size = (o.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            array = np.frombuffer(raw[offset : offset + size], dtype="<f4")
            offset += size
        else:
            array = np.asarray(o["data"], dtype=np.float32)
        out[o["name"]] = array.reshape(shape)
    return out


def compare_oip(reference: dict[str, dict], peer: dict[str, dict], atol: float = 1e-4) -> dict:
    """Per case, the largest difference of each output; `same` where all are within atol."""
    check: dict = {}
    same = bool(peer)
    for case, outputs in peer.items():
        ours = reference[case]
        if set(ours) != set(outputs):
            check[case] = {"outputs": sorted(outputs), "service_outputs": sorted(ours)}
            same = False
            continue
        diffs: dict[str, float | str] = {}
        for name, array in outputs.items():
            if array.shape != ours[name].shape:
                diffs[name] = f"shape {list(array.shape)} vs {list(ours[name].shape)}"
                same = False
            else:
                diff = float(np.abs(array - ours[name]).max())
                diffs[name] = diff
                same = same and diff <= atol
        check[case] = diffs
    check["same"] = same
    return check
