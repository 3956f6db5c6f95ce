"""Service settings: one `Settings` object, each field overridable by a VAE_* variable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# The repository's models/ folder (service/ sits next to it).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / "models"


class Settings(BaseSettings):
    """Every setting has a default; VAE_<NAME> in the environment overrides it."""

    model_config = SettingsConfigDict(env_prefix="VAE_", frozen=True, extra="ignore")

    model_dir: Path = Field(
        DEFAULT_MODEL_DIR, description="folder holding one sub-folder per exported model"
    )
    default_model: str = Field("vae", description="model used when a request has no ?model=")
    model_versions: str = Field(
        "",
        description="version policy: NAME=VERSION pins, comma-separated (e.g. `vae=2`); a model "
        "not named serves its latest version folder (the highest number)",
    )
    load_timeout: float = Field(
        300.0,
        gt=0,
        description="seconds a model load may take in every worker before it is refused",
    )
    max_batch: int = Field(256, ge=1, le=4096, description="most images or vectors in one request")
    max_upload_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="largest request body in bytes"
    )
    max_pixels: int = Field(40_000_000, ge=1, description="largest uploaded image in pixels")
    workers: int = Field(
        0,
        ge=0,
        description="server processes, each with its own socket on the port (0 = one per CPU "
        "this process may use: the GIL caps one process at about one core of Python work)",
    )
    intra_op_threads: int = Field(
        0,
        ge=0,
        description="onnxruntime threads per inference (0 = CPUs / workers, so 1 with the "
        "default of one worker per CPU)",
    )
    max_concurrency: int = Field(
        64,
        ge=1,
        description="most requests in progress at once; more get a fast 503 with Retry-After "
        "(/healthz, /readyz and /metrics are exempt)",
    )
    max_header_bytes: int = Field(
        32 * 1024,
        ge=1024,
        description="largest request line plus headers in bytes; larger is a 431 and the "
        "connection is closed",
    )
    body_timeout: float = Field(
        60.0,
        gt=0,
        description="seconds a request body may take to arrive in full; slower is a 408",
    )
    graceful_timeout: int = Field(
        20,
        ge=1,
        description="seconds SIGTERM waits for requests in progress to finish before "
        "cutting them off (then the process exits)",
    )
    max_worker_restarts: int = Field(
        5,
        ge=0,
        description="worker processes the supervisor replaces within VAE_WORKER_RESTART_WINDOW "
        "seconds when they die (OOM kill, crash); one more death stops the server with exit "
        "status 1, for the orchestrator to restart it (0 = never replace: the first death stops "
        "the server). Restarts back off from 0.5 s, doubling to 10 s",
    )
    worker_restart_window: float = Field(
        60.0, gt=0, description="seconds over which VAE_MAX_WORKER_RESTARTS is counted"
    )
    worker_heartbeat_timeout: float = Field(
        30.0,
        ge=0,
        description="seconds a worker's event loop may go without its heartbeat (stopped, "
        "deadlocked) before the supervisor kills and replaces it (0 = no heartbeat check)",
    )
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="API keys, comma-separated: when set (or VAE_API_KEYS_FILE), every model "
        "route needs `Authorization: Bearer <key>` or `X-API-Key: <key>` (empty = no auth)",
    )
    api_keys_file: Path | None = Field(
        None,
        description="file of API keys, one per line (blank lines and # comments ignored), read "
        "at start-up, e.g. a Kubernetes Secret mounted as a file; adds to VAE_API_KEYS",
    )
    admin_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="admin keys, comma-separated: model management (/v2/repository: load, "
        "unload, index) is off unless these (or VAE_ADMIN_KEYS_FILE) are set, and then needs "
        "one of them (an API key gets a 403)",
    )
    admin_keys_file: Path | None = Field(
        None, description="file of admin keys, one per line; adds to VAE_ADMIN_KEYS"
    )
    auth_max_failures: int = Field(
        10,
        ge=0,
        description="wrong keys (API or admin) one client address may send within "
        "VAE_AUTH_LOCKOUT seconds; more are refused with a 429 until that much time has passed "
        "since the last (0 = no limit). Counted per worker process",
    )
    auth_lockout: float = Field(
        60.0, gt=0, description="seconds over which wrong keys are counted, and a lockout lasts"
    )
    auth_probes: bool = Field(
        False, description="with API keys on, /healthz and /readyz need a key too"
    )
    auth_metrics: bool = Field(False, description="with API keys on, /metrics needs a key too")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="origins allowed by CORS, comma-separated or JSON list (empty = CORS off)",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="log level of the service and uvicorn"
    )
    access_log: bool = Field(True, description="one JSON line per request on stderr")
    host: str = Field("127.0.0.1", description="address `python -m service` listens on")
    port: int = Field(8000, ge=0, le=65535, description="port `python -m service` listens on")
    grpc_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="port of the Open Inference Protocol over gRPC, on VAE_HOST, in every "
        "worker (0 = off; `make serve`, the container and the Kubernetes manifests use 8001, "
        "Triton's)",
    )

    @field_validator("api_keys", "admin_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                import json

                return json.loads(value)
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value
