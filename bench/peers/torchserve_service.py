"""The TorchServe peer: TorchServe 0.12 (its Java front end, Python backend workers) serving the
VAE through one custom handler (bench/peers/torchserve_handler.py) as two models.

    POST /predictions/vae-sample  {"n": 16, "seed": 0}   -> image/png, as GET /sample?n=16
    POST /predictions/vae-encode  multipart "file"        -> /encode's JSON
    GET  /ping                                            -> readiness

This script packs the handler with torch-model-archiver (--archive-format no-archive) into a
model store under bench/.cache/torchserve-<port>/, writes config.properties (127.0.0.1 only, no
token authorisation, no snapshots, the workers and batching below), then runs `torchserve
--foreground` (Java 17: TorchServe looks for `java` on PATH, or JAVA_HOME). Run in TorchServe's
environment from the repository root:

    .venv-torchserve/bin/python -m bench.peers.torchserve_service --port 8100

Settings, from the environment:

    VAE_TS_WORKERS     workers per model (Python processes; default 1)
    VAE_TS_BATCH       batchSize (default 1: no batching)
    VAE_TS_BATCH_MS    maxBatchDelay in ms (default 2)
    VAE_TS_ACCESS_LOG  0: TorchServe's access log and per-request metrics lines off (default 1)
    VAE_PEER_ORT_THREADS onnxruntime intra-op threads per session (bench/peers/work.py)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HANDLER = Path(__file__).resolve().parent / "torchserve_handler.py"
MODELS = ("vae-sample", "vae-encode")
# log4j2: only warnings and errors from every logger, access and metrics loggers included.
QUIET_LOG4J = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders><Console name="STDOUT" target="SYSTEM_OUT">
    <PatternLayout pattern="%d{ISO8601} [%-5p] %t %c - %m%n"/></Console></Appenders>
  <Loggers><Root level="warn"><AppenderRef ref="STDOUT"/></Root></Loggers>
</Configuration>
"""


def _int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def write_store(folder: Path) -> Path:
    """The model store: each model as a no-archive folder holding the handler."""
    store = folder / "store"
    store.mkdir(parents=True, exist_ok=True)
    archiver = Path(sys.executable).parent / "torch-model-archiver"
    for name in MODELS:
        argv = [str(archiver), "--model-name", name, "--version", "1.0"]
        argv += ["--handler", str(HANDLER), "--export-path", str(store)]
        subprocess.run([*argv, "--archive-format", "no-archive", "--force"], check=True)
    return store


def write_config(folder: Path, store: Path, port: int) -> Path:
    workers = _int("VAE_TS_WORKERS", 1)
    models = {
        name: {
            "1.0": {
                "defaultVersion": True,
                "marName": name,
                "minWorkers": workers,
                "maxWorkers": workers,
                "batchSize": _int("VAE_TS_BATCH", 1),
                "maxBatchDelay": _int("VAE_TS_BATCH_MS", 2),
                "responseTimeout": 30,
            }
        }
        for name in MODELS
    }
    lines = [
        f"inference_address=http://127.0.0.1:{port}",
        f"management_address=http://127.0.0.1:{_int('VAE_TS_MANAGEMENT_PORT', port + 1)}",
        f"metrics_address=http://127.0.0.1:{_int('VAE_TS_METRICS_PORT', port + 2)}",
        "grpc_inference_port=" + str(_int("VAE_TS_GRPC_PORT", port + 3)),
        "grpc_management_port=" + str(_int("VAE_TS_GRPC_MANAGEMENT_PORT", port + 4)),
        f"model_store={store}",
        "load_models=" + ",".join(MODELS),
        "models=" + json.dumps(models),
        "disable_token_authorization=true",
        "enable_envvars_config=true",
        "install_py_dep_per_model=false",
        "disable_system_metrics=true",
        "async_logging=true",
        "default_response_timeout=30",
    ]
    config = folder / "config.properties"
    config.write_text("\n".join(lines) + "\n")
    return config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, required=True, help="inference port (others: +1 to +4)")
    args = p.parse_args()
    folder = ROOT / "bench" / ".cache" / f"torchserve-{args.port}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    config = write_config(folder, write_store(folder), args.port)
    os.environ["VAE_PEER_ROOT"] = str(ROOT)
    os.environ["LOG_LOCATION"] = str(folder / "logs")
    os.environ["METRICS_LOCATION"] = str(folder / "logs")
    if _int("VAE_TS_ACCESS_LOG", 1) == 0:
        (folder / "log4j2.xml").write_text(QUIET_LOG4J)
        with config.open("a") as f:
            f.write(f"vmargs=-Dlog4j.configurationFile=file://{folder / 'log4j2.xml'}\n")
    java_home = os.environ.get("JAVA_HOME") or "/usr/lib/jvm/java-17-openjdk-amd64"
    if Path(java_home, "bin", "java").is_file():
        os.environ["JAVA_HOME"] = java_home
        os.environ["PATH"] = f"{java_home}/bin{os.pathsep}{os.environ.get('PATH', '')}"
    torchserve = Path(sys.executable).parent / "torchserve"
    argv = [str(torchserve), "--start", "--foreground", "--ncs", "--disable-token-auth"]
    argv += ["--model-store", str(config.parent / "store"), "--ts-config", str(config)]
    os.execv(str(torchserve), argv)


if __name__ == "__main__":
    main()
