"""The Open Inference Protocol's view of a model registry: each served model as four OIP models.

    {name}-encoder   input  <encoder.input>  FP32 [-1, C, H, W], the model's own pixel convention
                     output <encoder.outputs> FP32 [-1, z_dim] each (mu, log_var; or z)
    {name}-decoder   input  <decoder.input>  FP32 [-1, z_dim]
                     output <decoder.output> FP32 [-1, C, H, W]
    {name}           input  file             BYTES [-1]: encoded image files (PNG, JPEG, ...)
                     output <encoder.outputs> FP32 [-1, z_dim] each, after /encode's preparation
    {name}-sampler   inputs count INT64 [1]; optional seed INT64 [1], temperature FP32 [1],
                            prior BYTES [1], label INT64 [1]   (GET /sample: oip/sampler.py)
                     output <decoder.output> FP32 [-1, C, H, W], z FP32 [-1, z_dim]

The first two are the exported graphs as they are (platform "onnxruntime_onnx", what a Triton
repository written by `vae-triton` serves); the third is the pipeline a Triton ensemble would
be: decode and prepare the upload (service.api.uploads.prepare), then the encoder. The sampler
is GET /sample's: z from N(0, T^2 I) or the fitted prior, decoded. Every name
and shape comes from the model's metadata.json (service.inference.format); the version is the
model's (its version folder's number, or a flat folder's metadata `version`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from fastapi import HTTPException

from service.api.deps import max_images
from service.api.oip.codec import (
    FP32,
    InferRequest,
    OipError,
    Output,
    RequestInput,
    RequestOutput,
    bad_request,
    decode_bytes,
    decode_fp32,
    encode_response,
)
from service.api.scheduling import WorkSize, small_output, small_uploads
from service.api.schemas import Z_LIMIT, Preprocess
from service.api.uploads import preparation_of, prepare
from service.inference.model import Model
from service.inference.registry import ModelRegistry
from service.process.settings import Settings

logger = logging.getLogger("service")

Graph = Literal["encoder", "decoder", "pipeline", "sampler"]
ONNX_PLATFORM = "onnxruntime_onnx"
PIPELINE_PLATFORM = "ensemble"
PIPELINE_INPUT = "file"
DEFAULT_VERSION = "1"
# Pixel values the raw encoder accepts (the decoder's z: the REST API's own bound, Z_LIMIT).
VALUE_LIMIT = Z_LIMIT


@dataclass(frozen=True)
class TensorSpec:
    """A tensor of an OIP model's signature; -1 marks the batch axis."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    optional: bool = False  # may be left out of a request (the sampler's settings)

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Call:
    """A checked request, ready to run: decoded inputs, the outputs to send, the work size."""

    view: OipModel
    request: InferRequest
    inputs: dict[str, Any]  # name -> float32 array, or list of bytes (BYTES)
    outputs: list[tuple[TensorSpec, RequestOutput | None]]
    size: WorkSize
    parameters: dict[str, Any] | None = None  # the response's `parameters`


