"""Prometheus metrics: HTTP requests and latency per route template, inference per model.

Each app has its own CollectorRegistry, so several apps (tests) never collide on names.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
INFERENCE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
CONTENT_TYPE = CONTENT_TYPE_LATEST
MAX_CACHED_LABELS = 1024


class Metrics:
    """The service's metrics, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "vae_http_requests",
            "HTTP requests by method, route template and status code (gRPC calls too: "
            "protocol grpc in vae_protocol_requests, the RPC's path as the route)",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "vae_http_request_duration_seconds",
            "HTTP request latency (until the response is sent) by route template and status",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        # Beside vae_http_requests (whose labels stay as they are): which API the requests used.
        self.protocol_requests = Counter(
            "vae_protocol_requests",
            "HTTP requests by API protocol (rest: the REST API; oip: the Open Inference "
            "Protocol under /v2; grpc: its gRPC face, by the HTTP status of the same outcome) "
            "and status code",
            ["protocol", "status"],
            registry=self.registry,
        )
        self.inference = Histogram(
            "vae_inference_duration_seconds",
            "onnxruntime time per call by model and graph (encoder or decoder)",
            ["model", "graph"],
            buckets=INFERENCE_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "vae_inference_batch_size",
            "items per onnxruntime call by model and graph",
            ["model", "graph"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.models_loaded = Gauge(
            "vae_models_loaded",
            "models loaded and warmed up",
            registry=self.registry,
            # several workers (service/process/workers.py): the same models
            multiprocess_mode="max",
        )
        # The model lifecycle (service/process/lifecycle.py): counted by the worker that
        # answered the load or unload request (once per request, whatever the workers).
        self.model_changes = Counter(
            "vae_model_lifecycle",
            "model loads and unloads by operation, model and outcome (done or refused)",
            ["operation", "model", "outcome"],
            registry=self.registry,
        )
        self.model_change_seconds = Histogram(
            "vae_model_lifecycle_duration_seconds",
            "seconds from a load or unload request to every worker serving the change",
            ["operation", "model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.served_version = Gauge(
            "vae_model_served_version",
            "1 for the version of each model that requests without a version get; 0 for a "
            "version loaded beside it, or one served before",
            ["model", "version"],
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self._served_labels: set[tuple[str, str]] = set()
        # observe_request's label children by (method, route, status, protocol): `labels()`
        # costs a lock and a tuple check per call, per metric. Bounded: the method is the
        # client's to choose.
        self._request_children: dict[tuple[str, str, int, str], tuple[Any, Any, Any]] = {}
        self._inference_children: dict[tuple[str, str], tuple[Any, Any]] = {}

    def observe_request(
        self, method: str, route: str, status: int, seconds: float, protocol: str = "rest"
    ) -> None:
        key = (method, route, status, protocol)
        children = self._request_children.get(key)
        if children is None:
            code = str(status)
            children = (
                self.requests.labels(method, route, code),
                self.latency.labels(method, route, code),
                self.protocol_requests.labels(protocol, code),
            )
            if len(self._request_children) < MAX_CACHED_LABELS:
                self._request_children[key] = children
        requests, latency, protocol_requests = children
        requests.inc()
        latency.observe(seconds)
        protocol_requests.inc()

    def observe_inference(self, model: str, graph: str, batch: int, seconds: float) -> None:
        """An `InferenceObserver` for service.models."""
        children = self._inference_children.get((model, graph))
        if children is None:  # models and graphs are the registry's: a few
            children = (self.inference.labels(model, graph), self.batch_size.labels(model, graph))
            self._inference_children[(model, graph)] = children
        children[0].observe(seconds)
        children[1].observe(batch)

    def lifecycle(self, operation: str, model: str, ok: bool, seconds: float) -> None:
        self.model_changes.labels(operation, model, "done" if ok else "refused").inc()
        if ok:
            self.model_change_seconds.labels(operation, model).observe(seconds)

    def served(self, registry: Any) -> None:
        """The served and loaded versions of a ModelRegistry, as vae_model_served_version."""
        now = {
            (name, version): float(version == registry.served_version(name))
            for name in registry.names
            for version in registry.versions(name)
        }
        # 0 rather than removed: a removed child's value stays in the multiprocess files.
        for labels in self._served_labels - set(now):
            self.served_version.labels(*labels).set(0)
        for labels, value in now.items():
            self.served_version.labels(*labels).set(value)
        self._served_labels |= set(now)
        self.models_loaded.set(len(registry))

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # Several worker processes (service/process/workers.py): every worker's values, summed.
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
