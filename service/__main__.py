"""`python -m service` / `vae-serve`: run the service under uvicorn."""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import socket
import sys
from typing import Any, Literal

from service.inference.registry import missing_models_message, model_folders
from service.process.settings import Settings


def _logging_config(level: str) -> dict[str, Any]:
    """stderr logging: our access log lines are JSON already, so they go out as they are."""
    upper = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
            "raw": {"format": "%(message)s"},
        },
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "plain"},
            "access": {"class": "logging.StreamHandler", "formatter": "raw"},
        },
        "loggers": {
            "service": {"handlers": ["stderr"], "level": upper, "propagate": False},
            "service.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
            "uvicorn": {"handlers": ["stderr"], "level": upper, "propagate": False},
            "uvicorn.error": {"level": upper},
        },
    }


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _http_protocol() -> type | str:
    try:
        from service.process.http_protocol import HeadLimitedHttpToolsProtocol
    except ImportError:  # uvicorn without httptools: h11, with its own head limit
        return "h11"
    return HeadLimitedHttpToolsProtocol


def _reserve_grpc_port(host: str, port: int) -> socket.socket | Literal[False] | None:
    """The gRPC port held for the workers to share (service/grpc/ports.py); None when gRPC is
    off; False (after saying why) when something else has the port."""
    if not port:
        return None
    from service.grpc.ports import address, reserve

    try:
        return reserve(host, port)
    except OSError as exc:
        print(
            f"vae-serve: cannot listen for gRPC on {address(host, port)} (VAE_GRPC_PORT): "
            f"{exc.strerror}",
            file=sys.stderr,
        )
        return False


def _start_versions(settings: Settings) -> dict[str, Any] | None:
    """The served set every worker starts with: each model at its policy's version, resolved
    once here so that all workers agree (None: a folder is broken; each worker then says so)."""
    from service.inference.format import ModelLoadError
    from service.inference.registry import parse_pins, scan

    try:
        pins = parse_pins(settings.model_versions)
        return {
            name: {"versions": [version], "current": version}
            for name, disk in scan(settings.model_dir).items()
            for version in [pins.get(name, disk.latest)]
        }
    except ModelLoadError:
        return None


def main(argv: list[str] | None = None) -> int:
    settings = Settings()
    parser = argparse.ArgumentParser(
        prog="vae-serve",
        description="Serve the exported models of VAE_MODEL_DIR over HTTP. Every VAE_* "
        "environment variable applies (see README.md, Configuration).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--host", default=settings.host, help="address to listen on")
    parser.add_argument("--port", type=int, default=settings.port, help="port to listen on")
    parser.add_argument(
        "--grpc-port",
        type=int,
        default=settings.grpc_port,
        help="port of the Open Inference Protocol over gRPC, on the same address (0: off)",
    )
    args = parser.parse_args(argv)
    # Each worker's app reads its Settings from the environment: the gRPC server binds these.
    os.environ["VAE_HOST"], os.environ["VAE_GRPC_PORT"] = args.host, str(args.grpc_port)

    # The commonest first-run problem gets a plain message, not a traceback.
    if not model_folders(settings.model_dir):
        print(f"vae-serve: {missing_models_message(settings.model_dir)}", file=sys.stderr)
        return 2
    from service.process.api_keys import ApiKeyError, load_api_keys

    try:
        load_api_keys(settings)  # each worker reads them again: this is the plain message
    except ApiKeyError as exc:
        print(f"vae-serve: {exc}", file=sys.stderr)
        return 2

    import uvicorn

    from service.process import workers as supervisor
    from service.process.cpus import layout

    # One process per CPU, one onnxruntime thread each, unless set (bench/, BENCHMARKS.md):
    # the models are small, so requests side by side beat one request split over threads.
    workers, threads = layout(settings.workers, settings.intra_op_threads)
    os.environ["VAE_INTRA_OP_THREADS"] = str(threads)  # each worker's Settings() reads it
    options: dict[str, Any] = dict(
        log_config=_logging_config(settings.log_level),
        log_level=settings.log_level,
        access_log=False,  # ours (service.access) has the request id and the route
        server_header=False,
        timeout_graceful_shutdown=settings.graceful_timeout,
        # httptools has no limit on a request's head: service.protocol adds one, read from
        # this same setting, which is also h11's own limit if h11 is chosen.
        http=_http_protocol(),
        h11_max_incomplete_event_size=settings.max_header_bytes,
        loop="uvloop" if _has("uvloop") else "asyncio",
    )
    if workers > 1:
        policy = supervisor.RestartPolicy.from_settings(settings)
        served = _start_versions(settings)
        grpc_port = _reserve_grpc_port(args.host, args.grpc_port)
        if grpc_port is False:
            return 1
        try:
            return supervisor.serve(
                workers, args.host, args.port, options, policy, served, settings.load_timeout
            )
        finally:
            if grpc_port is not None:
                grpc_port.close()
    from service.inference.sessions import limit_malloc_arenas

    limit_malloc_arenas()
    # SIGTERM: uvicorn stops accepting, lets requests in progress finish (at most
    # VAE_GRACEFUL_TIMEOUT seconds), runs the lifespan shutdown, then re-raises the signal it
    # caught; this handler turns that re-raise into a clean exit 0 instead of death by signal.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=1,
        **options,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