@dataclass(frozen=True)
class OipModel:
    """One served model as the protocol sees it."""

    name: str
    version: str
    graph: Graph
    model: Model
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def platform(self) -> str:
        return PIPELINE_PLATFORM if self.graph == "pipeline" else ONNX_PLATFORM

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": self.platform,
            "inputs": [t.metadata() for t in self.inputs],
            "outputs": [t.metadata() for t in self.outputs],
        }

    # --- a request against this signature ---------------------------------------------------

    def given(self, request: InferRequest) -> dict[str, RequestInput]:
        """The request's inputs by name: each one of the signature's, once, none required
        missing; else an OipError(400)."""
        specs = {t.name: t for t in self.inputs}
        given: dict[str, RequestInput] = {}
        for tensor in request.inputs:
            if tensor.name not in specs:
                raise bad_request(
                    f"model {self.name!r} has no input {tensor.name!r}; its inputs: {sorted(specs)}"
                )
            if tensor.name in given:
                raise bad_request(f"input {tensor.name!r} is given twice")
            given[tensor.name] = tensor
        missing = sorted(name for name, t in specs.items() if not t.optional and name not in given)
        if missing:
            raise bad_request(f"model {self.name!r} needs input(s) {missing}")
        return given

    def check(self, request: InferRequest, settings: Settings) -> Call:
        """Names, datatypes and shapes against the signature, then the data decoded; an
        OipError(400) for the first mismatch. Cheap before the data is touched."""
        specs = {t.name: t for t in self.inputs}
        given = self.given(request)
        batch = None
        limit = max_images(self.model, settings.max_batch)
        for name, tensor in given.items():
            n = self._check_tensor(specs[name], tensor, limit, settings.max_batch)
            if batch is not None and n != batch:
                raise bad_request("inputs disagree on the batch size")
            batch = n
        assert batch is not None
        outputs = self._outputs(request)
        if self.graph == "pipeline":
            _preprocess(request, self.model)  # refused here, before any work is scheduled
        inputs: dict[str, Any] = {}
        for name, tensor in given.items():
            if specs[name].datatype == "BYTES":
                inputs[name] = decode_bytes(tensor)
            else:
                inputs[name] = decode_fp32(tensor, VALUE_LIMIT)
        return Call(self, request, inputs, outputs, self._work_size(batch, inputs))

    def _check_tensor(
        self, spec: TensorSpec, tensor: RequestInput, limit: int, max_batch: int
    ) -> int:
        where = f"input {spec.name!r} of model {self.name!r}"
        if tensor.datatype != spec.datatype:
            raise bad_request(
                f"{where} has datatype {spec.datatype}, the request says {tensor.datatype}"
            )
        shape = tensor.shape
        # BYTES files: [N] or, as a Triton client with max_batch_size sends it, [N, 1].
        accepted = [spec.shape]
        if spec.datatype == "BYTES":
            accepted.append((*spec.shape, 1))
        fits = any(
            len(shape) == len(want)
            and all(w == -1 or w == d for w, d in zip(want, shape, strict=True))
            for want in accepted
        )
        if not fits:
            raise bad_request(
                f"{where} has shape {list(spec.shape)} (-1: the batch), the request says "
                f"{list(shape)}"
            )
        batch = shape[0]
        if batch < 1:
            raise bad_request(f"{where}: the batch axis must be at least 1")
        if batch > limit:
            why = (
                "VAE_MAX_BATCH"
                if limit == max_batch
                else f"VAE_MAX_BATCH scaled down for images of "
                f"{'x'.join(map(str, self.model.input_shape))} pixel values"
            )
            raise bad_request(f"{where}: at most {limit} items per request ({why}), got {batch}")
        return batch

    def _outputs(self, request: InferRequest) -> list[tuple[TensorSpec, RequestOutput | None]]:
        if request.outputs is None:
            return [(spec, None) for spec in self.outputs]
        specs = {t.name: t for t in self.outputs}
        chosen: list[tuple[TensorSpec, RequestOutput | None]] = []
        seen = set()
        for wanted in request.outputs:
            if wanted.name not in specs:
                raise bad_request(
                    f"model {self.name!r} has no output {wanted.name!r}; its outputs: "
                    f"{[t.name for t in self.outputs]}"
                )
            if wanted.name in seen:
                raise bad_request(f"output {wanted.name!r} is requested twice")
            seen.add(wanted.name)
            chosen.append((specs[wanted.name], wanted))
        return chosen

    def _work_size(self, batch: int, inputs: dict[str, Any]) -> WorkSize:
        if self.graph == "pipeline":
            return WorkSize(images=batch, small=small_uploads(inputs[PIPELINE_INPUT]))
        return WorkSize(images=batch, small=small_output(batch, 1, self.model.input_shape))

    # --- running it ---------------------------------------------------------------------------

    def run(
        self, inputs: dict[str, Any], request: InferRequest, settings: Settings
    ) -> dict[str, np.ndarray]:
        """Every output of the graph (or pipeline) for decoded inputs: one onnxruntime call."""
        model = self.model
        if self.graph == "decoder":
            return {model.decoder_output: model.decode_batch(inputs[model.decoder_input])}
        if self.graph == "encoder":
            return model.encode_batch(inputs[model.encoder_input])
        preprocess = _preprocess(request, model)
        try:
            images = prepare(inputs[PIPELINE_INPUT], model, preprocess, settings)
        except HTTPException as exc:
            # The upload errors of /encode: 413 stays a 413, the rest are a bad request here.
            status = 413 if exc.status_code == 413 else 400
            raise OipError(status, f"input {PIPELINE_INPUT!r}: {exc.detail}") from None
        return model.encode_batch(images)


def _preprocess(request: InferRequest, model: Model) -> Preprocess:
    """The pipeline's parameters.preprocess, as /encode's ?preprocess=: auto (default: the
    model's own preparation), digit (1-channel models only), fit or none."""
    value = request.parameters.get("preprocess", Preprocess.auto.value)
    if not (isinstance(value, str) and value in {p.value for p in Preprocess}):
        raise bad_request(f"parameters.preprocess must be one of {[p.value for p in Preprocess]}")
    preprocess = Preprocess(value)
    try:
        preparation_of(model, preprocess)
    except HTTPException as exc:
        detail = exc.detail[0]["msg"] if isinstance(exc.detail, list) else exc.detail
        raise bad_request(f"parameters.preprocess: {detail}") from None
    return preprocess


def outputs_of(call: Call, settings: Settings) -> list[Output]:
    """Run a checked call: its requested outputs, in order (REST and gRPC alike)."""
    view, request = call.view, call.request
    results = view.run(call.inputs, request, settings)
    return [
        Output(
            spec.name,
            spec.datatype,
            np.asarray(results[spec.name], dtype=FP32),
            request.wants_binary(wanted),
        )
        for spec, wanted in call.outputs
    ]


def execute(call: Call, settings: Settings) -> tuple[bytes, dict[str, str]]:
    """Run a checked call and encode its response (body, headers): the work the scheduler runs."""
    view, request = call.view, call.request
    outputs = outputs_of(call, settings)
    return encode_response(view.name, view.version, request.id, outputs, call.parameters)


def views_of(model: Model) -> Iterator[OipModel]:
    """The four OIP models of one served model, from its metadata."""
    meta = model.metadata
    version = model.version or DEFAULT_VERSION
    image = (-1, *meta.input.shape)
    codes = tuple(TensorSpec(name, "FP32", (-1, meta.z_dim)) for name in meta.encoder.outputs)
    yield OipModel(
        f"{model.name}-encoder",
        version,
        "encoder",
        model,
        (TensorSpec(meta.encoder.input, "FP32", image),),
        codes,
    )
    yield OipModel(
        f"{model.name}-decoder",
        version,
        "decoder",
        model,
        (TensorSpec(meta.decoder.input, "FP32", (-1, meta.z_dim)),),
        (TensorSpec(meta.decoder.output, "FP32", image),),
    )
    yield OipModel(
        model.name, version, "pipeline", model, (TensorSpec(PIPELINE_INPUT, "BYTES", (-1,)),), codes
    )
    # Imported here: sampler.py builds on this module's classes.
    from service.api.oip.sampler import sampler_of

    yield sampler_of(model)


def oip_models(registry: ModelRegistry) -> dict[str, OipModel]:
    """Every OIP model of a registry, by name. A name taken twice (a model called 'x-encoder'
    beside a model 'x') keeps the first and logs the clash."""
    views: dict[str, OipModel] = {}
    for model in registry:
        for view in views_of(model):
            if view.name in views:
                logger.warning(
                    "Open Inference Protocol: %r of model %r is already %r of model %r; skipped",
                    view.name,
                    model.name,
                    views[view.name].graph,
                    views[view.name].model.name,
                )
                continue
            views[view.name] = view
    return views


def view_for(
    registry: ModelRegistry, views: dict[str, OipModel], name: str, version: str | None
) -> OipModel:
    """The OIP model `name` at `version` (None: the served one) among `views` (oip_models of
    `registry`); OipError(404) naming what is loaded when there is no such model or version.
    The REST routes and any other face of the protocol look models up through this."""
    view = views.get(name)
    if view is None:
        raise OipError(404, f"unknown model {name!r}; known models: {sorted(views)}")
    if version is None or version == view.version:
        return view
    try:
        model = registry.get(view.model.name, version)
    except KeyError:
        loaded = registry.versions(view.model.name) if view.model.name in registry else []
        raise OipError(
            404, f"unknown version {version!r} of model {name!r}; its loaded versions: {loaded}"
        ) from None
    return next(v for v in views_of(model) if v.graph == view.graph)


NOT_READY = "not ready: models are loading"


def served_models(state: Any) -> dict[str, OipModel]:
    """The OIP models of an app's registry (`app.state`: built once per registry generation, a
    load or unload changes it), for the REST routes and the gRPC service alike; OipError(503)
    before start-up has finished."""
    registry = getattr(state, "registry", None)
    if registry is None or not getattr(state, "ready", False):
        raise OipError(503, NOT_READY)
    cached = getattr(state, "oip_models", None)
    key = (registry, registry.generation)
    if cached is None or cached[0] != key:
        cached = (key, oip_models(registry))
        state.oip_models = cached
    views: dict[str, OipModel] = cached[1]
    return views


def find_model(state: Any, name: str, version: str | None) -> OipModel:
    """One OIP model of an app by name and version (None: the served one): `view_for` on
    `served_models`; OipError 404 or 503."""
    views = served_models(state)
    return view_for(state.registry, views, name, version)


def metadata_of(state: Any, view: OipModel) -> dict[str, Any]:
    """A model's metadata as both faces answer it: `versions` lists the loaded versions."""
    metadata = view.metadata()
    metadata["versions"] = state.registry.versions(view.model.name)
    return metadata
